"""The one place that maps between protobuf messages and domain objects, both ways.

Enum tables are built from the proto constants by name and checked to cover
every value at import, so adding a value to one side and not the other fails
loudly.

Conversions only convert. The rules a request follows are the domain's, and
the service runs them, once. What cannot be converted (an UNSPECIFIED or
unknown enum value where one is required, a timestamp out of range) is a
ValidationError naming the field, never a default; only then do the rules
run here, on what did convert, so that one answer names every bad field.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Generic, Literal, Protocol, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from generated.incident_manager.v1 import (
    alert_pb2,
    incident_pb2,
    incident_service_pb2,
    integrations_pb2,
)
from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from incident_manager.domain.errors import FieldViolation, ValidationError, quoted
from incident_manager.domain.integrations import (
    KINDS,
    AnomalyMetric,
    EventKind,
    ModuleEvent,
    ThreatCategory,
)
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    AlertAck,
    AlertStatus,
    EventType,
    Incident,
    IncidentEvent,
    IncidentState,
    IncidentType,
    Note,
    Resolution,
    ResolutionMethod,
    Severity,
    TimelineEvent,
)
from incident_manager.domain.paging.escalation import Delivery
from incident_manager.domain.paging.ledger import Notification, NotificationState
from incident_manager.domain.paging.model import Matcher, Override, Silence, TargetKind
from incident_manager.domain.paging.schedules import OnCall
from incident_manager.domain.query import IncidentFilter
from incident_manager.domain.validation import MAX_FILTER_VALUES, Checker, validate_alert
from incident_manager.service.commands import (
    ANONYMOUS,
    AddNote,
    CreateIncident,
    IncidentChanges,
    ResolveIncident,
    UpdateIncident,
)
from incident_manager.service.handlers import check_create_incident
from incident_manager.service.pager import RoutePlan

E = TypeVar("E", bound=enum.IntEnum)
T = TypeVar("T")


class EnumTable(Generic[E]):
    """A total, two-way map between a domain enum and a proto enum (by member name)."""

    # `proto` is a generated enum (e.g. incident_pb2.Severity); its
    # `Value(name)` and `values()` come from protobuf's enum wrapper.
    def __init__(self, domain: type[E], proto: Any, prefix: str) -> None:
        self.domain = domain
        self.prefix = prefix
        self.proto_name: str = proto.DESCRIPTOR.full_name
        self.stand_in: E = next(iter(domain))
        """A member to hold the place of a value that did not convert."""
        self.to_proto: dict[E, int] = {m: proto.Value(prefix + m.name) for m in domain}
        self.from_proto: dict[int, E] = {v: m for m, v in self.to_proto.items()}
        uncovered = set(proto.values()) - set(self.from_proto) - {0}
        if uncovered:
            raise RuntimeError(f"{domain.__name__} has no member for proto values {uncovered}")

    def parse(self, value: int, field: str) -> E:
        member = self.from_proto.get(value)
        if member is None:
            choices = ", ".join(self.prefix + m.name for m in self.domain)
            what = "is required" if value == 0 else f"has unknown value {value}"
            raise ValidationError.single(field, f"{what}; one of {choices}")
        return member

    def parse_many(self, values: Iterable[int], field: str) -> frozenset[E]:
        """A filter's values; UNSPECIFIED cannot be a filter value."""
        values = list(values)
        if len(values) > MAX_FILTER_VALUES:
            raise ValidationError.single(
                field, f"must have at most {MAX_FILTER_VALUES} entries (got {len(values)})"
            )
        for i, value in enumerate(values):
            if value == 0:
                raise ValidationError.single(
                    f"{field}[{i}]",
                    f"{self.prefix}UNSPECIFIED cannot be used as a filter; leave {field} empty "
                    "to match every value",
                )
        return frozenset(self.parse(v, f"{field}[{i}]") for i, v in enumerate(values))


