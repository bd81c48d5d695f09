"""Conversions between proto messages and domain objects lose nothing and refuse bad input.

Every domain object goes to proto and back unchanged, also through the wire
format; every enum table is total both ways; what a client can get wrong
(UNSPECIFIED or unknown enum values, update masks, timestamps out of range)
is a ValidationError naming the field, never another exception.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from generated.incident_manager.v1 import (
    alert_pb2,
    incident_pb2,
    incident_service_pb2,
    integrations_pb2,
)
from incident_manager.domain.errors import ValidationError
from incident_manager.domain.integrations import (
    KINDS,
    AnomalyEvent,
    AnomalyMetric,
    EdgeAgentEvent,
    EventKind,
    GovernanceEvent,
    SecurityEvent,
    ThreatCategory,
)
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    AlertAck,
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
from incident_manager.entrypoints import conversions as conv
from incident_manager.service.commands import ANONYMOUS, IncidentChanges

M = TypeVar("M", bound=Message)

# Enough examples to find edge cases, few enough for the file to run in seconds.
# No deadline: the first example pays for imports and would be flaky.
modest = settings(max_examples=150, deadline=None)

# ---------------------------------------------------------------- strategies

texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=24)
"""Any text protobuf can carry: every code point but lone surrogates, NUL included."""
text_lists = st.lists(texts, max_size=5)
text_maps = st.dictionaries(texts, texts, max_size=5)
moments = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(9998, 12, 31, 23, 59, 59, 999_999),
    timezones=st.just(UTC),
)
int64s = st.integers(-(2**63), 2**63 - 1)
uint64s = st.integers(0, 2**64 - 1)
# Durations are non-negative in the domain; protobuf's limit is 10,000 years.
spans = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3_650_000))

alerts = st.builds(
    Alert,
    id=texts,
    source=texts,
    title=texts,
    severity=st.sampled_from(Severity),
    type=st.sampled_from(IncidentType),
    description=texts,
    labels=text_maps,
    annotations=text_maps,
    affected_resources=text_lists.map(tuple),
    runbook_url=texts,
    fire_time=st.none() | moments,
    dedup_key=st.none() | texts,
)
acks = st.builds(
    AlertAck,
    alert_id=texts,
    status=st.sampled_from(AckStatus),
    incident_id=texts,
    message=texts,
)
resolutions = st.builds(
    Resolution,
    method=st.sampled_from(ResolutionMethod),
    root_cause=texts,
    notes=texts,
    resolved_by=texts,
    resolve_time=moments,
    time_to_resolve=spans,
)
notes = st.builds(Note, id=texts, author=texts, content=texts, create_time=moments)
timeline_events = st.builds(
    TimelineEvent,
    type=st.sampled_from(EventType),
    actor=texts,
    message=texts,
    create_time=moments,
    details=text_maps,
    sequence=uint64s,
)
incidents = st.builds(
    Incident,
    id=texts,
    title=texts,
    description=texts,
    severity=st.sampled_from(Severity),
    type=st.sampled_from(IncidentType),
    state=st.sampled_from(IncidentState),
    source=texts,
    affected_resources=text_lists,
    labels=text_maps,
    assignees=text_lists,
    fingerprint=texts,
    alert_count=int64s,
    create_time=moments,
    update_time=moments,
    last_alert_time=moments,
    resolution=st.none() | resolutions,
    # The etag carries the version as at most 18 digits.
    version=st.integers(0, 10**18 - 1),
    timeline_size=int64s,
    notes_size=int64s,
    timeline=st.lists(timeline_events, max_size=3),
    notes=st.lists(notes, max_size=3),
).map(
    # The API does not carry the last alert's time; a client reads it as the open time.
    lambda incident: dataclasses.replace(incident, last_alert_time=incident.create_time)
)
incident_events = st.builds(
    IncidentEvent,
    incident_id=texts,
    event=timeline_events,
    title=texts,
    state=st.sampled_from(IncidentState),
    severity=st.sampled_from(Severity),
    type=st.sampled_from(IncidentType),
    source=texts,
    assignees=text_lists.map(tuple),
    alert_count=int64s,
)


def over_the_wire(message: M) -> M:
    """The message as the other end of a connection parses it."""
    return type(message).FromString(message.SerializeToString())


def field_names(error: ValidationError) -> list[str]:
    return [violation.field for violation in error.violations]


# ---------------------------------------------------------------- round trips


@modest
@given(alerts)
def test_an_alert_survives_a_round_trip_through_proto(alert: Alert) -> None:
    message = conv.alert_to_proto(alert)
    assert conv.alert_from_proto(message) == alert
    assert conv.alert_from_proto(over_the_wire(message)) == alert


def test_an_empty_dedup_key_is_kept_apart_from_no_dedup_key() -> None:
    without = Alert("a-1", "llm-sentinel", "latency", Severity.P2, IncidentType.PERFORMANCE)
    empty = dataclasses.replace(without, dedup_key="")
    assert not conv.alert_to_proto(without).HasField("dedup_key")
    assert conv.alert_to_proto(empty).HasField("dedup_key")
    assert conv.alert_from_proto(over_the_wire(conv.alert_to_proto(empty))).dedup_key == ""
    assert conv.alert_from_proto(over_the_wire(conv.alert_to_proto(without))).dedup_key is None


@modest
@given(acks)
def test_an_ack_survives_a_round_trip_through_proto(ack: AlertAck) -> None:
    message = conv.ack_to_proto(ack)
    assert conv.ack_from_proto(message) == ack
    assert conv.ack_from_proto(over_the_wire(message)) == ack


@modest
@given(incidents)
def test_an_incident_survives_a_round_trip_through_proto(incident: Incident) -> None:
    message = conv.incident_to_proto(incident)
    assert message.etag == incident.etag
    assert conv.incident_from_proto(message) == incident
    assert conv.incident_from_proto(over_the_wire(message)) == incident


@modest
@given(resolutions)
def test_a_resolution_survives_a_round_trip_through_proto(resolution: Resolution) -> None:
    message = conv.resolution_to_proto(resolution)
    assert conv.resolution_from_proto(message) == resolution
    assert conv.resolution_from_proto(over_the_wire(message)) == resolution


@modest
@given(timeline_events)
def test_a_timeline_event_survives_a_round_trip_through_proto(event: TimelineEvent) -> None:
    message = conv.timeline_event_to_proto(event)
    assert conv.timeline_event_from_proto(message) == event
    assert conv.timeline_event_from_proto(over_the_wire(message)) == event


@modest
@given(notes)
def test_a_note_survives_a_round_trip_through_proto(note: Note) -> None:
    message = conv.note_to_proto(note)
    assert conv.note_from_proto(message) == note
    assert conv.note_from_proto(over_the_wire(message)) == note


@modest
@given(incident_events)
def test_an_incident_event_survives_a_round_trip_through_proto(event: IncidentEvent) -> None:
    message = conv.incident_event_to_proto(event)
    assert message.sequence == event.sequence
    assert conv.incident_event_from_proto(message) == event
    assert conv.incident_event_from_proto(over_the_wire(message)) == event


@modest
@given(
    st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999),
        timezones=st.just(UTC),
    )
)
def test_any_moment_datetime_can_hold_survives_a_round_trip_through_a_timestamp(
    moment: datetime,
) -> None:
    back = conv.timestamp_from_proto(over_the_wire(conv.timestamp_to_proto(moment)), "when")
    assert back == moment
    assert back.utcoffset() == timedelta(0)


# ---------------------------------------------------------------- enum tables

ENUM_TABLES = [
    pytest.param(conv.SEVERITY, incident_pb2.Severity, id="SEVERITY"),
    pytest.param(conv.STATE, incident_pb2.IncidentState, id="STATE"),
    pytest.param(conv.TYPE, incident_pb2.IncidentType, id="TYPE"),
    pytest.param(conv.RESOLUTION_METHOD, incident_pb2.ResolutionMethod, id="RESOLUTION_METHOD"),
    pytest.param(conv.EVENT_TYPE, incident_pb2.EventType, id="EVENT_TYPE"),
    pytest.param(conv.ACK_STATUS, alert_pb2.AckStatus, id="ACK_STATUS"),
]


@pytest.mark.parametrize(("table", "proto_enum"), ENUM_TABLES)
def test_every_proto_enum_value_but_unspecified_maps_to_a_domain_member_and_back(
    table: conv.EnumTable[Any], proto_enum: Any
) -> None:
    for value in proto_enum.values():
        if value == 0:
            continue
        member = table.parse(value, "field")
        assert proto_enum.Name(value) == table.prefix + member.name
        assert table.to_proto[member] == value


@pytest.mark.parametrize(("table", "proto_enum"), ENUM_TABLES)
def test_every_domain_enum_member_maps_to_a_proto_value_and_back(
    table: conv.EnumTable[enum.IntEnum], proto_enum: Any
) -> None:
    assert set(table.to_proto) == set(table.domain)
    for member in table.domain:
        value = table.to_proto[member]
        assert value != 0, f"{member!r} maps to the UNSPECIFIED value"
        assert proto_enum.Name(value) == table.prefix + member.name
        assert table.parse(value, "field") is member
    assert sorted(table.to_proto.values()) == sorted(v for v in proto_enum.values() if v != 0)


@pytest.mark.parametrize("value", [0, 999, -1])
@pytest.mark.parametrize(("table", "proto_enum"), ENUM_TABLES)
def test_an_unspecified_or_unknown_enum_value_is_refused_naming_the_field(
    table: conv.EnumTable[Any], proto_enum: Any, value: int
) -> None:
    with pytest.raises(ValidationError) as refused:
        table.parse(value, "incident.some_field")
    assert field_names(refused.value) == ["incident.some_field"]
    expected = "is required" if value == 0 else str(value)
    assert expected in refused.value.violations[0].description


def _alert_message() -> alert_pb2.Alert:
    return conv.alert_to_proto(
        Alert("a-1", "llm-sentinel", "latency", Severity.P2, IncidentType.PERFORMANCE)
    )


def _incident_message() -> incident_pb2.Incident:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    incident = Incident(
        id="inc_1",
        title="latency",
        description="",
        severity=Severity.P2,
        type=IncidentType.PERFORMANCE,
        state=IncidentState.DETECTED,
        source="llm-sentinel",
        affected_resources=[],
        labels={},
        assignees=[],
        fingerprint="f",
        alert_count=1,
        create_time=now,
        update_time=now,
        last_alert_time=now,
        resolution=Resolution(ResolutionMethod.MANUAL, "", "", "ana", now, timedelta(0)),
    )
    return conv.incident_to_proto(incident)


def _incident_event_message() -> incident_service_pb2.IncidentEvent:
    event = TimelineEvent(EventType.CREATED, "ana", "opened", datetime(2026, 1, 1, tzinfo=UTC))
    return conv.incident_event_to_proto(
        IncidentEvent(
            "inc_1", event, "t", IncidentState.DETECTED, Severity.P1, IncidentType.DATA, "s", (), 1
        )
    )


# (what is converted, a valid message, the enum field to spoil, the field named in the error)
ENUM_FIELDS: list[Any] = [
    (conv.alert_from_proto, _alert_message, ("severity",), "alert.severity"),
    (conv.alert_from_proto, _alert_message, ("type",), "alert.type"),
    (
        conv.ack_from_proto,
        lambda: alert_pb2.AlertAck(alert_id="a-1", status=alert_pb2.ACK_STATUS_ACCEPTED),
        ("status",),
        "status",
    ),
    (conv.incident_from_proto, _incident_message, ("severity",), "incident.severity"),
    (conv.incident_from_proto, _incident_message, ("type",), "incident.type"),
    (conv.incident_from_proto, _incident_message, ("state",), "incident.state"),
    (
        conv.incident_from_proto,
        _incident_message,
        ("resolution", "method"),
        "resolution.method",
    ),
    (conv.incident_event_from_proto, _incident_event_message, ("state",), "state"),
    (conv.incident_event_from_proto, _incident_event_message, ("severity",), "severity"),
    (conv.incident_event_from_proto, _incident_event_message, ("type",), "type"),
    (conv.incident_event_from_proto, _incident_event_message, ("event", "type"), "type"),
    (
        conv.create_incident_from_proto,
        lambda: incident_service_pb2.CreateIncidentRequest(incident=_incident_message()),
        ("incident", "severity"),
        "incident.severity",
    ),
    (
        conv.create_incident_from_proto,
        lambda: incident_service_pb2.CreateIncidentRequest(incident=_incident_message()),
        ("incident", "type"),
        "incident.type",
    ),
    (
        conv.resolve_incident_from_proto,
        lambda: incident_service_pb2.ResolveIncidentRequest(
            id="inc_1", method=incident_pb2.RESOLUTION_METHOD_MANUAL, resolved_by="ana"
        ),
        ("method",),
        "method",
    ),
]


@pytest.mark.parametrize("value", [0, 999])
@pytest.mark.parametrize(
    ("convert", "build", "path", "field"),
    ENUM_FIELDS,
    ids=[f"{case[0].__name__}:{'.'.join(case[2])}" for case in ENUM_FIELDS],
)
def test_a_message_with_an_unspecified_or_unknown_enum_is_refused_naming_the_field(
    convert: Callable[[Any], object],
    build: Callable[[], Message],
    path: tuple[str, ...],
    field: str,
    value: int,
) -> None:
    message = build()
    convert(message)  # valid as built
    holder: Any = message
    for name in path[:-1]:
        holder = getattr(holder, name)
    setattr(holder, path[-1], value)
    with pytest.raises(ValidationError) as refused:
        convert(message)
    assert field_names(refused.value) == [field]


def test_wants_full_view_refuses_an_unknown_view() -> None:
    assert conv.wants_full_view(incident_service_pb2.INCIDENT_VIEW_FULL)
    assert not conv.wants_full_view(incident_service_pb2.INCIDENT_VIEW_BASIC)
    assert not conv.wants_full_view(incident_service_pb2.INCIDENT_VIEW_UNSPECIFIED)
    with pytest.raises(ValidationError) as refused:
        conv.wants_full_view(999)
    assert field_names(refused.value) == ["view"]


# ---------------------------------------------------------------- update masks

# As documented on UpdateIncidentRequest.update_mask in incident_service.proto.
UPDATABLE = (
    "title",
    "description",
    "severity",
    "type",
    "state",
    "affected_resources",
    "labels",
    "assignees",
)


def test_incident_changes_has_a_field_for_every_updatable_field_and_no_other() -> None:
    assert {f.name for f in dataclasses.fields(IncidentChanges)} == set(UPDATABLE)
    assert set(conv.UPDATABLE_FIELDS) == set(UPDATABLE)


mask_paths = st.sets(st.sampled_from(UPDATABLE), min_size=1).flatmap(
    lambda names: st.tuples(*(st.sampled_from([name, f"incident.{name}"]) for name in names))
)
"""A non-empty mask; each path with or without the `incident.` prefix."""


def _expected_change(incident: Incident, name: str) -> object:
    value = getattr(incident, name)
    if name in ("affected_resources", "assignees"):
        return tuple(value)
    return value


@modest
@given(incident=incidents, paths=mask_paths, actor=texts)
def test_only_the_fields_named_in_the_update_mask_become_changes(
    incident: Incident, paths: tuple[str, ...], actor: str
) -> None:
    request = incident_service_pb2.UpdateIncidentRequest(
        incident=conv.incident_to_proto(incident),
        update_mask=FieldMask(paths=list(paths)),
        actor=actor,
    )
    command = conv.update_incident_from_proto(over_the_wire(request))
    named = {path.removeprefix("incident.") for path in paths}
    for name in UPDATABLE:
        change = getattr(command.changes, name)
        if name in named:
            assert change == _expected_change(incident, name), name
        else:
            assert change is None, f"{name} is not in the mask {paths} but changed"
    assert command.incident_id == incident.id
    assert command.etag == incident.etag
    assert command.actor == (actor or ANONYMOUS)


@pytest.mark.parametrize(
    "mask",
    [None, FieldMask(), FieldMask(paths=[])],
    ids=["missing", "empty", "no paths"],
)
def test_an_update_without_a_mask_is_refused(mask: FieldMask | None) -> None:
    request = incident_service_pb2.UpdateIncidentRequest(incident=_incident_message())
    if mask is not None:
        request.update_mask.CopyFrom(mask)
    with pytest.raises(ValidationError) as refused:
        conv.update_incident_from_proto(request)
    assert field_names(refused.value) == ["update_mask"]


@pytest.mark.parametrize(
    "paths",
    [
        ["id"],
        ["etag"],
        ["fingerprint"],
        ["alert_count"],
        ["create_time"],
        ["resolution"],
        ["timeline"],
        ["notes"],
        ["incident.id"],
        ["Title"],
        ["title.text"],
        ["labels.team"],
        ["incident.incident.title"],
        ["incident."],
        [""],
        ["title", "etag"],
    ],
)
def test_an_update_mask_naming_a_field_that_cannot_change_is_refused(paths: list[str]) -> None:
    request = incident_service_pb2.UpdateIncidentRequest(
        incident=_incident_message(), update_mask=FieldMask(paths=paths)
    )
    with pytest.raises(ValidationError) as refused:
        conv.update_incident_from_proto(request)
    assert set(field_names(refused.value)) == {"update_mask"}
    bad = paths[-1]
    assert any(repr(bad) in v.description for v in refused.value.violations)


@pytest.mark.parametrize("name", ["severity", "type", "state"])
def test_a_masked_enum_left_unspecified_is_refused_naming_the_field(name: str) -> None:
    incident = _incident_message()
    setattr(incident, name, 0)
    request = incident_service_pb2.UpdateIncidentRequest(
        incident=incident, update_mask=FieldMask(paths=[name])
    )
    with pytest.raises(ValidationError) as refused:
        conv.update_incident_from_proto(request)
    assert field_names(refused.value) == [f"incident.{name}"]


def test_an_unmasked_enum_left_unspecified_is_ignored() -> None:
    incident = _incident_message()
    incident.severity = incident_pb2.SEVERITY_UNSPECIFIED
    request = incident_service_pb2.UpdateIncidentRequest(
        incident=incident, update_mask=FieldMask(paths=["title"])
    )
    assert conv.update_incident_from_proto(request).changes == IncidentChanges(title="latency")


# ---------------------------------------------------------------- filters

FILTER_REQUESTS = [
    pytest.param(incident_service_pb2.ListIncidentsRequest, id="ListIncidents"),
    pytest.param(incident_service_pb2.StreamIncidentsRequest, id="StreamIncidents"),
]
FILTER_ENUMS = {
    "states": incident_pb2.IncidentState,
    "severities": incident_pb2.Severity,
    "types": incident_pb2.IncidentType,
}


@pytest.mark.parametrize("request_type", FILTER_REQUESTS)
@modest
@given(
    states=st.frozensets(st.sampled_from(IncidentState)),
    severities=st.frozensets(st.sampled_from(Severity)),
    types=st.frozensets(st.sampled_from(IncidentType)),
    sources=st.frozensets(texts, max_size=4),
    assignee=texts,
    incident_id=texts,
)
def test_a_filter_keeps_every_requested_value(
    request_type: Any,
    states: frozenset[IncidentState],
    severities: frozenset[Severity],
    types: frozenset[IncidentType],
    sources: frozenset[str],
    assignee: str,
    incident_id: str,
) -> None:
    request = request_type(
        states=[conv.STATE.to_proto[s] for s in states],
        severities=[conv.SEVERITY.to_proto[s] for s in severities],
        types=[conv.TYPE.to_proto[t] for t in types],
        sources=sorted(sources),
        assignee=assignee,
    )
    parsed = conv.filter_from_proto(over_the_wire(request), incident_id)
    assert parsed.states == states
    assert parsed.severities == severities
    assert parsed.types == types
    assert parsed.sources == sources
    assert parsed.assignee == assignee
    assert parsed.incident_id == incident_id


@pytest.mark.parametrize("bad", [0, 999])
@pytest.mark.parametrize("name", sorted(FILTER_ENUMS))
@pytest.mark.parametrize("request_type", FILTER_REQUESTS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_unspecified_or_unknown_in_a_repeated_enum_filter_is_refused(
    request_type: Any, name: str, bad: int, data: st.DataObject
) -> None:
    valid = [v for v in FILTER_ENUMS[name].values() if v != 0]
    values: list[int] = list(data.draw(st.lists(st.sampled_from(valid), max_size=4), label=name))
    position = data.draw(st.integers(0, len(values)), label="position")
    values.insert(position, bad)
    request = request_type(**{name: values})
    with pytest.raises(ValidationError) as refused:
        conv.filter_from_proto(request)
    assert field_names(refused.value) == [f"{name}[{position}]"]


# ---------------------------------------------------------------- timestamps

MIN_SECONDS = -62_135_596_800
"""0001-01-01T00:00:00Z, the earliest moment a datetime holds."""
MAX_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z, the last whole second a datetime holds."""
int32s = st.integers(-(2**31), 2**31 - 1)
valid_nanos = st.integers(0, 999_999_999)


