"""How domain objects are stored as rows: one encoding that every SQL backend shares.

Times are integer microseconds since the epoch; lists, maps and the
resolution are compact JSON text (written and read with orjson, several
times faster than `json`; the text is the same JSON, so rows written before
read as they always did); enums are their integer values. Each
column list names, in order, the values its row function reads or writes;
statements and placeholders are derived from these lists, never counted by
hand.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import orjson

from incident_manager.domain.model import (
    AckStatus,
    Alert,
    AlertStatus,
    EventType,
    Incident,
    IncidentEvent,
    IncidentState,
    IncidentType,
    Note,
    ReceivedAlert,
    RequestRecord,
    Resolution,
    ResolutionMethod,
    Severity,
    TimelineEvent,
)
from incident_manager.domain.query import IncidentFilter, from_micros, micros

INCIDENT_COLUMNS = (
    "id", "title", "description", "severity", "type", "state", "source", "affected_resources",
    "labels", "assignees", "fingerprint", "alert_count", "create_time", "update_time",
    "resolution", "version", "timeline_size", "notes_size", "last_alert_time", "acknowledged_by",
    "acknowledge_time",
)  # fmt: skip
"""What `incident_row` writes and `incident_from_row` reads, in order; the id first."""
EVENT_COLUMNS = (
    "sequence", "incident_id", "type", "actor", "message", "details", "create_time", "title",
    "state", "severity", "incident_type", "source", "assignees", "alert_count",
)  # fmt: skip
"""What `event_from_row` reads, in order."""
EVENT_VALUE_COLUMNS = EVENT_COLUMNS[1:]
"""What `event_values` writes: every event column but the sequence, which storage assigns."""
ALERT_COLUMNS = ("incident_id", "status", "fingerprint", "receive_time", "payload", "cleared_time")
"""What `received_alert_from_row` reads, in order."""
ALERT_VALUE_COLUMNS = (
    "source", "alert_id", "incident_id", "status", "fingerprint", "receive_time", "payload",
)  # fmt: skip
"""What `alert_values` writes, in order (an alert is stored before it can clear)."""
NOTE_COLUMNS = ("id", "author", "content", "create_time")
"""What `note_from_row` reads, in order."""
NOTE_VALUE_COLUMNS = ("id", "incident_id", "author", "content", "create_time")
"""What `note_values` writes, in order."""
REQUEST_COLUMNS = ("kind", "incident_id", "note_id")
"""What `request_from_row` reads, in order."""
REQUEST_VALUE_COLUMNS = ("request_id", *REQUEST_COLUMNS)
"""What `request_values` writes, in order."""


def column_list(columns: Sequence[str]) -> str:
    """The columns as SQL writes them in a SELECT or INSERT: `a, b, c`."""
    return ", ".join(columns)


def dumps(value: object) -> str:
    """Compact JSON text, as `json.dumps(value, ensure_ascii=False, separators=(",", ":"))`."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        # What orjson refuses and json takes: a lone surrogate, an integer
        # beyond 64 bits. Neither comes from protobuf; kept for other callers.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    """The value of stored JSON text, whichever encoder wrote it."""
    return orjson.loads(text)


def resolution_to_json(resolution: Resolution | None) -> str | None:
    if resolution is None:
        return None
    return dumps(
        {
            "method": resolution.method.name,
            "root_cause": resolution.root_cause,
            "notes": resolution.notes,
            "resolved_by": resolution.resolved_by,
            "resolve_time": micros(resolution.resolve_time),
            "time_to_resolve": resolution.time_to_resolve // timedelta(microseconds=1),
        }
    )


def resolution_from_json(text: str | None) -> Resolution | None:
    if text is None:
        return None
    data = loads(text)
    return Resolution(
        method=ResolutionMethod[data["method"]],
        root_cause=data["root_cause"],
        notes=data["notes"],
        resolved_by=data["resolved_by"],
        resolve_time=from_micros(data["resolve_time"]),
        time_to_resolve=timedelta(microseconds=data["time_to_resolve"]),
    )


def incident_row(incident: Incident) -> tuple[Any, ...]:
    return (
        incident.id,
        incident.title,
        incident.description,
        int(incident.severity),
        int(incident.type),
        int(incident.state),
        incident.source,
        dumps(incident.affected_resources),
        dumps(incident.labels),
        dumps(incident.assignees),
        incident.fingerprint,
        incident.alert_count,
        micros(incident.create_time),
        micros(incident.update_time),
        resolution_to_json(incident.resolution),
        incident.version,
        incident.timeline_size,
        incident.notes_size,
        micros(incident.last_alert_time),
        incident.acknowledged_by,
        None if incident.acknowledge_time is None else micros(incident.acknowledge_time),
    )


def incident_from_row(row: Sequence[Any]) -> Incident:
    return Incident(
        id=row[0],
        title=row[1],
        description=row[2],
        severity=Severity(row[3]),
        type=IncidentType(row[4]),
        state=IncidentState(row[5]),
        source=row[6],
        affected_resources=loads(row[7]),
        labels=loads(row[8]),
        assignees=loads(row[9]),
        fingerprint=row[10],
        alert_count=row[11],
        create_time=from_micros(row[12]),
        update_time=from_micros(row[13]),
        resolution=resolution_from_json(row[14]),
        version=row[15],
        loaded_version=row[15],
        timeline_size=row[16],
        notes_size=row[17],
        last_alert_time=from_micros(row[18]),
        acknowledged_by=row[19],
        acknowledge_time=None if row[20] is None else from_micros(row[20]),
    )


