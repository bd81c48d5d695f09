"""Paging use cases: keep each incident's escalation in step with the incident,
run the steps that are due, and record what became of each delivery.

Every function here runs inside a unit of work, so a page that becomes due
is written in the same transaction as the change that caused it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from incident_manager.domain.model import EventType, Incident, IncidentState, Severity
from incident_manager.domain.paging.actions import ACTION_BODY, render_action_body
from incident_manager.domain.paging.escalation import Delivery, Unreached, resolve_level
from incident_manager.domain.paging.ledger import (
    Escalation,
    EscalationStatus,
    Notification,
    NotificationState,
    new_notification_id,
)
from incident_manager.domain.paging.model import (
    ChannelEvent,
    Override,
    PagingConfig,
    Silence,
    Target,
    TargetKind,
    WebhookChannel,
)
from incident_manager.domain.paging.routing import PagingSubject, choose_route, silences_holding
from incident_manager.domain.paging.templates import TemplateFailed
from incident_manager.service import digests
from incident_manager.service.ports import (
    DeliveryOutcome,
    IncidentRepository,
    PagingRepository,
    RetrySchedule,
)

LATE = timedelta(seconds=2)
"""A step that runs this much after its due time says how late it was."""


@dataclass(frozen=True)
class Before:
    """What an incident was before a change, to tell what the change means for paging."""

    severity: Severity
    state: IncidentState
    acknowledge_time: datetime | None

    @classmethod
    def of(cls, incident: Incident) -> Before:
        return cls(incident.severity, incident.state, incident.acknowledge_time)


def follow_incident(
    paging: PagingRepository,
    config: PagingConfig | None,
    incident: Incident,
    before: Before | None,
    now: datetime,
    *,
    by_person: bool = False,
) -> None:
    """Bring the incident's escalation in step with a change to the incident.

    `before` is None for a new incident. `by_person` marks changes made by a
    person (updates, notes), which re-arm an acknowledgement's timeout.
    """
    if config is None:
        return
    if before is not None and not _may_matter(incident, before, by_person):
        return  # the hot path: a duplicate alert that raised nothing
    escalation = paging.escalation(incident.id) if before is not None else None
    if not incident.state.is_active:
        if escalation is not None and escalation.status is not EscalationStatus.STOPPED:
            escalation.stop()
            paging.save_escalation(escalation)
            _suppress_pending(paging, incident.id, f"incident {incident.state.name.lower()}", now)
            why = f"incident {incident.state.name.lower()}"
            if incident.resolution is not None:
                why = f"resolved by {incident.resolution.resolved_by}"
            _tell(paging, config, incident, escalation, ChannelEvent.RESOLVED, why, now)
        return
    acknowledged = incident.acknowledge_time is not None and (
        before is None or incident.acknowledge_time != before.acknowledge_time
    )
    match = choose_route(config, PagingSubject.of(incident))
    if escalation is None:
        rose = before is not None and incident.severity.is_more_severe_than(before.severity)
        if match is None or (before is not None and not rose):
            # Never paged (it matched no route, or paging was off when it opened):
            # only a severity rise that now matches a route starts paging.
            return
        reason = (
            "new incident"
            if before is None
            else f"severity {incident.severity.name} now matches route {match.index + 1}"
        )
        escalation = Escalation.start(incident.id, match.policy, match.index + 1, now, reason)
        if before is not None:
            _escalated(incident, escalation, now, f"routed to policy {match.policy.id}")
    elif escalation.status is EscalationStatus.STOPPED:
        if match is None:
            return
        escalation.restart(match.policy, match.index + 1, now, "incident reopened")
        _tell(paging, config, incident, escalation, ChannelEvent.REOPENED, "reopened", now)
    elif (
        before is not None
        and incident.severity.is_more_severe_than(before.severity)
        and match is not None
        and match.policy.id != escalation.policy.id
    ):
        why = (
            f"severity rose to {incident.severity.name}: route {match.index + 1} now applies,"
            f" moving from policy {escalation.policy.id} to {match.policy.id}"
        )
        if escalation.status is EscalationStatus.ACKNOWLEDGED:
            escalation.policy, escalation.route = match.policy, match.index + 1
            escalation.acknowledge(incident.acknowledge_time or now)
        else:
            escalation.restart(match.policy, match.index + 1, now, why)
            _suppress_pending(paging, incident.id, "moved to another escalation policy", now)
        _escalated(incident, escalation, now, why)
    if acknowledged:
        escalation.acknowledge(now)
        why = f"acknowledged by {incident.acknowledged_by}"
        _suppress_pending(paging, incident.id, why, now)
        _tell(paging, config, incident, escalation, ChannelEvent.ACKNOWLEDGED, why, now)
    elif by_person and escalation.status is EscalationStatus.ACKNOWLEDGED:
        escalation.acknowledge(now)  # a person is still working on it: re-arm the timeout
    paging.save_escalation(escalation)


def _may_matter(incident: Incident, before: Before, by_person: bool) -> bool:
    return (
        by_person
        or incident.severity is not before.severity
        or incident.state is not before.state
        or incident.acknowledge_time != before.acknowledge_time
    )


def _suppress_pending(paging: PagingRepository, incident_id: str, why: str, now: datetime) -> None:
    for notification in paging.pending_notifications(incident_id):
        if notification.claimed_by:
            continue  # already being sent; its outcome is recorded when it returns
        if _event_of(notification) is not ChannelEvent.PAGED:
            continue  # telling of a change is not paging: a later change does not cancel it
        notification.suppress(why, now)
        paging.save_notification(notification)


def _event_of(notification: Notification) -> ChannelEvent:
    """What change a delivery tells of (`paged` for a page)."""
    try:
        return ChannelEvent(notification.content.get("event", ChannelEvent.PAGED.value))
    except ValueError:
        return ChannelEvent.PAGED


def _tell(
    paging: PagingRepository,
    config: PagingConfig,
    incident: Incident,
    escalation: Escalation,
    event: ChannelEvent,
    reason: str,
    now: datetime,
) -> None:
    """Tell each (channel, recipient) that paged the incident and follows `event` about it,
    once: not if the last thing it was told is this very change (the change seen again)."""
    if not any(event in channel.on for channel in config.channels):
        return  # nobody follows this change: no need to read the incident's deliveries
    paged: set[tuple[str, str]] = set()
    last: dict[tuple[str, str], Notification] = {}
    for sent in paging.live_notifications(incident.id):
        if sent.target_kind is TargetKind.ACTION:
            continue  # an action called a system; it is not told of the incident's life
        key = (sent.channel_id, sent.recipient)
        last[key] = sent
        if _event_of(sent) is ChannelEvent.PAGED:
            paged.add(key)
    content = {
        **page_content(config, incident, escalation, now, ()),
        "event": event.value,
        "reason": reason,
    }
    told: list[Notification] = []
    for key, previous in last.items():
        channel = config.channel(previous.channel_id)
        if key not in paged or channel is None or event not in channel.on:
            continue
        if _event_of(previous) is event:
            continue
        due = now
        if previous.state is NotificationState.PENDING and previous.claimed_by:
            # Its attempt is in flight and ends within the channel's timeout: wait that
            # long, so the receiver hears of the page before it hears of the change.
            due = min(now + channel.attempt_timeout, previous.claim_until or now)
            due = max(due, now)
        told.append(
            replace(
                previous,
                id=new_notification_id(),
                reason=reason,
                create_time=now,
                ordinal=len(told),
                # The level and round of the last page through this channel.
                content={**content, "level": previous.level, "round": previous.round},
                state=NotificationState.PENDING,
                attempts=0,
                last_error="",
                update_time=now,
                send_time=None,
                next_attempt_time=due,
                claimed_by="",
                claim_until=None,
            )
        )
    if told:
        paging.add_notifications(told)


def _escalated(incident: Incident, escalation: Escalation, now: datetime, message: str) -> None:
    incident.record_paging(
        EventType.ESCALATED,
        message,
        now,
        {
            "policy": escalation.policy.id,
            "route": str(escalation.route),
            "level": str(escalation.next_level + 1),
            "round": str(escalation.next_round + 1),
            "reason": escalation.reason,
        },
    )


@dataclass(frozen=True)
class StepReport:
    """What one pass of the scheduler did."""

    steps: int
    notifications: int


def run_due_steps(
    uow_paging: PagingRepository,
    load: IncidentRepository,
    config: PagingConfig | None,
    now: datetime,
    limit: int,
) -> StepReport:
    """Run every escalation step due at `now` (up to `limit`), earliest first."""
    steps = notified = 0
    for escalation in uow_paging.claim_due_escalations(now, limit):
        incident = load.get(escalation.incident_id)
        steps += 1
        if incident is None or not incident.state.is_active or config is None:
            escalation.stop()
            uow_paging.save_escalation(escalation)
            continue
        notified += _run_step(uow_paging, config, incident, escalation, now)
        uow_paging.save_escalation(escalation)
        load.save(incident)
    return StepReport(steps, notified)


def _run_step(
    paging: PagingRepository,
    config: PagingConfig,
    incident: Incident,
    escalation: Escalation,
    now: datetime,
) -> int:
    due = escalation.due_at or now
    late = now - due
    if escalation.status is EscalationStatus.ACKNOWLEDGED:
        escalation.restart(escalation.policy, escalation.route, now, "acknowledgement timed out")
        _escalated(incident, escalation, now, "acknowledgement timed out: paging again")
        if escalation.due_at and escalation.due_at > now:
            return 0
    elif escalation.status is EscalationStatus.SILENCED:
        silences = _holding(paging, incident, now)
        if silences:
            _hold(incident, escalation, silences[0], now)
            return 0
        ended = escalation.silenced_by
        escalation.restart(escalation.policy, escalation.route, now, f"silence {ended} ended")
        if escalation.due_at and escalation.due_at > now:
            return 0
    elif escalation.status is not EscalationStatus.ACTIVE:
        escalation.due_at = None
        return 0
    silences = _holding(paging, incident, now)
    if silences:
        _hold(incident, escalation, silences[0], now)
        return 0
    return _page_level(paging, config, incident, escalation, now, late if late > LATE else None)


def _holding(paging: PagingRepository, incident: Incident, now: datetime) -> list[Silence]:
    """The silences holding the incident now, the one that lasts longest first."""
    found = silences_holding(paging.silences_active(now), PagingSubject.of(incident), now)
    return sorted(found, key=lambda silence: silence.end, reverse=True)


def _hold(incident: Incident, escalation: Escalation, silence: Silence, now: datetime) -> None:
    already = (
        escalation.status is EscalationStatus.SILENCED and escalation.silenced_by == silence.id
    )
    escalation.hold(silence.id, silence.end)
    if not already:
        incident.record_paging(
            EventType.ESCALATED,
            f"paging held by silence {silence.id} until {silence.end.isoformat()}"
            f" ({silence.created_by}: {silence.comment})",
            now,
            {"policy": escalation.policy.id, "silence": silence.id, "reason": "silenced"},
        )


def _page_level(
    paging: PagingRepository,
    config: PagingConfig,
    incident: Incident,
    escalation: Escalation,
    now: datetime,
    late: timedelta | None,
) -> int:
    level_index, round = escalation.next_level, escalation.next_round
    # The policy is the snapshot taken when paging started; a reload since may have
    # removed a user, schedule or channel it names. Those are recorded as unreached.
    snapshot = escalation.policy.levels[level_index]
    gone = [t for t in snapshot.targets if not _configured(config, t)]
    level = replace(snapshot, targets=tuple(t for t in snapshot.targets if t not in gone))
    overrides: list[Override] = []
    for schedule_id in {t.id for t in level.targets if t.kind is TargetKind.SCHEDULE}:
        overrides += paging.overrides_between(schedule_id, now, now + timedelta(microseconds=1))
    resolved = resolve_level(config, level, now, overrides)
    unreached = [*(Unreached(t, _gone(t)) for t in gone), *resolved.unreached]
    content = page_content(config, incident, escalation, now, resolved.deliveries)
    notifications = [
        _notification(config, incident, escalation, delivery, now, ordinal, content)
        for ordinal, delivery in enumerate(resolved.deliveries)
    ]
    refused = [
        notification
        for notification, delivery in zip(notifications, resolved.deliveries, strict=True)
        if delivery.target.kind is TargetKind.ACTION
        and not _prepare_action(notification, delivery.target, now)
    ]
    for missed in unreached:
        notification = Notification(
            id=new_notification_id(),
            incident_id=incident.id,
            policy_id=escalation.policy.id,
            level=level_index + 1,
            round=round + 1,
            target_kind=missed.target.kind,
            target_id=missed.target.id,
            user_id="",
            channel_id="",
            channel_type="",
            recipient="",
            reason=escalation.reason,
            create_time=now,
            ordinal=len(notifications),
            content=content,
        )
        notification.suppress(missed.reason, now)
        notifications.append(notification)
    paging.add_notifications(notifications)
    names = ", ".join(n.target for n in notifications) or "nobody"
    details = {
        "policy": escalation.policy.id,
        "route": str(escalation.route),
        "level": str(level_index + 1),
        "round": str(round + 1),
        "targets": names,
        "reason": escalation.reason,
    }
    message = (
        f"level {level_index + 1}, round {round + 1} of policy {escalation.policy.id}:"
        f" paging {names} ({escalation.reason})"
    )
    if late is not None:
        details["late_by"] = f"{late.total_seconds():.1f}s"
        message += f", {late.total_seconds():.1f}s late"
    incident.record_paging(EventType.ESCALATED, message, now, details)
    for notification in refused:
        _action_executed(incident, notification, "FAILED", None, now)
    escalation.advance()
    return sum(1 for n in notifications if n.state is NotificationState.PENDING)


def _gone(target: Target) -> str:
    if target.kind is TargetKind.ACTION:
        return (
            f"{target}: channel {target.id} is no longer a webhook channel in the paging "
            "configuration (changed by a reload); nothing was sent"
        )
    return f"{target} is no longer in the paging configuration (removed by a reload)"


def _configured(config: PagingConfig, target: Target) -> bool:
    if target.kind is TargetKind.USER:
        return config.user(target.id) is not None
    if target.kind is TargetKind.SCHEDULE:
        return config.schedule(target.id) is not None
    if target.kind is TargetKind.ACTION:
        return isinstance(config.channel(target.id), WebhookChannel)
    return config.channel(target.id) is not None


def _notification(
    config: PagingConfig,
    incident: Incident,
    escalation: Escalation,
    delivery: Delivery,
    now: datetime,
    ordinal: int,
    content: Mapping[str, object],
) -> Notification:
    channel = config.channel(delivery.channel_id)
    return Notification(
        id=new_notification_id(),
        incident_id=incident.id,
        policy_id=escalation.policy.id,
        level=escalation.next_level + 1,
        round=escalation.next_round + 1,
        target_kind=delivery.target.kind,
        target_id=delivery.target.id,
        user_id=delivery.user_id or "",
        channel_id=delivery.channel_id,
        channel_type=channel.type if channel is not None else "",
        recipient=delivery.address or delivery.channel_id,
        reason=escalation.reason,
        create_time=now,
        update_time=now,
        next_attempt_time=now,
        ordinal=ordinal,
        content=content,
    )


def page_content(
    config: PagingConfig,
    incident: Incident,
    escalation: Escalation,
    now: datetime,
    deliveries: Sequence[Delivery],
) -> dict[str, object]:
    """What a page says, fixed when it becomes due so every retry says the same.

    The keys are those of the channels' `PageContent` (adapters/channels/base.py).
    """
    targets: dict[tuple[str, str, str | None], dict[str, str | None]] = {}
    for delivery in deliveries:
        target = delivery.target
        if target.kind is TargetKind.ACTION:
            continue  # a request to a system, not someone paged
        if delivery.user_id is not None:
            user = config.user(delivery.user_id)
            via = target.id if target.kind is TargetKind.SCHEDULE else None
            entry = {
                "kind": "user",
                "id": delivery.user_id,
                "name": (user.name or None) if user is not None else None,
                "via": via,
            }
            targets.setdefault(("user", delivery.user_id, via), entry)
        else:
            entry = {"kind": "channel", "id": target.id, "name": None, "via": None}
            targets.setdefault(("channel", target.id, None), entry)
    return {
        "incident_id": incident.id,
        "title": incident.title,
        "severity": incident.severity.name,
        "state": incident.state.name,
        "source": incident.source,
        "incident_type": incident.type.name,
        "opened_at": escalation.started_at.isoformat(),
        "occurred_at": now.isoformat(),
        "event": "paged",
        "alert_count": incident.alert_count,
        "level": escalation.next_level + 1,
        "round": escalation.next_round + 1,
        "reason": escalation.reason,
        "targets": list(targets.values()),
        "assignees": list(incident.assignees),
        "labels": dict(incident.labels),
        "runbook_url": None,
        "links": [],
    }


def record_delivery(
    paging: PagingRepository,
    load: IncidentRepository,
    notification_id: str,
    worker: str,
    attempt: int,
    outcome: DeliveryOutcome,
    retries: RetrySchedule,
    now: datetime,
) -> NotificationState | None:
    """Store what attempt `attempt` of a claimed delivery came to, and return the state
    the delivery is in now: SENT, FAILED (refused, or its retries ran out) or PENDING
    (to be tried again).

    Returns None, changing nothing, when the claim is no longer ours (its
    lease ran out and another worker took it over): the fencing token is the
    (worker, attempt) pair.
    """
    notification = paging.notification(notification_id)
    if (
        notification is None
        or notification.state is not NotificationState.PENDING
        or notification.claimed_by != worker
        or notification.attempts != attempt
    ):
        return None
    final = None
    if outcome.sent:
        notification.sent(now)
        final = "SENT"
    else:
        delay = (
            retries.delay(attempt, outcome.retry_after, now - notification.create_time)
            if outcome.retry
            else None
        )
        if delay is None:
            why = outcome.detail or "refused"
            notification.failed(
                why if not outcome.retry else f"gave up after {attempt} attempts: {why}", now
            )
            final = "FAILED"
        else:
            notification.retry_at(now + delay, outcome.detail, now)
    paging.save_notification(notification)
    if final is not None and notification.is_digest:
        # A digest belongs to no incident: its pages' incidents are told by settling it.
        digests.settle_digest(paging, load, notification, now)
        return notification.state
    if final is not None and notification.target_kind is TargetKind.ACTION:
        incident = load.get(notification.incident_id)
        if incident is not None:
            _action_executed(incident, notification, final, outcome, now)
            load.save(incident)
    elif final is not None:
        incident = load.get(notification.incident_id)
        if incident is not None:
            event = _event_of(notification)
            suffix = "" if final == "SENT" else f": {notification.last_error}"
            if event is ChannelEvent.PAGED:
                verb = "paged" if final == "SENT" else "could not page"
                message = (
                    f"{verb} {notification.target} through {notification.channel_type}"
                    f" {notification.channel_id}{suffix}"
                )
            else:
                verb = "told" if final == "SENT" else "could not tell"
                message = (
                    f"{verb} channel {notification.channel_id} the incident was"
                    f" {event.value}{suffix}"
                )
            incident.record_paging(
                EventType.NOTIFICATION_SENT,
                message,
                now,
                {
                    "event": event.value,
                    "notification_id": notification.id,
                    "target": notification.target,
                    "channel": notification.channel_id,
                    "outcome": final,
                    "attempts": str(attempt),
                    "level": str(notification.level),
                    "round": str(notification.round),
                },
            )
            load.save(incident)
    return notification.state


# Automated actions (docs/PAGING.md, Automated actions).


def _prepare_action(notification: Notification, action: Target, now: datetime) -> bool:
    """Fix the action's body now, so every attempt sends the same bytes. A body that cannot
    be rendered is not sent at all: the action fails at once (False), and is not retried."""
    try:
        body = render_action_body(action.body or "", notification.content)
    except TemplateFailed as error:
        notification.failed(f"the body template failed ({error}); nothing was sent", now)
        return False
    notification.content = {**notification.content, ACTION_BODY: body}
    return True


def _action_executed(
    incident: Incident,
    notification: Notification,
    final: str,
    outcome: DeliveryOutcome | None,
    now: datetime,
) -> None:
    """The ACTION_EXECUTED event: what the webhook answered, or why the action failed."""
    status = outcome.status if outcome is not None else None
    response = outcome.response if outcome is not None else ""
    webhook = notification.channel_id
    if final == "SENT":
        answered = f"HTTP {status}" if status is not None else "accepted"
        message = f"action {webhook} answered {answered}" + (f": {response}" if response else "")
    else:
        message = f"action {webhook} failed: {notification.last_error}"
    incident.record_paging(
        EventType.ACTION_EXECUTED,
        message,
        now,
        {
            "notification_id": notification.id,
            "webhook": webhook,
            "status_code": str(status) if status is not None else "",
            "outcome": final,
            "attempts": str(notification.attempts),
            "response": response,
            "level": str(notification.level),
            "round": str(notification.round),
        },
    )
