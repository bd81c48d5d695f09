"""The incident manager's domain: alerts, incidents, their lifecycle and timeline.

Plain dataclasses and enums; nothing here knows about gRPC, protobuf or SQL.
Enum values equal the proto numbers so logs and the database read the same,
but the conversions module maps them by name and never relies on that.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from incident_manager.domain.errors import IncidentClosed, InvalidTransition, NotAcknowledgeable

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Severity(enum.IntEnum):
    """P0 is critical, P4 informational; a smaller value is more severe."""

    P0 = 1
    P1 = 2
    P2 = 3
    P3 = 4
    P4 = 5

    def is_more_severe_than(self, other: Severity) -> bool:
        return self.value < other.value


class IncidentState(enum.IntEnum):
    DETECTED = 1
    TRIAGED = 2
    INVESTIGATING = 3
    REMEDIATING = 4
    RESOLVED = 5
    CLOSED = 6

    @property
    def is_active(self) -> bool:
        return self.value < IncidentState.RESOLVED.value


class IncidentType(enum.IntEnum):
    INFRASTRUCTURE = 1
    APPLICATION = 2
    SECURITY = 3
    DATA = 4
    PERFORMANCE = 5
    AVAILABILITY = 6
    COMPLIANCE = 7


class ResolutionMethod(enum.IntEnum):
    AUTOMATED = 1
    MANUAL = 2
    AUTO_ASSISTED_MANUAL = 3


class EventType(enum.IntEnum):
    CREATED = 1
    STATE_CHANGED = 2
    SEVERITY_CHANGED = 3
    ASSIGNMENT_CHANGED = 4
    NOTE_ADDED = 5
    ALERT_MERGED = 6
    ESCALATED = 7
    ACTION_EXECUTED = 8
    NOTIFICATION_SENT = 9
    RESOLVED = 10
    UPDATED = 11
    ACKNOWLEDGED = 12


class AckStatus(enum.IntEnum):
    ACCEPTED = 1
    DUPLICATE = 2
    RATE_LIMITED = 3
    REJECTED = 4
    CLEARED = 5
    IGNORED = 6


class AlertStatus(enum.IntEnum):
    FIRING = 1
    RESOLVED = 2


class AutoResolve(enum.Enum):
    """When an incident resolves by itself as its alerts clear (per source)."""

    FIRST = "first"
    """When any one of its alerts clears."""
    LAST = "last"
    """When its most recently received alert clears."""
    ALL = "all"
    """When every one of its alerts has cleared."""
    NEVER = "never"
    """Never: people resolve it."""


@dataclass(frozen=True)
class Alert:
    """An alert as a monitoring module fired it."""

    id: str
    """The source's own id; (source, id) identifies a submission for retries."""
    source: str
    title: str
    severity: Severity
    type: IncidentType
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    affected_resources: Sequence[str] = ()
    runbook_url: str = ""
    fire_time: datetime | None = None
    """When the source fired it; None means "when the server received it"."""
    dedup_key: str | None = None
    """Overrides the computed fingerprint when set."""
    status: AlertStatus = AlertStatus.FIRING
    end_time: datetime | None = None
    """When the condition ended; one not in the future makes this a resolve signal."""
    submitted_by: str = ""
    """The authenticated caller that sent it, when the server authenticates callers."""

    @property
    def actor(self) -> str:
        """Who the events this alert causes name: its submitter if known, else its source.

        With authentication on, `source` is only what the request claims; the
        submitter is who the credentials prove.
        """
        return self.submitted_by or self.source

    def is_resolve_signal(self, now: datetime) -> bool:
        return self.status is AlertStatus.RESOLVED or (
            self.end_time is not None and self.end_time <= now
        )


@dataclass(frozen=True)
class AlertAck:
    """What happened to one submitted alert: the answer its sender gets (the proto's AlertAck).

    Not to be confused with acknowledging an incident, which people on call do.
    """

    alert_id: str
    status: AckStatus
    incident_id: str = ""
    message: str = ""
    retry: bool = False
    """The alert (or resolve signal) was already received: this repeats the first answer,
    and nothing was stored or counted again."""


@dataclass(frozen=True)
class ReceivedAlert:
    """A stored alert and the answer it got, kept so that a retry gets the same answer."""

    alert: Alert
    incident_id: str
    status: AckStatus
    fingerprint: str
    receive_time: datetime
    cleared_time: datetime | None = None
    """When a resolve signal cleared it; None while it is firing."""


@dataclass(frozen=True)
class RequestRecord:
    """What a request carrying a client-chosen request_id did, so a retry can repeat it."""

    kind: str
    """The RPC, e.g. `CreateIncident`."""
    incident_id: str
    note_id: str = ""


