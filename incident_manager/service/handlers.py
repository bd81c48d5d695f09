"""What the incident manager does for each request, as plain functions over a unit of work.

Each handler validates its input first, then runs inside one transaction;
`IncidentManager` runs them on the storage's thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from incident_manager.domain.autoresolve import AutoResolvePolicies
from incident_manager.domain.dedup import alert_fingerprint, fingerprint_of
from incident_manager.domain.errors import (
    EtagMismatch,
    IncidentNotFound,
    RateLimited,
    ValidationError,
    quoted,
)
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    AlertAck,
    AutoResolve,
    Incident,
    IncidentState,
    Note,
    ReceivedAlert,
    RequestRecord,
    ResolutionMethod,
)
from incident_manager.domain.paging.model import PagingConfig
from incident_manager.domain.query import IncidentPage, IncidentQuery
from incident_manager.domain.ratelimit import AlertRateLimiter
from incident_manager.domain.validation import (
    MAX_ETAG,
    MAX_ID,
    MAX_ITEMS,
    MAX_NAME,
    MAX_TEXT,
    MAX_TITLE,
    Checker,
    validate_alert,
    validate_assignees,
    validate_filter,
)
from incident_manager.service.batch import Batch
from incident_manager.service.commands import (
    AddNote,
    CreateIncident,
    ResolveIncident,
    UpdateIncident,
)
from incident_manager.service.paging import Before, follow_incident
from incident_manager.service.ports import UnitOfWork

DEFAULT_POLICIES = AutoResolvePolicies()


def submit_alert(
    uow: UnitOfWork,
    alert: Alert,
    window: timedelta,
    now: datetime,
    limiter: AlertRateLimiter | None = None,
    policies: AutoResolvePolicies = DEFAULT_POLICIES,
    paging: PagingConfig | None = None,
) -> AlertAck:
    """Store an alert: merge it into a matching active incident, or open a new one.

    A retry of an alert already stored (same source and id) gets the answer
    the first submission got and changes nothing, whatever the rate limit.
    RateLimited if a new alert's source is over its limit.
    """
    checker = Checker("alert.")
    validate_alert(alert, checker, resolve_signal=alert.is_resolve_signal(now))
    checker.raise_if_any()
    with uow:
        ack = _ingest(uow, alert, window, now, limiter, policies, paging)
        uow.commit()
    return ack


def submit_alerts(
    uow: UnitOfWork,
    alerts: Sequence[Alert | AlertAck],
    window: timedelta,
    now: datetime,
    limiter: AlertRateLimiter | None = None,
    policies: AutoResolvePolicies = DEFAULT_POLICIES,
    paging: PagingConfig | None = None,
    field_prefix: str = "alerts[{}].",
) -> list[AlertAck]:
    """Store a batch in one unit of work; invalid alerts get REJECTED acks, in place, their
    message naming fields with `field_prefix` (`alerts[2].title`; `alert.title` for a stream).

    Entries that are already acks (refused before storage) are passed through.
    Each incident the batch changes is written, and followed by paging, once
    (see `service/batch.py`).
    """
    acks: list[AlertAck] = []
    with uow:
        batch = Batch(uow, window, now, limiter, paging)
        for index, item in enumerate(alerts):
            if isinstance(item, AlertAck):
                acks.append(item)
                continue
            resolve_signal = item.is_resolve_signal(now)
            checker = Checker(field_prefix.format(index))
            validate_alert(item, checker, resolve_signal=resolve_signal)
            if checker.violations:
                acks.append(
                    AlertAck(
                        alert_id=item.id,
                        status=AckStatus.REJECTED,
                        message=ValidationError(checker.violations).message,
                    )
                )
                continue
            try:
                if resolve_signal:
                    # A resolve signal reads what is stored: store what the batch holds.
                    batch.store()
                    acks.append(_clear(uow, item, now, policies, batch.touched, paging))
                    batch.forget_inactive()
                else:
                    acks.append(batch.ingest(item))
            except RateLimited as limited:
                acks.append(AlertAck(item.id, AckStatus.RATE_LIMITED, message=limited.message))
        batch.store()
        uow.commit()
    return acks


def _ingest(
    uow: UnitOfWork,
    alert: Alert,
    window: timedelta,
    now: datetime,
    limiter: AlertRateLimiter | None = None,
    policies: AutoResolvePolicies = DEFAULT_POLICIES,
    paging: PagingConfig | None = None,
) -> AlertAck:
    """Merge, open, or clear one alert (a batch goes through `Batch` instead).

    RateLimited, before anything is written, if the alert is new and its
    source is over its limit.
    """
    if alert.is_resolve_signal(now):
        return _clear(uow, alert, now, policies, None, paging)
    earlier = uow.alerts.get(alert.source, alert.id)
    if earlier is not None:
        return AlertAck(
            alert_id=alert.id,
            status=earlier.status,
            incident_id=earlier.incident_id,
            message=(
                f"already received at {earlier.receive_time.isoformat()}; "
                "counted once (this was a retry)"
            ),
            retry=True,
        )
    if limiter is not None:
        # After the retry check: a retry is answered as before, never limited.
        throttled = limiter.admit(alert.source, alert.severity)
        if throttled is not None:
            raise RateLimited(alert.source, throttled.retry_after, throttled.scope)
    fingerprint = alert_fingerprint(alert)
    incident = uow.incidents.find_mergeable(fingerprint.value, now - window)
    if incident is not None:
        before = Before.of(incident)
        incident.merge_alert(alert, fingerprint.matched_on, now)
        follow_incident(uow.paging, paging, incident, before, now)
        uow.incidents.save(incident)
        status = AckStatus.DUPLICATE
        message = (
            f"merged into incident {incident.id} (matched on {fingerprint.matched_on}); "
            f"{incident.alert_count} alerts so far"
        )
    else:
        incident = Incident.open_for_alert(alert, fingerprint.value, now)
        uow.incidents.add(incident)
        follow_incident(uow.paging, paging, incident, None, now)
        status = AckStatus.ACCEPTED
        message = f"opened incident {incident.id}"
    uow.alerts.add(
        ReceivedAlert(
            alert=alert,
            incident_id=incident.id,
            status=status,
            fingerprint=fingerprint.value,
            receive_time=now,
        )
    )
    return AlertAck(alert_id=alert.id, status=status, incident_id=incident.id, message=message)


def _clear(
    uow: UnitOfWork,
    signal: Alert,
    now: datetime,
    policies: AutoResolvePolicies,
    touched: dict[str, Incident] | None,
    paging: PagingConfig | None = None,
) -> AlertAck:
    """Apply a resolve signal: clear the alert, then resolve its incident if the policy says so."""
    earlier = uow.alerts.get(signal.source, signal.id)
    if earlier is None:
        return AlertAck(
            signal.id,
            AckStatus.IGNORED,
            message=(
                f"no alert {quoted(signal.id)} from {quoted(signal.source)} was ever received; "
                "nothing to clear"
            ),
        )
    if earlier.cleared_time is not None:
        return AlertAck(
            signal.id,
            AckStatus.CLEARED,
            earlier.incident_id,
            message=f"already cleared at {earlier.cleared_time.isoformat()}",
            retry=True,
        )
    uow.alerts.clear(signal.source, signal.id, now)
    incident = (touched or {}).get(earlier.incident_id) or uow.incidents.get(earlier.incident_id)
    if incident is None or not incident.state.is_active:
        state = "gone" if incident is None else incident.state.name
        return AlertAck(
            signal.id, AckStatus.CLEARED, earlier.incident_id, f"alert cleared; incident is {state}"
        )
    policy = policies.for_source(signal.source)
    if policy is AutoResolve.FIRST:
        resolves = True
    elif policy is AutoResolve.LAST:
        resolves = uow.alerts.latest(incident.id) == (signal.source, signal.id)
    elif policy is AutoResolve.ALL:
        resolves = uow.alerts.open_count(incident.id) == 0
    else:
        resolves = False
    if not resolves:
        still = uow.alerts.open_count(incident.id)
        return AlertAck(
            signal.id,
            AckStatus.CLEARED,
            incident.id,
            f"alert cleared; incident stays {incident.state.name} "
            f"({still} alerts still firing, policy {policy.value} for {signal.source})",
        )
    before = Before.of(incident)
    incident.resolve(
        method=ResolutionMethod.AUTOMATED,
        root_cause="",
        notes=f"alert {quoted(signal.id)} from {quoted(signal.source)} cleared",
        resolved_by=signal.actor,
        now=now,
        details={"alert_id": signal.id, "policy": policy.value},
    )
    follow_incident(uow.paging, paging, incident, before, now)
    # Stored now even within a batch: a later alert of the batch with the same
    # fingerprint must not find it active and merge into it, but open a new one.
    uow.incidents.save(incident)
    if touched is not None:
        touched[incident.id] = incident
    return AlertAck(
        signal.id,
        AckStatus.CLEARED,
        incident.id,
        f"alert cleared; incident resolved (policy {policy.value} for {signal.source})",
    )


def check_create_incident(command: CreateIncident) -> Checker:
    """The rules a new incident follows; the checker holds every one the command breaks."""
    checker = Checker("incident.")
    checker.required("title", command.title, MAX_TITLE)
    checker.required("source", command.source, MAX_NAME)
    checker.at_most("description", command.description, MAX_TEXT)
    checker.string_list("affected_resources", command.affected_resources, MAX_ITEMS, MAX_NAME)
    checker.string_map("labels", command.labels)
    validate_assignees(command.assignees, checker, "assignees")
    _check_actor(checker, command.actor)
    _check_request_id(checker, command.request_id)
    return checker


def create_incident(
    uow: UnitOfWork, command: CreateIncident, now: datetime, paging: PagingConfig | None = None
) -> Incident:
    check_create_incident(command).raise_if_any()
    incident = Incident.open(
        title=command.title,
        description=command.description,
        severity=command.severity,
        type=command.type,
        source=command.source,
        affected_resources=command.affected_resources,
        labels=command.labels,
        assignees=command.assignees,
        fingerprint=fingerprint_of(
            command.source, command.type, command.title, tuple(command.affected_resources)
        ),
        actor=command.actor,
        now=now,
    )
    with uow:
        earlier = _earlier_request(uow, command.request_id, "CreateIncident")
        if earlier is not None:
            return _load_with_history(uow, earlier.incident_id)
        uow.incidents.add(incident)
        follow_incident(uow.paging, paging, incident, None, now)
        if command.request_id:
            uow.requests.add(command.request_id, RequestRecord("CreateIncident", incident.id))
        stored = _load_with_history(uow, incident.id)
        uow.commit()
    return stored


def get_incident(uow: UnitOfWork, incident_id: str) -> Incident:
    _check_id("id", incident_id)
    return _load_with_history(uow, incident_id)


def update_incident(
    uow: UnitOfWork, command: UpdateIncident, now: datetime, paging: PagingConfig | None = None
) -> Incident:
    changes = command.changes
    checker = Checker("incident.")
    checker.required("id", command.incident_id, MAX_ID)
    checker.at_most("etag", command.etag, MAX_ETAG)
    if changes.title is not None:
        checker.required("title", changes.title, MAX_TITLE)
    if changes.description is not None:
        checker.at_most("description", changes.description, MAX_TEXT)
    if changes.affected_resources is not None:
        checker.string_list("affected_resources", changes.affected_resources, MAX_ITEMS, MAX_NAME)
    if changes.labels is not None:
        checker.string_map("labels", changes.labels)
    if changes.assignees is not None:
        validate_assignees(changes.assignees, checker, "assignees")
    if changes.state is IncidentState.RESOLVED:
        checker.fail("state", "use ResolveIncident to resolve, so the resolution is recorded")
    _check_actor(checker, command.actor)
    checker.raise_if_any()
    with uow:
        incident = _load(uow, command.incident_id)
        _check_etag(incident, command.etag)
        before = Before.of(incident)
        incident.update(
            actor=command.actor,
            now=now,
            title=changes.title,
            description=changes.description,
            severity=changes.severity,
            type=changes.type,
            state=changes.state,
            affected_resources=changes.affected_resources,
            labels=changes.labels,
            assignees=changes.assignees,
        )
        if incident.pending_events:
            follow_incident(uow.paging, paging, incident, before, now, by_person=True)
            uow.incidents.save(incident)
        stored = _load_with_history(uow, incident.id)
        uow.commit()
    return stored


def resolve_incident(
    uow: UnitOfWork, command: ResolveIncident, now: datetime, paging: PagingConfig | None = None
) -> Incident:
    checker = Checker()
    checker.required("id", command.incident_id, MAX_ID)
    checker.at_most("etag", command.etag, MAX_ETAG)
    checker.required("resolved_by", command.resolved_by, MAX_NAME)
    checker.at_most("root_cause", command.root_cause, MAX_TEXT)
    checker.at_most("notes", command.notes, MAX_TEXT)
    checker.raise_if_any()
    with uow:
        incident = _load(uow, command.incident_id)
        _check_etag(incident, command.etag)
        before = Before.of(incident)
        incident.resolve(
            method=command.method,
            root_cause=command.root_cause,
            notes=command.notes,
            resolved_by=command.resolved_by,
            now=now,
        )
        follow_incident(uow.paging, paging, incident, before, now)
        uow.incidents.save(incident)
        stored = _load_with_history(uow, incident.id)
        uow.commit()
    return stored


def add_note(
    uow: UnitOfWork, command: AddNote, now: datetime, paging: PagingConfig | None = None
) -> tuple[Note, Incident]:
    checker = Checker()
    checker.required("incident_id", command.incident_id, MAX_ID)
    checker.required("author", command.author, MAX_NAME)
    checker.required("content", command.content, MAX_TEXT)
    _check_request_id(checker, command.request_id)
    checker.raise_if_any()
    with uow:
        earlier = _earlier_request(uow, command.request_id, "AddNote")
        if earlier is not None:
            noted = uow.incidents.get_note(earlier.note_id)
            if noted is None:
                raise IncidentNotFound(earlier.incident_id)
            return noted, _load_with_history(uow, earlier.incident_id)
        incident = _load(uow, command.incident_id)
        before = Before.of(incident)
        note = incident.add_note(author=command.author, content=command.content, now=now)
        follow_incident(uow.paging, paging, incident, before, now, by_person=True)
        uow.incidents.save(incident)
        if command.request_id:
            uow.requests.add(
                command.request_id, RequestRecord("AddNote", incident.id, note_id=note.id)
            )
        stored = _load_with_history(uow, incident.id)
        uow.commit()
    return note, stored


def acknowledge_incident(
    uow: UnitOfWork,
    incident_id: str,
    actor: str,
    now: datetime,
    paging: PagingConfig | None = None,
) -> Incident:
    """Someone is on it: stop paging; DETECTED becomes TRIAGED. Allowed again later, which
    re-arms the policy's acknowledgement timeout."""
    checker = Checker()
    checker.required("id", incident_id, MAX_ID)
    checker.required("actor", actor, MAX_NAME)
    checker.raise_if_any()
    with uow:
        incident = _load(uow, incident_id)
        before = Before.of(incident)
        incident.acknowledge(actor=actor, now=now)
        follow_incident(uow.paging, paging, incident, before, now, by_person=True)
        uow.incidents.save(incident)
        stored = _load_with_history(uow, incident.id)
        uow.commit()
    return stored


