"""The repositories of both SQL backends, written once.

Each runs the shared statements on a `Database` (sqlite3's connection, or
PostgreSQL's transaction) and calls a hook, a method that does nothing here,
where a backend genuinely differs: SQLite's writer consults and updates its
cache; PostgreSQL takes advisory locks, stages timeline events to number at
commit, and remembers how to undo a run that must be tried again.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from incident_manager.adapters.sql.rows import (
    alert_values,
    event_from_row,
    filter_values,
    incident_from_row,
    incident_row,
    note_from_row,
    note_values,
    received_alert_from_row,
    request_from_row,
    request_values,
)
from incident_manager.adapters.sql.statements import Statements
from incident_manager.domain.errors import ConcurrentModification
from incident_manager.domain.model import (
    Incident,
    IncidentEvent,
    IncidentState,
    Note,
    ReceivedAlert,
    RequestRecord,
    Severity,
    TimelineEvent,
)
from incident_manager.domain.query import (
    NOTES_LIMIT,
    TIMELINE_LIMIT,
    IncidentFilter,
    IncidentPage,
    IncidentQuery,
    SortKey,
    micros,
)
from incident_manager.service.ports import AlertLog, EventLog, IncidentRepository, RequestLog

SORT_COLUMNS = {
    SortKey.CREATE_TIME: ("create_time", "id"),
    SortKey.UPDATE_TIME: ("update_time", "id"),
    SortKey.SEVERITY: ("severity", "create_time", "id"),
}
"""The columns of each sort order, as its index and the page cursor list them."""


class Cursor(Protocol):
    """What the repositories read from an executed statement (sqlite3's and psycopg's cursors)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Database(Protocol):
    """Where the repositories run statements: an sqlite3 connection, a PostgreSQL transaction."""

    def execute(self, query: str, params: Sequence[Any], /) -> Cursor: ...

    def executemany(self, query: str, params: list[tuple[Any, ...]], /) -> object: ...


@dataclass
class _Where:
    """A filter as SQL: the tests of the count, those of the page, and their parameters."""

    count: list[str] = field(default_factory=list)
    page: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, test: str, params: list[Any], page_test: str | None = None) -> None:
        self.count.append(test)
        self.page.append(test if page_test is None else page_test)
        self.params.extend(params)


def _where(tests: list[str]) -> str:
    return f" WHERE {' AND '.join(tests)}" if tests else ""


