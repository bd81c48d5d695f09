"""Every statement the shared repositories run, built once per dialect from the column lists."""

from __future__ import annotations

from collections.abc import Sequence

from incident_manager.adapters.sql.dialect import Dialect
from incident_manager.adapters.sql.rows import (
    ALERT_COLUMNS,
    ALERT_VALUE_COLUMNS,
    EVENT_COLUMNS,
    INCIDENT_COLUMNS,
    NOTE_COLUMNS,
    NOTE_VALUE_COLUMNS,
    REQUEST_COLUMNS,
    REQUEST_VALUE_COLUMNS,
    column_list,
)
from incident_manager.domain.model import IncidentState

ACTIVE = f"state < {int(IncidentState.RESOLVED)}"
"""Active incidents, written as the partial index `incidents_active_by_fingerprint` says it
(`state < 5`), so that the index applies."""


def insert(dialect: Dialect, table: str, columns: Sequence[str]) -> str:
    """An INSERT of one row of `columns`."""
    return f"INSERT INTO {table} ({column_list(columns)}) VALUES ({dialect.marks(len(columns))})"


def update_incident(dialect: Dialect, columns: Sequence[str]) -> str:
    """An UPDATE of `columns` of the incident with an id and the version it was read at."""
    assignments = ", ".join(f"{column} = {dialect.mark}" for column in columns)
    return (
        f"UPDATE incidents SET {assignments} WHERE id = {dialect.mark} AND version = {dialect.mark}"
    )


class Statements:
    """The shared statements in one dialect; the parameters follow each statement's marks."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        m = dialect.mark
        incident, event = column_list(INCIDENT_COLUMNS), column_list(EVENT_COLUMNS)
        note = column_list(NOTE_COLUMNS)
        self.incident_columns = incident
        self.incident = f"SELECT {incident} FROM incidents WHERE id = {m}"
        self.newest_active = (
            f"SELECT {incident} FROM incidents "
            f"WHERE fingerprint = {m} AND {ACTIVE} AND last_alert_time >= {m} "
            "ORDER BY last_alert_time DESC, id DESC LIMIT 1"
        )
        """The active incident with the fingerprint whose last alert is the latest, if that
        is at or after a time; parameters: the fingerprint, the time."""
        self.insert_incident = insert(dialect, "incidents", INCIDENT_COLUMNS)
        self.update_incident = update_incident(dialect, INCIDENT_COLUMNS[1:])
        """Every column but the id; parameters: the values, the id, the version read."""
        self.count_active = (
            f"SELECT state, severity, COUNT(*) FROM incidents WHERE {ACTIVE} "
            "GROUP BY state, severity"
        )
        """In the order of the index on (state, severity, ...), which answers it alone."""
        self.timeline = (
            f"SELECT {event} FROM events WHERE incident_id = {m} ORDER BY sequence DESC LIMIT {m}"
        )
        self.notes = (
            f"SELECT {note} FROM notes WHERE incident_id = {m} "
            f"ORDER BY {dialect.note_order} LIMIT {m}"
        )
        self.note = f"SELECT {note} FROM notes WHERE id = {m}"
        self.insert_note = insert(dialect, "notes", NOTE_VALUE_COLUMNS)
        self.events_after = (
            f"SELECT {event} FROM events WHERE sequence > {m} ORDER BY sequence LIMIT {m}"
        )
        self.alert = (
            f"SELECT {column_list(ALERT_COLUMNS)} FROM alerts WHERE source = {m} AND alert_id = {m}"
        )
        self.insert_alert = insert(dialect, "alerts", ALERT_VALUE_COLUMNS)
        self.clear_alert = (
            f"UPDATE alerts SET cleared_time = {m} WHERE source = {m} AND alert_id = {m}"
        )
        self.open_alerts = (
            f"SELECT COUNT(*) FROM alerts WHERE incident_id = {m} AND cleared_time IS NULL"
        )
        self.latest_alert = (
            f"SELECT source, alert_id FROM alerts WHERE incident_id = {m} "
            "ORDER BY receive_time DESC, alert_id DESC LIMIT 1"
        )
        self.request = f"SELECT {column_list(REQUEST_COLUMNS)} FROM requests WHERE request_id = {m}"
        self.insert_request = insert(dialect, "requests", REQUEST_VALUE_COLUMNS)