@modest
@given(
    seconds=st.integers(MAX_SECONDS + 1, 2**63 - 1) | st.integers(-(2**63), MIN_SECONDS - 1),
    nanos=valid_nanos,
)
def test_a_timestamp_beyond_the_years_a_datetime_holds_is_refused(seconds: int, nanos: int) -> None:
    with pytest.raises(ValidationError) as refused:
        conv.timestamp_from_proto(Timestamp(seconds=seconds, nanos=nanos), "alert.fire_time")
    assert field_names(refused.value) == ["alert.fire_time"]


@modest
@given(
    seconds=int64s,
    nanos=st.integers(-(2**31), -1) | st.integers(1_000_000_000, 2**31 - 1),
)
def test_a_timestamp_with_nanos_out_of_range_is_refused(seconds: int, nanos: int) -> None:
    with pytest.raises(ValidationError) as refused:
        conv.timestamp_from_proto(Timestamp(seconds=seconds, nanos=nanos), "alert.fire_time")
    assert field_names(refused.value) == ["alert.fire_time"]


@modest
@given(seconds=st.integers(MIN_SECONDS, MAX_SECONDS), nanos=valid_nanos)
def test_a_timestamp_within_range_becomes_a_utc_datetime_truncated_to_microseconds(
    seconds: int, nanos: int
) -> None:
    moment = conv.timestamp_from_proto(Timestamp(seconds=seconds, nanos=nanos), "when")
    assert moment.utcoffset() == timedelta(0)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert moment == epoch + timedelta(seconds=seconds, microseconds=nanos // 1000)


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(MAX_SECONDS + 1, 0), (MIN_SECONDS - 1, 0), (2**63 - 1, 0), (0, -1), (0, 1_000_000_000)],
)
def test_a_message_with_a_timestamp_out_of_range_is_refused_naming_the_field(
    seconds: int, nanos: int
) -> None:
    alert = _alert_message()
    alert.fire_time.CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
    with pytest.raises(ValidationError) as refused:
        conv.alert_from_proto(alert)
    assert field_names(refused.value) == ["alert.fire_time"]

    incident = _incident_message()
    incident.update_time.CopyFrom(Timestamp(seconds=seconds, nanos=nanos))
    with pytest.raises(ValidationError) as refused:
        conv.incident_from_proto(incident)
    assert field_names(refused.value) == ["incident.update_time"]