SEVERITY = EnumTable(Severity, incident_pb2.Severity, "SEVERITY_")
STATE = EnumTable(IncidentState, incident_pb2.IncidentState, "INCIDENT_STATE_")
TYPE = EnumTable(IncidentType, incident_pb2.IncidentType, "INCIDENT_TYPE_")
RESOLUTION_METHOD = EnumTable(ResolutionMethod, incident_pb2.ResolutionMethod, "RESOLUTION_METHOD_")
EVENT_TYPE = EnumTable(EventType, incident_pb2.EventType, "EVENT_TYPE_")
ACK_STATUS = EnumTable(AckStatus, alert_pb2.AckStatus, "ACK_STATUS_")
ALERT_STATUS = EnumTable(AlertStatus, alert_pb2.AlertStatus, "ALERT_STATUS_")
ANOMALY_METRIC = EnumTable(AnomalyMetric, integrations_pb2.AnomalyMetric, "ANOMALY_METRIC_")
THREAT_CATEGORY = EnumTable(ThreatCategory, integrations_pb2.ThreatCategory, "THREAT_CATEGORY_")

# ---------------------------------------------------------------- scalars


def timestamp_to_proto(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def timestamp_from_proto(stamp: Timestamp, field: str) -> datetime:
    if not 0 <= stamp.nanos < 1_000_000_000:
        raise ValidationError.single(field, "nanos must be between 0 and 999,999,999")
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as error:
        raise ValidationError.single(
            field, "must be between 0001-01-01 and 9999-12-31 (UTC)"
        ) from error


def duration_to_proto(span: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(span)
    return duration


MAX_DURATION_SECONDS = 315_576_000_000
"""About 10,000 years: the range google.protobuf.Duration allows."""


def duration_from_proto(duration: Duration, field: str) -> timedelta:
    seconds, nanos = duration.seconds, duration.nanos
    if (
        abs(seconds) > MAX_DURATION_SECONDS
        or abs(nanos) > 999_999_999
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    ):
        raise ValidationError.single(
            field, "must be within ±10,000 years with seconds and nanos of the same sign"
        )
    try:
        return duration.ToTimedelta()
    except (ValueError, OverflowError) as error:
        raise ValidationError.single(field, "is too long to represent") from error


# ---------------------------------------------------------------- alerts


def _attempt(parse: Callable[[], T], violations: list[FieldViolation]) -> T | None:
    """Run one field's conversion, collecting its violation instead of stopping at it."""
    try:
        return parse()
    except ValidationError as error:
        violations.extend(error.violations)
        return None


def alert_from_proto(message: alert_pb2.Alert, prefix: str = "alert.") -> Alert:
    violations: list[FieldViolation] = []
    status = (
        AlertStatus.FIRING
        if message.status == alert_pb2.ALERT_STATUS_UNSPECIFIED
        else _attempt(lambda: ALERT_STATUS.parse(message.status, prefix + "status"), violations)
    )
    # A resolve signal only names the alert it clears: severity and type may be left out.
    signal = status is AlertStatus.RESOLVED
    severity = (
        _attempt(lambda: SEVERITY.parse(message.severity, prefix + "severity"), violations)
        if message.severity or not signal
        else None
    )
    type_ = (
        _attempt(lambda: TYPE.parse(message.type, prefix + "type"), violations)
        if message.type or not signal
        else None
    )
    end_time = (
        _attempt(lambda: timestamp_from_proto(message.end_time, prefix + "end_time"), violations)
        if message.HasField("end_time")
        else None
    )
    fire_time = (
        _attempt(lambda: timestamp_from_proto(message.fire_time, prefix + "fire_time"), violations)
        if message.HasField("fire_time")
        else None
    )
    alert = Alert(
        id=message.id,
        source=message.source,
        title=message.title,
        description=message.description,
        severity=severity or Severity.P4,
        type=type_ or IncidentType.DATA,
        labels=dict(message.labels),
        annotations=dict(message.annotations),
        affected_resources=tuple(message.affected_resources),
        runbook_url=message.runbook_url,
        fire_time=fire_time,
        dedup_key=message.dedup_key if message.HasField("dedup_key") else None,
        status=status or AlertStatus.FIRING,
        end_time=end_time,
    )
    if violations:
        # Name every bad field in one answer, not just the first enum.
        checker = Checker(prefix)
        validate_alert(alert, checker, resolve_signal=signal)
        raise ValidationError(violations + checker.violations)
    return alert


def alert_to_proto(alert: Alert) -> alert_pb2.Alert:
    message = alert_pb2.Alert(
        id=alert.id,
        source=alert.source,
        title=alert.title,
        description=alert.description,
        severity=SEVERITY.to_proto[alert.severity],  # type: ignore[arg-type]
        type=TYPE.to_proto[alert.type],  # type: ignore[arg-type]
        labels=dict(alert.labels),
        annotations=dict(alert.annotations),
        affected_resources=list(alert.affected_resources),
        runbook_url=alert.runbook_url,
    )
    if alert.fire_time is not None:
        message.fire_time.CopyFrom(timestamp_to_proto(alert.fire_time))
    if alert.dedup_key is not None:
        message.dedup_key = alert.dedup_key
    message.status = ALERT_STATUS.to_proto[alert.status]  # type: ignore[assignment]
    if alert.end_time is not None:
        message.end_time.CopyFrom(timestamp_to_proto(alert.end_time))
    return message


def ack_to_proto(ack: AlertAck) -> alert_pb2.AlertAck:
    return alert_pb2.AlertAck(
        alert_id=ack.alert_id,
        status=ACK_STATUS.to_proto[ack.status],  # type: ignore[arg-type]
        incident_id=ack.incident_id,
        message=ack.message,
    )


def ack_from_proto(message: alert_pb2.AlertAck) -> AlertAck:
    return AlertAck(
        alert_id=message.alert_id,
        status=ACK_STATUS.parse(message.status, "status"),
        incident_id=message.incident_id,
        message=message.message,
    )


# ---------------------------------------------------------------- incidents


def resolution_to_proto(resolution: Resolution) -> incident_pb2.Resolution:
    return incident_pb2.Resolution(
        method=RESOLUTION_METHOD.to_proto[resolution.method],  # type: ignore[arg-type]
        root_cause=resolution.root_cause,
        notes=resolution.notes,
        resolved_by=resolution.resolved_by,
        resolve_time=timestamp_to_proto(resolution.resolve_time),
        time_to_resolve=duration_to_proto(resolution.time_to_resolve),
    )


def resolution_from_proto(message: incident_pb2.Resolution) -> Resolution:
    return Resolution(
        method=RESOLUTION_METHOD.parse(message.method, "resolution.method"),
        root_cause=message.root_cause,
        notes=message.notes,
        resolved_by=message.resolved_by,
        resolve_time=timestamp_from_proto(message.resolve_time, "resolution.resolve_time"),
        time_to_resolve=duration_from_proto(message.time_to_resolve, "resolution.time_to_resolve"),
    )


def timeline_event_to_proto(event: TimelineEvent) -> incident_pb2.TimelineEvent:
    return incident_pb2.TimelineEvent(
        sequence=event.sequence,
        type=EVENT_TYPE.to_proto[event.type],  # type: ignore[arg-type]
        actor=event.actor,
        message=event.message,
        details=dict(event.details),
        create_time=timestamp_to_proto(event.create_time),
    )


def timeline_event_from_proto(message: incident_pb2.TimelineEvent) -> TimelineEvent:
    return TimelineEvent(
        sequence=message.sequence,
        type=EVENT_TYPE.parse(message.type, "type"),
        actor=message.actor,
        message=message.message,
        details=dict(message.details),
        create_time=timestamp_from_proto(message.create_time, "create_time"),
    )


def note_to_proto(note: Note) -> incident_pb2.Note:
    return incident_pb2.Note(
        id=note.id,
        author=note.author,
        content=note.content,
        create_time=timestamp_to_proto(note.create_time),
    )


def note_from_proto(message: incident_pb2.Note) -> Note:
    return Note(
        id=message.id,
        author=message.author,
        content=message.content,
        create_time=timestamp_from_proto(message.create_time, "create_time"),
    )


def incident_to_proto(incident: Incident) -> incident_pb2.Incident:
    message = incident_pb2.Incident(
        id=incident.id,
        title=incident.title,
        description=incident.description,
        severity=SEVERITY.to_proto[incident.severity],  # type: ignore[arg-type]
        type=TYPE.to_proto[incident.type],  # type: ignore[arg-type]
        state=STATE.to_proto[incident.state],  # type: ignore[arg-type]
        source=incident.source,
        affected_resources=incident.affected_resources,
        labels=incident.labels,
        assignees=incident.assignees,
        fingerprint=incident.fingerprint,
        alert_count=incident.alert_count,
        create_time=timestamp_to_proto(incident.create_time),
        update_time=timestamp_to_proto(incident.update_time),
        timeline=[timeline_event_to_proto(e) for e in incident.timeline],
        notes=[note_to_proto(n) for n in incident.notes],
        etag=incident.etag,
        timeline_size=incident.timeline_size,
        notes_size=incident.notes_size,
        acknowledged_by=incident.acknowledged_by,
    )
    if incident.acknowledge_time is not None:
        message.acknowledge_time.CopyFrom(timestamp_to_proto(incident.acknowledge_time))
    if incident.resolution is not None:
        message.resolution.CopyFrom(resolution_to_proto(incident.resolution))
    return message


_ETAG = re.compile(r'^W/"(\d{1,18})"$')


def incident_from_proto(message: incident_pb2.Incident) -> Incident:
    """A full incident as the server sent it (clients and tests use this).

    The API does not carry when its last alert arrived (a server-side dedup
    detail); it reads as the open time, the earliest it can be.
    """
    etag = _ETAG.match(message.etag)
    create_time = timestamp_from_proto(message.create_time, "incident.create_time")
    return Incident(
        id=message.id,
        title=message.title,
        description=message.description,
        severity=SEVERITY.parse(message.severity, "incident.severity"),
        type=TYPE.parse(message.type, "incident.type"),
        state=STATE.parse(message.state, "incident.state"),
        source=message.source,
        affected_resources=list(message.affected_resources),
        labels=dict(message.labels),
        assignees=list(message.assignees),
        fingerprint=message.fingerprint,
        alert_count=message.alert_count,
        create_time=create_time,
        update_time=timestamp_from_proto(message.update_time, "incident.update_time"),
        last_alert_time=create_time,
        resolution=(
            resolution_from_proto(message.resolution) if message.HasField("resolution") else None
        ),
        version=int(etag.group(1)) if etag else 0,
        timeline_size=message.timeline_size,
        notes_size=message.notes_size,
        timeline=[timeline_event_from_proto(e) for e in message.timeline],
        notes=[note_from_proto(n) for n in message.notes],
    )


def incident_event_to_proto(event: IncidentEvent) -> incident_service_pb2.IncidentEvent:
    return incident_service_pb2.IncidentEvent(
        sequence=event.sequence,
        incident_id=event.incident_id,
        event=timeline_event_to_proto(event.event),
        title=event.title,
        state=STATE.to_proto[event.state],  # type: ignore[arg-type]
        severity=SEVERITY.to_proto[event.severity],  # type: ignore[arg-type]
        type=TYPE.to_proto[event.type],  # type: ignore[arg-type]
        source=event.source,
        assignees=list(event.assignees),
        alert_count=event.alert_count,
    )


def incident_event_from_proto(message: incident_service_pb2.IncidentEvent) -> IncidentEvent:
    return IncidentEvent(
        incident_id=message.incident_id,
        event=timeline_event_from_proto(message.event),
        title=message.title,
        state=STATE.parse(message.state, "state"),
        severity=SEVERITY.parse(message.severity, "severity"),
        type=TYPE.parse(message.type, "type"),
        source=message.source,
        assignees=tuple(message.assignees),
        alert_count=message.alert_count,
    )


# ---------------------------------------------------------------- requests


def create_incident_from_proto(
    request: incident_service_pb2.CreateIncidentRequest, *, actor: str | None = None
) -> CreateIncident:
    """The command; `actor` is who acts (by default whoever the request names)."""
    incident = request.incident
    violations: list[FieldViolation] = []
    severity = _attempt(lambda: SEVERITY.parse(incident.severity, "incident.severity"), violations)
    type_ = _attempt(lambda: TYPE.parse(incident.type, "incident.type"), violations)
    command = CreateIncident(
        title=incident.title,
        description=incident.description,
        severity=SEVERITY.stand_in if severity is None else severity,
        type=TYPE.stand_in if type_ is None else type_,
        source=incident.source,
        affected_resources=tuple(incident.affected_resources),
        labels=dict(incident.labels),
        assignees=tuple(incident.assignees),
        actor=_named(request.actor, actor) or ANONYMOUS,
        request_id=request.request_id,
    )
    if violations:
        raise ValidationError(violations + check_create_incident(command).violations)
    return command


UPDATABLE_FIELDS = (
    "title",
    "description",
    "severity",
    "type",
    "state",
    "affected_resources",
    "labels",
    "assignees",
)


def update_incident_from_proto(
    request: incident_service_pb2.UpdateIncidentRequest, *, actor: str | None = None
) -> UpdateIncident:
    """The command; `actor` is who acts (by default whoever the request names)."""
    paths = _mask_paths(request.update_mask if request.HasField("update_mask") else None)
    incident = request.incident
    changes = IncidentChanges(
        title=incident.title if "title" in paths else None,
        description=incident.description if "description" in paths else None,
        severity=(
            SEVERITY.parse(incident.severity, "incident.severity") if "severity" in paths else None
        ),
        type=TYPE.parse(incident.type, "incident.type") if "type" in paths else None,
        state=STATE.parse(incident.state, "incident.state") if "state" in paths else None,
        affected_resources=(
            tuple(incident.affected_resources) if "affected_resources" in paths else None
        ),
        labels=dict(incident.labels) if "labels" in paths else None,
        assignees=tuple(incident.assignees) if "assignees" in paths else None,
    )
    return UpdateIncident(
        incident_id=incident.id,
        changes=changes,
        etag=incident.etag,
        actor=_named(request.actor, actor) or ANONYMOUS,
    )


def _mask_paths(mask: FieldMask | None) -> frozenset[str]:
    if mask is None or not mask.paths:
        raise ValidationError.single(
            "update_mask",
            f"is required: name the fields to change, from {', '.join(UPDATABLE_FIELDS)}",
        )
    if len(mask.paths) > 2 * len(UPDATABLE_FIELDS):
        raise ValidationError.single(
            "update_mask", f"names {len(mask.paths)} paths; there are only {len(UPDATABLE_FIELDS)}"
        )
    allowed = ", ".join(UPDATABLE_FIELDS)
    violations = []
    for path in mask.paths:
        # Accept both `title` and `incident.title`.
        name = path.removeprefix("incident.")
        if name not in UPDATABLE_FIELDS:
            violations.append(
                FieldViolation(
                    "update_mask",
                    f"cannot update {quoted(path)}; updatable fields are {allowed}",
                )
            )
    if violations:
        raise ValidationError(violations)
    return frozenset(p.removeprefix("incident.") for p in mask.paths)


def resolve_incident_from_proto(
    request: incident_service_pb2.ResolveIncidentRequest, *, resolved_by: str | None = None
) -> ResolveIncident:
    """The command; `resolved_by` is who resolves (by default whoever the request names)."""
    return ResolveIncident(
        incident_id=request.id,
        method=RESOLUTION_METHOD.parse(request.method, "method"),
        resolved_by=_named(request.resolved_by, resolved_by),
        root_cause=request.root_cause,
        notes=request.notes,
        etag=request.etag,
    )


def add_note_from_proto(
    request: incident_service_pb2.AddNoteRequest, *, author: str | None = None
) -> AddNote:
    """The command; `author` is who writes the note (by default whoever the request names)."""
    return AddNote(
        incident_id=request.incident_id,
        author=_named(request.author, author),
        content=request.content,
        request_id=request.request_id,
    )


def _named(claimed: str, acting: str | None) -> str:
    """Who acts: `acting` if the servicer says, else whom the request names."""
    return claimed if acting is None else acting


class _FilterFields(Protocol):
    @property
    def states(self) -> Iterable[int]: ...
    @property
    def severities(self) -> Iterable[int]: ...
    @property
    def types(self) -> Iterable[int]: ...
    @property
    def sources(self) -> Iterable[str]: ...
    @property
    def assignee(self) -> str: ...
    @property
    def open(self) -> bool: ...


OPEN_STATES = frozenset(state for state in IncidentState if state.is_active)
"""What `open: true` asks for: the active states, spelled out once here."""


def filter_from_proto(request: _FilterFields, incident_id: str = "") -> IncidentFilter:
    sources = list(request.sources)
    if len(sources) > MAX_FILTER_VALUES:
        raise ValidationError.single(
            "sources", f"must have at most {MAX_FILTER_VALUES} entries (got {len(sources)})"
        )
    states = STATE.parse_many(request.states, "states")
    if request.open:
        # An empty set would match every state: `open` with only closed states
        # listed is a mistake to report, not a query for everything.
        if states and not states & OPEN_STATES:
            raise ValidationError.single(
                "states",
                "lists no open state, so with open=true nothing could match; "
                "leave states out, or list active states",
            )
        states = states & OPEN_STATES if states else OPEN_STATES
    return IncidentFilter(
        states=states,
        severities=SEVERITY.parse_many(request.severities, "severities"),
        types=TYPE.parse_many(request.types, "types"),
        sources=frozenset(request.sources),
        assignee=request.assignee,
        incident_id=incident_id,
    )


def wants_full_view(view: int) -> bool:
    if view not in incident_service_pb2.IncidentView.values():
        raise ValidationError.single("view", f"has unknown value {view}; use BASIC or FULL")
    return bool(view == incident_service_pb2.INCIDENT_VIEW_FULL)


# ---------------------------------------------------------------- module events

_KIND_ENUMS: dict[str, EnumTable[Any]] = {
    table.proto_name: table for table in (ANOMALY_METRIC, THREAT_CATEGORY)
}
"""The enums a kind of module event may hold, by their proto name."""


_TIMESTAMP = Timestamp.DESCRIPTOR.full_name


def kind_fields(
    kinds: Mapping[str, type[EventKind]] = KINDS,
) -> dict[str, tuple[type[EventKind], tuple[FieldDescriptor, ...]]]:
    """Each kind of module event with its proto message's fields, checked to match.

    Kinds are converted field by field by name, so a kind and its message must
    have the same fields, of types this module can convert; a mismatch fails
    loudly at import, like an enum table that misses a value.
    """
    oneof = integrations_pb2.ModuleEvent.DESCRIPTOR.oneofs_by_name["kind"]
    by_name = {field.name: field for field in oneof.fields}
    problems = []
    if set(by_name) != set(kinds):
        problems.append(f"ModuleEvent.kind holds {sorted(by_name)}, the domain {sorted(kinds)}")
    converters = {}
    for name in sorted(by_name.keys() & kinds.keys()):
        kind, message = kinds[name], by_name[name].message_type
        if message is None:
            problems.append(f"ModuleEvent.{name} is not a message")
            continue
        fields = tuple(message.fields)
        domain_names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
        if {f.name for f in fields} != domain_names:
            problems.append(f"{message.name} and {kind.__name__} have different fields")
        for field in fields:
            if field.enum_type is not None and field.enum_type.full_name not in _KIND_ENUMS:
                problems.append(f"{message.name}.{field.name}: no enum table")
            if field.message_type is not None and field.message_type.full_name != _TIMESTAMP:
                problems.append(f"{message.name}.{field.name}: only Timestamp messages convert")
        converters[name] = (kind, fields)
    if problems:
        raise RuntimeError("module event kinds do not match the proto: " + "; ".join(problems))
    return converters


_KINDS = kind_fields()


def _kind_from_proto(
    message: integrations_pb2.ModuleEvent, prefix: str, violations: list[FieldViolation]
) -> EventKind | None:
    """The kind of event the message carries, converted field by field; None if it has none.

    A field that does not convert is named in `violations` and holds a
    stand-in, so the domain's rules can still judge the other fields.
    """
    name = message.WhichOneof("kind")
    if name is None:
        return None
    kind, fields = _KINDS[name]
    holder = getattr(message, name)
    values: dict[str, Any] = {}
    for field in fields:
        path = f"{prefix}{name}.{field.name}"
        value = getattr(holder, field.name)
        if field.enum_type is not None:
            table = _KIND_ENUMS[field.enum_type.full_name]
            member = _attempt(partial(table.parse, value, path), violations)
            values[field.name] = table.stand_in if member is None else member
        elif field.message_type is not None:
            values[field.name] = (
                _attempt(partial(timestamp_from_proto, value, path), violations)
                if holder.HasField(field.name)
                else None
            )
        else:
            values[field.name] = value
    return kind(**values)


def module_event_from_proto(
    message: integrations_pb2.ModuleEvent, prefix: str = "event."
) -> ModuleEvent:
    """A module event; if a field does not convert, every bad field is named at once."""
    violations: list[FieldViolation] = []
    status = (
        AlertStatus.FIRING
        if message.status == alert_pb2.ALERT_STATUS_UNSPECIFIED
        else _attempt(lambda: ALERT_STATUS.parse(message.status, prefix + "status"), violations)
    )
    kind = _kind_from_proto(message, prefix, violations)

    def moment(name: Literal["time", "end_time"]) -> datetime | None:
        if not message.HasField(name):
            return None
        stamp = getattr(message, name)
        return _attempt(lambda: timestamp_from_proto(stamp, prefix + name), violations)

    event = ModuleEvent(
        id=message.id,
        source=message.source,
        kind=kind,
        time=moment("time"),
        status=status or AlertStatus.FIRING,
        end_time=moment("end_time"),
        labels=dict(message.labels),
    )
    if violations:
        checker = Checker(prefix)
        event.validate(checker)
        raise ValidationError(violations + checker.violations)
    return event


# ---------------------------------------------------------------- paging

NOTIFICATION_STATE = EnumTable(
    NotificationState, paging_pb2.NotificationState, "NOTIFICATION_STATE_"
)
TARGET_KINDS: dict[TargetKind, int] = {
    kind: paging_pb2.TargetKind.Value(f"TARGET_KIND_{kind.name}") for kind in TargetKind
}
"""Target kinds are named in the file (`user`, `schedule`, `channel`, `action`), so this table
maps by name; building it fails at import if the proto lacks one."""
SILENCE_STATES = {
    name: paging_pb2.SilenceState.Value(f"SILENCE_STATE_{name}")
    for name in ("PENDING", "ACTIVE", "EXPIRED")
}


def optional_time(message: Any, name: str, field: str) -> datetime | None:
    """A Timestamp field that may be unset."""
    if not message.HasField(name):
        return None
    return timestamp_from_proto(getattr(message, name), field)


def notification_to_proto(n: Notification) -> paging_pb2.Notification:
    message = paging_pb2.Notification(
        id=n.id,
        incident_id=n.incident_id,
        policy_id=n.policy_id,
        level=n.level,
        round=n.round,
        target_kind=TARGET_KINDS[n.target_kind],  # type: ignore[arg-type]
        target_id=n.target_id,
        user_id=n.user_id,
        channel_id=n.channel_id,
        channel_type=n.channel_type,
        recipient=n.recipient,
        state=NOTIFICATION_STATE.to_proto[n.state],  # type: ignore[arg-type]
        attempts=n.attempts,
        last_error=n.last_error,
        reason=n.reason,
        create_time=timestamp_to_proto(n.create_time),
        digest_id=n.digest_id,
    )
    if n.update_time is not None:
        message.update_time.CopyFrom(timestamp_to_proto(n.update_time))
    if n.send_time is not None:
        message.send_time.CopyFrom(timestamp_to_proto(n.send_time))
    if n.next_attempt_time is not None and n.state is NotificationState.PENDING:
        message.next_attempt_time.CopyFrom(timestamp_to_proto(n.next_attempt_time))
    return message


def silence_matcher_from_proto(message: paging_pb2.SilenceMatchers) -> Matcher:
    """What a silence matches; the values are checked by the pager."""
    return Matcher(
        sources=frozenset(message.sources),
        types=TYPE.parse_many(message.types, "silence.matchers.types"),
        severities=SEVERITY.parse_many(message.severities, "silence.matchers.severities"),
        labels=dict(message.labels),
    )


def silence_to_proto(silence: Silence, state: str) -> paging_pb2.Silence:
    matcher = silence.matcher
    message = paging_pb2.Silence(
        id=silence.id,
        matchers=paging_pb2.SilenceMatchers(
            sources=sorted(matcher.sources),
            types=[TYPE.to_proto[t] for t in sorted(matcher.types)],  # type: ignore[misc]
            severities=[SEVERITY.to_proto[v] for v in sorted(matcher.severities)],  # type: ignore[misc]
            labels=dict(matcher.labels),
        ),
        start_time=timestamp_to_proto(silence.start),
        end_time=timestamp_to_proto(silence.end),
        created_by=silence.created_by,
        comment=silence.comment,
        state=SILENCE_STATES[state],
        expired_by=silence.expired_by,
    )
    if silence.create_time is not None:
        message.create_time.CopyFrom(timestamp_to_proto(silence.create_time))
    return message


def override_to_proto(override: Override) -> paging_pb2.Override:
    message = paging_pb2.Override(
        id=override.id,
        schedule_id=override.schedule_id,
        user_id=override.user_id,
        start_time=timestamp_to_proto(override.start),
        end_time=timestamp_to_proto(override.end),
        created_by=override.created_by,
        reason=override.reason,
    )
    if override.create_time is not None:
        message.create_time.CopyFrom(timestamp_to_proto(override.create_time))
    return message


def on_call_to_proto(answer: OnCall, user_name: str) -> paging_pb2.GetOnCallResponse:
    message = paging_pb2.GetOnCallResponse(
        schedule_id=answer.schedule_id,
        user_id=answer.user_id or "",
        user_name=user_name,
        layer=answer.layer + 1 if answer.layer is not None else 0,
        override_id=answer.override_id or "",
    )
    if answer.since is not None:
        message.start_time.CopyFrom(timestamp_to_proto(answer.since))
    if answer.until is not None:
        message.end_time.CopyFrom(timestamp_to_proto(answer.until))
    return message


def _planned_delivery(delivery: Delivery) -> paging_pb2.PlannedDelivery:
    return paging_pb2.PlannedDelivery(
        target_kind=TARGET_KINDS[delivery.target.kind],  # type: ignore[arg-type]
        target_id=delivery.target.id,
        user_id=delivery.user_id or "",
        channel_id=delivery.channel_id,
        recipient=delivery.address or delivery.channel_id,
    )


def route_plan_to_proto(
    plan: RoutePlan, silences: list[paging_pb2.Silence]
) -> paging_pb2.TestRouteResponse:
    response = paging_pb2.TestRouteResponse(
        matched=plan.matched, route=plan.route, policy_id=plan.policy_id, silences=silences
    )
    for step in plan.steps:
        level = response.levels.add(
            level=step.level, round=step.round, notify_time=timestamp_to_proto(step.at)
        )
        level.deliveries.extend(_planned_delivery(d) for d in step.deliveries)
        level.deliveries.extend(
            paging_pb2.PlannedDelivery(
                target_kind=TARGET_KINDS[missed.target.kind],  # type: ignore[arg-type]
                target_id=missed.target.id,
                problem=missed.reason,
            )
            for missed in step.unreached
        )
    if plan.ack_timeout:
        response.ack_timeout.CopyFrom(duration_to_proto(plan.ack_timeout))
    return response