@dataclass(frozen=True)
class Resolution:
    method: ResolutionMethod
    root_cause: str
    notes: str
    resolved_by: str
    resolve_time: datetime
    time_to_resolve: timedelta


@dataclass(frozen=True)
class Note:
    id: str
    author: str
    content: str
    create_time: datetime


@dataclass(frozen=True)
class TimelineEvent:
    """One entry of an incident's timeline."""

    type: EventType
    actor: str
    message: str
    create_time: datetime
    details: Mapping[str, str] = field(default_factory=dict)
    sequence: int = 0
    """Server-wide position; 0 until the event is stored."""


@dataclass(frozen=True)
class IncidentEvent:
    """A timeline event together with the incident's key fields right after it.

    This is what StreamIncidents delivers and what its filters look at.
    """

    incident_id: str
    event: TimelineEvent
    title: str
    state: IncidentState
    severity: Severity
    type: IncidentType
    source: str
    assignees: tuple[str, ...]
    alert_count: int

    @property
    def sequence(self) -> int:
        return self.event.sequence

    def with_sequence(self, sequence: int) -> IncidentEvent:
        # Written out: dataclasses.replace, twice per stored event, was a few
        # percent of a batch storm's CPU.
        e = self.event
        return IncidentEvent(
            self.incident_id,
            TimelineEvent(e.type, e.actor, e.message, e.create_time, e.details, sequence),
            self.title,
            self.state,
            self.severity,
            self.type,
            self.source,
            self.assignees,
            self.alert_count,
        )


MERGED_IDS_SHOWN = 5
"""How many alert ids the message of a many-alert ALERT_MERGED event names; its
details list them all."""

PAGING_ACTOR = "paging"
"""The actor of the timeline events paging records (ESCALATED, NOTIFICATION_SENT)."""


def new_incident_id() -> str:
    return f"inc_{secrets.token_hex(12)}"


def new_note_id() -> str:
    return f"note_{secrets.token_hex(8)}"