# ---------------------------------------------------------------- module events

SINCE = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
KIND_MESSAGES = [
    (
        integrations_pb2.ModuleEvent(
            anomaly=integrations_pb2.AnomalyEvent(
                model="gpt-4o",
                endpoint="/chat",
                metric=integrations_pb2.ANOMALY_METRIC_COST,
                observed_value=3.5,
                baseline_value=1.0,
                threshold=2.0,
                anomaly_score=0.8,
            )
        ),
        AnomalyEvent("gpt-4o", AnomalyMetric.COST, "/chat", 3.5, 1.0, 2.0, 0.8),
    ),
    (
        integrations_pb2.ModuleEvent(
            security=integrations_pb2.SecurityEvent(
                category=integrations_pb2.THREAT_CATEGORY_JAILBREAK,
                confidence=0.7,
                blocked=True,
                model="gpt-4o",
                application="crm",
                sample_ref="trace/1",
            )
        ),
        SecurityEvent(ThreatCategory.JAILBREAK, 0.7, True, "gpt-4o", "crm", "trace/1"),
    ),
    (
        integrations_pb2.ModuleEvent(
            edge_agent=integrations_pb2.EdgeAgentEvent(
                agent_id="edge-17",
                offline_since=conv.timestamp_to_proto(SINCE),
                queue_depth=12,
                cpu_utilization=0.5,
                memory_utilization=0.25,
                inference_failure_rate=0.125,
            )
        ),
        EdgeAgentEvent("edge-17", SINCE, 12, 0.5, 0.25, 0.125),
    ),
    (
        integrations_pb2.ModuleEvent(
            governance=integrations_pb2.GovernanceEvent(
                policy_id="p-1",
                framework="GDPR",
                violation="kept 40 days",
                model="gpt-4o",
                dataset="logs",
            )
        ),
        GovernanceEvent("p-1", "GDPR", "kept 40 days", "gpt-4o", "logs"),
    ),
]