class SqlIncidents(IncidentRepository):
    """Incidents, their timeline events and notes, in the tables both schemas share."""

    def __init__(self, db: Database, sql: Statements) -> None:
        self._db = db
        self._sql = sql

    # -- hooks: a backend overrides what it does differently ------------------

    def _read(self, incident: Incident) -> None:
        """An incident was just read from its row."""

    def _timeline(self, incident: Incident, stored: list[TimelineEvent]) -> list[TimelineEvent]:
        """The incident's latest timeline, from its latest stored events."""
        return stored

    def _writing(self, incident: Incident) -> None:
        """The incident is about to be written."""

    def _refused(self, incident: Incident) -> ConcurrentModification:
        """The error for a save that found another version than the one read."""
        return ConcurrentModification(incident.id)

    @abc.abstractmethod
    def _store_events(self, pending: list[IncidentEvent]) -> None:
        """Store (or stage, to store at commit) an incident's new timeline events."""

    def _written(self, incident: Incident) -> None:
        """The incident, its events and notes were just written."""

    # -- the repository -------------------------------------------------------

    def get(self, incident_id: str, *, with_history: bool = False) -> Incident | None:
        row = self._db.execute(self._sql.incident, (incident_id,)).fetchone()
        if row is None:
            return None
        incident = incident_from_row(row)
        self._read(incident)
        if with_history:
            self._load_history(incident)
        return incident

    def _load_history(self, incident: Incident) -> None:
        rows = self._db.execute(self._sql.timeline, (incident.id, TIMELINE_LIMIT)).fetchall()
        incident.timeline = self._timeline(incident, [event_from_row(r).event for r in rows[::-1]])
        rows = self._db.execute(self._sql.notes, (incident.id, NOTES_LIMIT)).fetchall()
        incident.notes = [note_from_row(r) for r in rows[::-1]]

    def find_mergeable(self, fingerprint: str, last_alert_since: datetime) -> Incident | None:
        incident = self._newest_active(fingerprint, micros(last_alert_since))
        if incident is not None:
            self._read(incident)
        return incident

    def _newest_active(self, fingerprint: str, last_alert_since: int) -> Incident | None:
        """The active incident with the fingerprint and the latest last alert, if that is
        at or after `last_alert_since` (microseconds)."""
        row = self._db.execute(self._sql.newest_active, (fingerprint, last_alert_since)).fetchone()
        return None if row is None else incident_from_row(row)

    def add(self, incident: Incident) -> None:
        self._writing(incident)
        self._db.execute(self._sql.insert_incident, incident_row(incident))
        self._store_pending(incident)
        self._written(incident)

    def save(self, incident: Incident) -> None:
        self._writing(incident)
        if self._update(incident).rowcount != 1:
            raise self._refused(incident)
        self._store_pending(incident)
        self._written(incident)

    def add_all(self, incidents: Sequence[Incident]) -> None:
        """Every incident row with one statement, then every event with one (a batch's)."""
        if not incidents:
            return
        for incident in incidents:
            self._writing(incident)
        self._db.executemany(self._sql.insert_incident, [incident_row(i) for i in incidents])
        self._store_pending(*incidents)
        for incident in incidents:
            self._written(incident)

    def save_all(self, incidents: Sequence[Incident]) -> None:
        if not incidents:
            return
        for incident in incidents:
            self._writing(incident)
        self._update_all(incidents)
        self._store_pending(*incidents)
        for incident in incidents:
            self._written(incident)

    def _update(self, incident: Incident) -> Cursor:
        """Write the incident's row if it is still at the version read; the cursor says if so."""
        values = incident_row(incident)[1:]  # all but the id, which comes last
        return self._db.execute(
            self._sql.update_incident, (*values, incident.id, incident.loaded_version)
        )

    def _update_all(self, incidents: Sequence[Incident]) -> None:
        """`_update` each; raise the refusal of the first one storage no longer holds."""
        for incident in incidents:
            if self._update(incident).rowcount != 1:
                raise self._refused(incident)

    def _store_pending(self, *incidents: Incident) -> None:
        """The incidents' new events (in order) and notes; they are then as stored."""
        if len(incidents) == 1:
            self._store_events(incidents[0].pending_events)
        else:
            self._store_events([e for i in incidents for e in i.pending_events])
        notes = [note_values(i.id, n) for i in incidents for n in i.pending_notes]
        if notes:
            self._db.executemany(self._sql.insert_note, notes)
        for incident in incidents:
            incident.loaded_version = incident.version
            incident.pending_events = []
            incident.pending_notes = []

    def get_note(self, note_id: str) -> Note | None:
        row = self._db.execute(self._sql.note, (note_id,)).fetchone()
        return None if row is None else note_from_row(row)

    def count_active(self) -> dict[tuple[Severity, IncidentState], int]:
        rows = self._db.execute(self._sql.count_active, ()).fetchall()
        return {
            (Severity(severity), IncidentState(state)): int(count)
            for state, severity, count in rows
        }

    def _filter(self, query_filter: IncidentFilter) -> _Where:
        """The filter, written twice: once for the count, once for the page.

        The count can read the covering index on (state, severity, type,
        source); the page should read the index of its sort order and stop
        after one page, which the dialect's page hint makes sure of where a
        planner would rather pick a filter column's index and sort every match.
        """
        dialect = self._sql.dialect
        where = _Where()
        for column, values in filter_values(query_filter):
            test, params = dialect.one_of(column, values)
            where.add(test, params, page_test=dialect.page_hint + test)
        if query_filter.assignee:
            where.add(dialect.assignee_test, [query_filter.assignee])
        if query_filter.incident_id:
            where.add(f"id = {dialect.mark}", [query_filter.incident_id])
        return where

    def _page(self, query: IncidentQuery, where: _Where) -> list[Any]:
        """The rows of the page, and one more if there is a next page (keyset pagination)."""
        dialect = self._sql.dialect
        columns = SORT_COLUMNS[query.ordering.key]
        tests, params = list(where.page), list(where.params)
        if query.after is not None:
            comparison = "<" if query.ordering.descending else ">"
            tests.append(f"({', '.join(columns)}) {comparison} ({dialect.marks(len(columns))})")
            params.extend(query.after)
        direction = "DESC" if query.ordering.descending else "ASC"
        order = ", ".join(f"{c} {direction}" for c in columns)
        return self._db.execute(
            f"SELECT {self._sql.incident_columns} FROM incidents{_where(tests)} "
            f"ORDER BY {order} LIMIT {dialect.mark}",
            (*params, query.page_size + 1),
        ).fetchall()

    def list(self, query: IncidentQuery) -> IncidentPage:
        where = self._filter(query.filter)
        row = self._db.execute(
            f"SELECT COUNT(*) FROM incidents{_where(where.count)}", where.params
        ).fetchone()
        rows = self._page(query, where)
        incidents = [incident_from_row(r) for r in rows[: query.page_size]]
        if query.with_history:
            for incident in incidents:
                self._load_history(incident)
        return IncidentPage(
            incidents=incidents, total_size=int(row[0]), has_more=len(rows) > query.page_size
        )