def event_from_row(row: Sequence[Any]) -> IncidentEvent:
    return IncidentEvent(
        incident_id=row[1],
        event=TimelineEvent(
            sequence=row[0],
            type=EventType(row[2]),
            actor=row[3],
            message=row[4],
            details=loads(row[5]),
            create_time=from_micros(row[6]),
        ),
        title=row[7],
        state=IncidentState(row[8]),
        severity=Severity(row[9]),
        type=IncidentType(row[10]),
        source=row[11],
        assignees=tuple(loads(row[12])),
        alert_count=row[13],
    )


ALERT_PAYLOAD_FORMAT = 2
"""The first item of a stored alert's payload array. Format 1, older rows, is an object
with named fields and enum names; `alert_from_json` reads both."""


def alert_to_json(alert: Alert) -> str:
    """The alert as a compact JSON array: its fields in a fixed order, enums as numbers.

    Half the bytes of the named-field object rows used to hold, and a third of
    the time to write (every alert of a storm is stored).
    """
    labels, annotations = alert.labels, alert.annotations
    resources = alert.affected_resources
    return dumps(
        [
            ALERT_PAYLOAD_FORMAT,
            alert.id,
            alert.source,
            alert.title,
            alert.description,
            int(alert.severity),
            int(alert.type),
            labels if type(labels) is dict else dict(labels),
            annotations if type(annotations) is dict else dict(annotations),
            resources if type(resources) in (tuple, list) else list(resources),
            alert.runbook_url,
            None if alert.fire_time is None else micros(alert.fire_time),
            alert.dedup_key,
            int(alert.status),
            None if alert.end_time is None else micros(alert.end_time),
        ]
    )


def alert_from_json(text: str) -> Alert:
    """The stored alert, from either format."""
    data = loads(text)
    if isinstance(data, list):
        (_, alert_id, source, title, description, severity, kind, labels, annotations,
         resources, runbook_url, fire_time, dedup_key, status, end_time) = data  # fmt: skip
        return Alert(
            id=alert_id,
            source=source,
            title=title,
            description=description,
            severity=Severity(severity),
            type=IncidentType(kind),
            labels=labels,
            annotations=annotations,
            affected_resources=tuple(resources),
            runbook_url=runbook_url,
            fire_time=None if fire_time is None else from_micros(fire_time),
            dedup_key=dedup_key,
            status=AlertStatus(status),
            end_time=None if end_time is None else from_micros(end_time),
        )
    return Alert(
        id=data["id"],
        source=data["source"],
        title=data["title"],
        description=data["description"],
        severity=Severity[data["severity"]],
        type=IncidentType[data["type"]],
        labels=data["labels"],
        annotations=data["annotations"],
        affected_resources=tuple(data["affected_resources"]),
        runbook_url=data["runbook_url"],
        fire_time=None if data["fire_time"] is None else from_micros(data["fire_time"]),
        dedup_key=data["dedup_key"],
        status=AlertStatus[data.get("status", "FIRING")],
        end_time=None if data.get("end_time") is None else from_micros(data["end_time"]),
    )


def received_alert_from_row(row: Sequence[Any]) -> ReceivedAlert:
    return ReceivedAlert(
        alert=alert_from_json(row[4]),
        incident_id=row[0],
        status=AckStatus(row[1]),
        fingerprint=row[2],
        receive_time=from_micros(row[3]),
        cleared_time=None if row[5] is None else from_micros(row[5]),
    )


def event_values(pending: IncidentEvent) -> tuple[Any, ...]:
    """The values of EVENT_VALUE_COLUMNS, for an INSERT."""
    event = pending.event
    return (
        pending.incident_id,
        int(event.type),
        event.actor,
        event.message,
        dumps(dict(event.details)),
        micros(event.create_time),
        pending.title,
        int(pending.state),
        int(pending.severity),
        int(pending.type),
        pending.source,
        dumps(list(pending.assignees)),
        pending.alert_count,
    )


def note_from_row(row: Sequence[Any]) -> Note:
    return Note(id=row[0], author=row[1], content=row[2], create_time=from_micros(row[3]))


def note_values(incident_id: str, note: Note) -> tuple[Any, ...]:
    """The values of NOTE_VALUE_COLUMNS."""
    return (note.id, incident_id, note.author, note.content, micros(note.create_time))


def alert_values(received: ReceivedAlert) -> tuple[Any, ...]:
    """The values of ALERT_VALUE_COLUMNS."""
    return (
        received.alert.source,
        received.alert.id,
        received.incident_id,
        int(received.status),
        received.fingerprint,
        micros(received.receive_time),
        alert_to_json(received.alert),
    )


def request_from_row(row: Sequence[Any]) -> RequestRecord:
    return RequestRecord(kind=row[0], incident_id=row[1], note_id=row[2])


def request_values(request_id: str, record: RequestRecord) -> tuple[Any, ...]:
    """The values of REQUEST_VALUE_COLUMNS."""
    return (request_id, record.kind, record.incident_id, record.note_id)


def filter_values(query_filter: IncidentFilter) -> list[tuple[str, list[Any]]]:
    """(column, accepted values) for each kind of filter that is set; values are ORed."""
    f = query_filter
    kinds: list[tuple[str, list[Any]]] = [
        ("state", sorted(int(v) for v in f.states)),
        ("severity", sorted(int(v) for v in f.severities)),
        ("type", sorted(int(v) for v in f.types)),
        ("source", sorted(f.sources)),
    ]
    return [(column, values) for column, values in kinds if values]