@pytest.mark.parametrize(
    ("message", "kind"), KIND_MESSAGES, ids=[type(kind).name for _, kind in KIND_MESSAGES]
)
def test_every_kind_of_module_event_converts_from_its_message_field_by_field(
    message: integrations_pb2.ModuleEvent, kind: EventKind
) -> None:
    message.id, message.source = "e-1", "mod"
    event = conv.module_event_from_proto(over_the_wire(message))
    assert event.kind == kind
    assert (event.id, event.source) == ("e-1", "mod")


def test_the_conversion_examples_cover_every_kind_of_module_event() -> None:
    assert {type(kind) for _, kind in KIND_MESSAGES} == set(KINDS.values())


def test_a_kind_of_module_event_that_disagrees_with_the_proto_fails_loudly() -> None:
    with pytest.raises(RuntimeError, match="AnomalyEvent and SecurityEvent have different fields"):
        conv.kind_fields({**KINDS, "anomaly": SecurityEvent})
    with pytest.raises(RuntimeError, match=r"ModuleEvent\.kind holds"):
        conv.kind_fields({name: kind for name, kind in KINDS.items() if name != "governance"})


def test_a_module_event_field_that_does_not_convert_is_named_with_the_other_bad_fields() -> None:
    message = integrations_pb2.ModuleEvent(
        source="edge",
        edge_agent=integrations_pb2.EdgeAgentEvent(
            agent_id="", offline_since=Timestamp(seconds=2**62)
        ),
        status=999,  # type: ignore[arg-type]
    )
    with pytest.raises(ValidationError) as refused:
        conv.module_event_from_proto(message, prefix="events[3].")
    assert field_names(refused.value) == [
        "events[3].status",
        "events[3].edge_agent.offline_since",
        "events[3].id",
        "events[3].edge_agent.agent_id",
    ]


def test_a_module_event_that_converts_is_left_for_the_service_to_judge() -> None:
    event = conv.module_event_from_proto(integrations_pb2.ModuleEvent(source=" "))
    assert (event.id, event.source, event.kind) == ("", " ", None)


def test_a_new_incident_that_converts_is_left_for_the_service_to_judge() -> None:
    request = incident_service_pb2.CreateIncidentRequest(incident=_incident_message())
    request.incident.title = ""
    assert conv.create_incident_from_proto(request).title == ""


def test_a_new_incident_with_a_bad_enum_also_names_every_field_the_rules_refuse() -> None:
    request = incident_service_pb2.CreateIncidentRequest(
        incident=incident_pb2.Incident(
            title="t",
            source="s",
            description="x" * 10_000,
            assignees=["ana", "ana"],
            type=incident_pb2.INCIDENT_TYPE_DATA,
        ),
        actor="a\x00",
    )
    with pytest.raises(ValidationError) as refused:
        conv.create_incident_from_proto(request)
    assert field_names(refused.value) == [
        "incident.severity",
        "incident.description",
        "incident.assignees",
        "actor",
    ]