class SqlAlerts(AlertLog):
    """Every accepted alert, keyed by (source, alert id)."""

    def __init__(self, db: Database, sql: Statements) -> None:
        self._db = db
        self._sql = sql

    def _writing(self) -> None:
        """Hook: an alert is about to be written."""

    def get(self, source: str, alert_id: str) -> ReceivedAlert | None:
        row = self._db.execute(self._sql.alert, (source, alert_id)).fetchone()
        return None if row is None else received_alert_from_row(row)

    def add(self, received: ReceivedAlert) -> None:
        self._writing()
        self._db.execute(self._sql.insert_alert, alert_values(received))

    def add_all(self, received: Sequence[ReceivedAlert]) -> None:
        if not received:
            return
        self._writing()
        self._db.executemany(self._sql.insert_alert, [alert_values(r) for r in received])

    def clear(self, source: str, alert_id: str, when: datetime) -> None:
        self._writing()
        self._db.execute(self._sql.clear_alert, (micros(when), source, alert_id))

    def open_count(self, incident_id: str) -> int:
        return int(self._db.execute(self._sql.open_alerts, (incident_id,)).fetchone()[0])

    def latest(self, incident_id: str) -> tuple[str, str] | None:
        row = self._db.execute(self._sql.latest_alert, (incident_id,)).fetchone()
        return None if row is None else (row[0], row[1])


class SqlRequests(RequestLog):
    """Requests that carried a client-chosen request_id."""

    def __init__(self, db: Database, sql: Statements) -> None:
        self._db = db
        self._sql = sql

    def _writing(self) -> None:
        """Hook: a request is about to be written."""

    def get(self, request_id: str) -> RequestRecord | None:
        row = self._db.execute(self._sql.request, (request_id,)).fetchone()
        return None if row is None else request_from_row(row)

    def add(self, request_id: str, record: RequestRecord) -> None:
        self._writing()
        self._db.execute(self._sql.insert_request, request_values(request_id, record))


class SqlEvents(EventLog):
    """Stored timeline events in sequence order; each backend knows its last sequence."""

    def __init__(self, db: Database, sql: Statements) -> None:
        self._db = db
        self._sql = sql

    def after(self, sequence: int, limit: int) -> list[IncidentEvent]:
        rows = self._db.execute(self._sql.events_after, (sequence, limit)).fetchall()
        return [event_from_row(r) for r in rows]