def list_incidents(uow: UnitOfWork, query: IncidentQuery) -> IncidentPage:
    checker = Checker()
    validate_filter(query.filter, checker)
    checker.raise_if_any()
    return uow.incidents.list(query)


def _check_id(field: str, incident_id: str) -> None:
    checker = Checker()
    checker.required(field, incident_id, MAX_ID)
    checker.raise_if_any()


def _check_actor(checker: Checker, actor: str) -> None:
    # `actor` sits beside the incident in the request, not inside it.
    beside = Checker()
    if beside.text("actor", actor) and len(actor) > MAX_NAME:
        beside.fail("actor", f"must be at most {MAX_NAME} characters")
    checker.violations.extend(beside.violations)


MAX_REQUEST_ID = 128


def _check_request_id(checker: Checker, request_id: str) -> None:
    if checker.text("request_id", request_id) and len(request_id) > MAX_REQUEST_ID:
        checker.fail("request_id", f"must be at most {MAX_REQUEST_ID} characters")


def _earlier_request(uow: UnitOfWork, request_id: str, kind: str) -> RequestRecord | None:
    """The record of an earlier request with this id, if this one is a retry of it."""
    if not request_id:
        return None
    earlier = uow.requests.get(request_id)
    if earlier is not None and earlier.kind != kind:
        raise ValidationError.single(
            "request_id",
            f"was already used by a {earlier.kind} request; use a new id for each request",
        )
    return earlier


def _check_etag(incident: Incident, etag: str) -> None:
    if etag and etag != incident.etag:
        raise EtagMismatch(incident.id, etag, incident.etag)


def _load(uow: UnitOfWork, incident_id: str) -> Incident:
    incident = uow.incidents.get(incident_id)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident


def _load_with_history(uow: UnitOfWork, incident_id: str) -> Incident:
    """The incident with its recent timeline and notes, as clients are answered with it."""
    incident = uow.incidents.get(incident_id, with_history=True)
    if incident is None:
        raise IncidentNotFound(incident_id)
    return incident