@dataclass
class Incident:
    """The aggregate: every change goes through a method that records a timeline event.

    New events collect in `pending_events` until the repository stores them
    and gives them their sequence numbers.
    """

    id: str
    title: str
    description: str
    severity: Severity
    type: IncidentType
    state: IncidentState
    source: str
    affected_resources: list[str]
    labels: dict[str, str]
    assignees: list[str]
    fingerprint: str
    alert_count: int
    create_time: datetime
    update_time: datetime
    last_alert_time: datetime
    """When its most recent alert arrived (the one that opened it, or the latest merged);
    for an incident created by hand, when it was created. The dedup window is
    measured from here, so a source that keeps firing stays one incident."""
    resolution: Resolution | None = None
    version: int = 1
    """Bumped once per operation that changes it; the etag is derived from it."""
    loaded_version: int = 0
    """The version storage held when this object was read. Saving succeeds only if
    storage still holds it (optimistic concurrency); 0 means never stored."""
    timeline_size: int = 0
    notes_size: int = 0
    acknowledged_by: str = ""
    """Who last acknowledged it; empty until someone does."""
    acknowledge_time: datetime | None = None
    """When it was last acknowledged; None until someone does."""
    timeline: list[TimelineEvent] = field(default_factory=list)
    """The most recent stored events, oldest first (loaded on demand)."""
    notes: list[Note] = field(default_factory=list)
    pending_events: list[IncidentEvent] = field(default_factory=list, repr=False)
    pending_notes: list[Note] = field(default_factory=list, repr=False)

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @classmethod
    def open(
        cls,
        *,
        title: str,
        description: str,
        severity: Severity,
        type: IncidentType,
        source: str,
        affected_resources: Sequence[str],
        labels: Mapping[str, str],
        assignees: Sequence[str],
        fingerprint: str,
        actor: str,
        now: datetime,
        alert_count: int = 0,
        details: Mapping[str, str] | None = None,
    ) -> Incident:
        """A new DETECTED incident; `alert_count` is 1 when an alert opens it."""
        incident = cls(
            id=new_incident_id(),
            title=title,
            description=description,
            severity=severity,
            type=type,
            state=IncidentState.DETECTED,
            source=source,
            affected_resources=list(affected_resources),
            labels=dict(labels),
            assignees=list(assignees),
            fingerprint=fingerprint,
            alert_count=alert_count,
            create_time=now,
            update_time=now,
            last_alert_time=now,
            version=0,
        )
        incident._record(
            EventType.CREATED, actor, f"incident opened by {actor}: {title}", now, details or {}
        )
        return incident

    @classmethod
    def open_for_alert(cls, alert: Alert, fingerprint: str, now: datetime) -> Incident:
        """The incident a new problem's first alert opens (its CREATED event names the
        alert)."""
        return cls.open(
            title=alert.title,
            description=alert.description,
            severity=alert.severity,
            type=alert.type,
            source=alert.source,
            affected_resources=alert.affected_resources,
            labels=alert.labels,
            assignees=(),
            fingerprint=fingerprint,
            actor=alert.actor,
            now=now,
            alert_count=1,
            details={"alert_id": alert.id, "source": alert.source},
        )

    def merge_alert(self, alert: Alert, matched_on: str, now: datetime) -> None:
        """Count a duplicate alert; the incident takes the most severe severity seen.

        The alert's arrival restarts the dedup window (see `last_alert_time`).
        """
        self.alert_count += 1
        # Never backwards, even if the clock steps back: dedup indexes rely on it.
        self.last_alert_time = max(self.last_alert_time, now)
        self._record(
            EventType.ALERT_MERGED,
            alert.actor,
            f"alert {alert.id!r} from {alert.source} merged (matched on {matched_on})",
            now,
            {"alert_id": alert.id, "source": alert.source, "matched_on": matched_on},
        )
        if alert.severity.is_more_severe_than(self.severity):
            self._change_severity(alert.severity, alert.actor, now, f"alert {alert.id!r}")

    def merge_alerts(self, merged: Sequence[tuple[Alert, str]], now: datetime) -> None:
        """Count several duplicate alerts (each with what it matched on) with one event.

        One alert is recorded exactly as `merge_alert` records it. Several get
        one ALERT_MERGED event whose details list every one of them (`alerts`,
        a JSON array of {alert_id, source, matched_on}) with their `count`, so
        a storm adds one event per incident per batch, not one per alert, and
        `alert_count` stays exact. The incident then takes the most severe
        severity among them, as if they had been merged one by one.
        """
        if len(merged) == 1:
            self.merge_alert(merged[0][0], merged[0][1], now)
            return
        if not merged:
            return
        self.alert_count += len(merged)
        self.last_alert_time = max(self.last_alert_time, now)
        reasons = sorted({matched_on for _, matched_on in merged})
        actors = sorted({alert.actor for alert, _ in merged})
        shown = ", ".join(repr(alert.id) for alert, _ in merged[:MERGED_IDS_SHOWN])
        more = len(merged) - MERGED_IDS_SHOWN
        self._record(
            EventType.ALERT_MERGED,
            ", ".join(actors),
            f"{len(merged)} alerts merged (matched on {'; '.join(reasons)}): {shown}"
            + (f" and {more} more" if more > 0 else ""),
            now,
            {
                "count": str(len(merged)),
                "matched_on": "; ".join(reasons),
                "alerts": json.dumps(
                    [
                        {"alert_id": alert.id, "source": alert.source, "matched_on": matched_on}
                        for alert, matched_on in merged
                    ],
                    ensure_ascii=False,
                    separators=(",", ":"),
                ),
            },
        )
        worst = min(merged, key=lambda item: item[0].severity)[0]
        if worst.severity.is_more_severe_than(self.severity):
            self._change_severity(worst.severity, worst.actor, now, f"alert {worst.id!r}")

    def update(
        self,
        *,
        actor: str,
        now: datetime,
        title: str | None = None,
        description: str | None = None,
        severity: Severity | None = None,
        type: IncidentType | None = None,
        state: IncidentState | None = None,
        affected_resources: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        assignees: Sequence[str] | None = None,
    ) -> None:
        """Apply the given changes; None means "leave as it is". Unchanged values record nothing."""
        if self.state is IncidentState.CLOSED:
            raise IncidentClosed(self.id)
        if state is not None and state is not self.state:
            self.check_transition(state)
        changed: list[str] = []
        if title is not None and title != self.title:
            self.title = title
            changed.append("title")
        if description is not None and description != self.description:
            self.description = description
            changed.append("description")
        if type is not None and type is not self.type:
            self.type = type
            changed.append("type")
        if affected_resources is not None and list(affected_resources) != self.affected_resources:
            self.affected_resources = list(affected_resources)
            changed.append("affected_resources")
        if labels is not None and dict(labels) != self.labels:
            self.labels = dict(labels)
            changed.append("labels")
        if changed:
            self._record(
                EventType.UPDATED,
                actor,
                f"{actor} changed {', '.join(changed)}",
                now,
                {"fields": ",".join(changed)},
            )
        if severity is not None and severity is not self.severity:
            self._change_severity(severity, actor, now, actor)
        if assignees is not None and list(assignees) != self.assignees:
            before = ",".join(self.assignees)
            self.assignees = list(assignees)
            after = ",".join(self.assignees)
            self._record(
                EventType.ASSIGNMENT_CHANGED,
                actor,
                f"{actor} assigned it to {after or 'nobody'} (was {before or 'nobody'})",
                now,
                {"from": before, "to": after},
            )
        if state is not None and state is not self.state:
            if self.state is IncidentState.DETECTED and state.is_active:
                # Moving past DETECTED means someone is on it: it counts as an
                # acknowledgement, so paging stops.
                self.acknowledged_by = actor
                self.acknowledge_time = now
            self._change_state(state, actor, now)

    def resolve(
        self,
        *,
        method: ResolutionMethod,
        root_cause: str,
        notes: str,
        resolved_by: str,
        now: datetime,
        details: Mapping[str, str] | None = None,
    ) -> None:
        self.check_transition(IncidentState.RESOLVED)
        previous = self.state
        self.state = IncidentState.RESOLVED
        self.resolution = Resolution(
            method=method,
            root_cause=root_cause,
            notes=notes,
            resolved_by=resolved_by,
            resolve_time=now,
            time_to_resolve=max(now - self.create_time, timedelta(0)),
        )
        self._record(
            EventType.RESOLVED,
            resolved_by,
            f"{resolved_by} resolved it ({method.name.lower()})"
            + (f": {root_cause}" if root_cause else ""),
            now,
            {"from": previous.name, "method": method.name, "root_cause": root_cause}
            | dict(details or {}),
        )

    def acknowledge(self, *, actor: str, now: datetime) -> None:
        """Someone is on it: a DETECTED incident becomes TRIAGED. Allowed again later,
        which re-arms the acknowledgement timeout."""
        if not self.state.is_active:
            raise NotAcknowledgeable(self.id, self.state.name)
        self.acknowledged_by = actor
        self.acknowledge_time = now
        self._record(EventType.ACKNOWLEDGED, actor, f"{actor} acknowledged it", now, {"by": actor})
        if self.state is IncidentState.DETECTED:
            self._change_state(IncidentState.TRIAGED, actor, now)

    def add_note(self, *, author: str, content: str, now: datetime) -> Note:
        note = Note(id=new_note_id(), author=author, content=content, create_time=now)
        self.pending_notes.append(note)
        self.notes_size += 1
        self._record(
            EventType.NOTE_ADDED, author, f"{author} added a note", now, {"note_id": note.id}
        )
        return note

    def record_paging(
        self, type: EventType, message: str, now: datetime, details: Mapping[str, str]
    ) -> None:
        """A paging step or delivery outcome, on the timeline with the actor `paging`."""
        self._record(type, PAGING_ACTOR, message, now, details)

    def check_transition(self, target: IncidentState) -> None:
        """Raise InvalidTransition unless the lifecycle allows moving to `target`."""
        current = self.state
        why = _transition_refusal(current, target)
        if why is not None:
            raise InvalidTransition(self.id, current.name, target.name, why)

    def _change_severity(self, severity: Severity, actor: str, now: datetime, cause: str) -> None:
        before = self.severity
        self.severity = severity
        self._record(
            EventType.SEVERITY_CHANGED,
            actor,
            f"severity changed from {before.name} to {severity.name} by {cause}",
            now,
            {"from": before.name, "to": severity.name},
        )

    def _change_state(self, state: IncidentState, actor: str, now: datetime) -> None:
        before = self.state
        self.state = state
        if before is IncidentState.RESOLVED and state.is_active:
            # Reopened: the resolution no longer describes the incident; the
            # timeline keeps the old one.
            self.resolution = None
        self._record(
            EventType.STATE_CHANGED,
            actor,
            f"{actor} moved it from {before.name} to {state.name}",
            now,
            {"from": before.name, "to": state.name},
        )

    def _record(
        self,
        type: EventType,
        actor: str,
        message: str,
        now: datetime,
        details: Mapping[str, str],
    ) -> None:
        if not self.pending_events:
            # One stored version per operation, however many events it records.
            self.version += 1
        self.update_time = now
        self.timeline_size += 1
        event = TimelineEvent(
            type=type, actor=actor, message=message, create_time=now, details=dict(details)
        )
        self.pending_events.append(
            IncidentEvent(
                incident_id=self.id,
                event=event,
                title=self.title,
                state=self.state,
                severity=self.severity,
                type=self.type,
                source=self.source,
                assignees=tuple(self.assignees),
                alert_count=self.alert_count,
            )
        )


def _transition_refusal(current: IncidentState, target: IncidentState) -> str | None:
    """Why the lifecycle refuses current -> target, or None if it allows it."""
    if current is IncidentState.CLOSED:
        return "a closed incident is final"
    if target is current:
        return f"it is already {current.name}"
    if current.is_active:
        if target.is_active:
            if target.value < current.value:
                return "active incidents only move forward; resolve and reopen to go back"
            return None
        if target is IncidentState.CLOSED:
            return "resolve it first, so the resolution is recorded"
        return None  # RESOLVED
    # current is RESOLVED
    if target.is_active or target is IncidentState.CLOSED:
        return None
    return f"it is already {current.name}"
