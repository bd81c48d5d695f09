"""What PostgreSQL's repositories do differently: lock, stage events, make runs repeatable.

The shared repositories (adapters/sql) do everything else. Here a read that
decides dedup or a retry first takes the advisory lock of what it decides;
a write first tells the transaction, so a run that must be tried again can
be undone; timeline events are staged and numbered just before COMMIT.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from incident_manager.adapters.postgres.transaction import RaceLost, Transaction, lock_key
from incident_manager.adapters.sql.dialect import Dialect
from incident_manager.adapters.sql.paging import SqlPaging
from incident_manager.adapters.sql.repositories import (
    SqlAlerts,
    SqlEvents,
    SqlIncidents,
    SqlRequests,
)
from incident_manager.adapters.sql.rows import (
    ALERT_COLUMNS,
    EVENT_COLUMNS,
    EVENT_VALUE_COLUMNS,
    column_list,
    event_values,
    incident_from_row,
    received_alert_from_row,
)
from incident_manager.adapters.sql.statements import Statements
from incident_manager.domain.errors import ConcurrentModification
from incident_manager.domain.model import (
    Incident,
    IncidentEvent,
    ReceivedAlert,
    RequestRecord,
    TimelineEvent,
)
from incident_manager.domain.query import TIMELINE_LIMIT, micros
from incident_manager.service.ports import UnitOfWork

DIALECT = Dialect(
    name="postgresql",
    mark="%s",
    expands_lists=False,
    assignee_test="assignees::jsonb ? %s",
    # `position` is a BIGSERIAL: notes written in the same microsecond keep their order.
    note_order="create_time DESC, position DESC",
)
SQL = Statements(DIALECT)
CHANNEL = "incident_manager_events"
"""NOTIFY channel: the payload is the last sequence of the commit."""
ONE_STATEMENT_EVENTS = 1000
"""Events stored with one statement at most (PostgreSQL takes 65,535 parameters)."""
LOCKED_ALERT = f"SELECT {column_list(ALERT_COLUMNS)} FROM im_locked_alert(%s, %s, %s, %s)"
"""SQL.alert after taking a lock, in one statement (schema.py); parameters: the key,
whether to wait, then SQL.alert's."""
LOCKED_NEWEST_ACTIVE = f"SELECT {SQL.incident_columns} FROM im_locked_newest_active(%s, %s, %s, %s)"
"""SQL.newest_active after taking a lock, in one statement (schema.py)."""


class PostgresIncidents(SqlIncidents):
    """Incidents; dedup decided under the fingerprint's lock, events numbered at commit."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__(tx, SQL)
        self._tx = tx

    def find_mergeable(self, fingerprint: str, last_alert_since: datetime) -> Incident | None:
        row = self._tx.read_locked(
            lock_key("fingerprint", fingerprint),
            LOCKED_NEWEST_ACTIVE,
            SQL.newest_active,
            (fingerprint, micros(last_alert_since)),
        )
        if row is None:
            return None
        incident = incident_from_row(row)
        self._read(incident)
        return incident

    def _read(self, incident: Incident) -> None:
        self._tx.loaded.add(incident.id)

    def _timeline(self, incident: Incident, stored: list[TimelineEvent]) -> list[TimelineEvent]:
        staged = [e.event for e in self._tx.staged if e.incident_id == incident.id]
        if staged:
            self._tx.histories.append(incident)  # numbered at commit
        return (stored + staged)[-TIMELINE_LIMIT:]

    def _writing(self, incident: Incident) -> None:
        self._tx.writing(incident)

    def _refused(self, incident: Incident) -> ConcurrentModification:
        if incident.id in self._tx.loaded:
            return RaceLost(incident.id)
        return ConcurrentModification(incident.id)

    def _store_events(self, pending: list[IncidentEvent]) -> None:
        staged = self._tx.staged
        for event in pending:
            staged.append(event.with_sequence(-(len(staged) + 1)))


class PostgresAlerts(SqlAlerts):
    """Alerts; a lookup takes the lock of the alert's key first."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__(tx, SQL)
        self._tx = tx

    def _writing(self) -> None:
        self._tx.writing()

    def get(self, source: str, alert_id: str) -> ReceivedAlert | None:
        row = self._tx.read_locked(
            lock_key("alert", source, alert_id), LOCKED_ALERT, SQL.alert, (source, alert_id)
        )
        return None if row is None else received_alert_from_row(row)


class PostgresRequests(SqlRequests):
    """Requests; a lookup takes the lock of the request id first."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__(tx, SQL)
        self._tx = tx

    def _writing(self) -> None:
        self._tx.writing()

    def get(self, request_id: str) -> RequestRecord | None:
        self._tx.lock(lock_key("request", request_id))
        return super().get(request_id)


class PostgresEvents(SqlEvents):
    """Committed events only: a write unit of work numbers its own at commit."""

    def last_sequence(self) -> int:
        # Commits happen in sequence order, so the counter is the greatest
        # committed sequence this transaction can see.
        row = self._db.execute("SELECT last FROM event_counter", ()).fetchone()
        return int(row[0]) if row else 0


class PostgresUnitOfWork(UnitOfWork):
    """One run of a unit of work in one transaction; the storage commits it after the work."""

    def __init__(self, tx: Transaction) -> None:
        super().__init__()
        self.tx = tx
        self.committed = False
        self.incidents = PostgresIncidents(tx)
        self.alerts = PostgresAlerts(tx)
        self.events = PostgresEvents(tx, SQL)
        self.requests = PostgresRequests(tx)
        # Due rows are locked with SKIP LOCKED, so replicas claim different ones; an
        # escalation changed by another replica since it was read reruns the unit.
        # A read-only transaction may not lock rows (PostgreSQL refuses FOR UPDATE
        # there), and it changes nothing the lock would protect.
        self.paging = SqlPaging(
            functools.partial(_paging_statement, tx),
            DIALECT,
            lock_rows=" FOR UPDATE SKIP LOCKED" if tx.write else "",
            race=RaceLost,
        )

    def commit(self) -> None:
        if not self.tx.write:
            raise RuntimeError("a read unit of work cannot commit")
        self.committed = True

    def rollback(self) -> None:
        return None  # the storage rolls back unless the work committed and returned


def _paging_statement(tx: Transaction, query: str, params: Sequence[Any]) -> Any:
    if not query.startswith("SELECT"):
        tx.writing()
    return tx.execute(query, params)


def number_and_store(tx: Transaction) -> list[IncidentEvent]:
    """Give the staged events their sequences and store them; just before COMMIT.

    The counter's row stays locked until COMMIT: the next writer numbers its
    events only after this transaction is visible, so commit order is
    sequence order.
    """
    if not tx.staged:
        return []
    count = len(tx.staged)
    if count <= ONE_STATEMENT_EVENTS:
        # Number, insert and notify in one statement: the counter's lock is
        # then held for one round trip and the COMMIT.
        row = tx.execute(
            _store_events_sql(count),
            [count, CHANNEL, count, *(v for e in tx.staged for v in event_values(e))],
        ).fetchone()
        assert row is not None
        first = int(row[0])
        events = [e.with_sequence(first + n) for n, e in enumerate(tx.staged)]
    else:
        first, events = _store_many_events(tx, count)
    for incident in tx.histories:
        incident.timeline = [
            replace(e, sequence=first - e.sequence - 1) if e.sequence < 0 else e
            for e in incident.timeline
        ]
    return events


def _store_many_events(tx: Transaction, count: int) -> tuple[int, list[IncidentEvent]]:
    """Number, insert and notify in three statements; returns the first sequence and the events."""
    row = tx.execute(
        "UPDATE event_counter SET last = last + %s RETURNING last", (count,)
    ).fetchone()
    assert row is not None
    first = int(row[0]) - count + 1
    events = [e.with_sequence(first + n) for n, e in enumerate(tx.staged)]
    tx.executemany(
        f"INSERT INTO events ({column_list(EVENT_COLUMNS)}) "
        f"VALUES ({DIALECT.marks(len(EVENT_COLUMNS))})",
        [(e.sequence, *event_values(e)) for e in events],
    )
    tx.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(events[-1].sequence)))
    return first, events


@functools.cache
def _store_events_sql(count: int) -> str:
    """One statement that numbers `count` events, inserts them and notifies; returns the first.

    Parameters: count, channel, count, then the EVENT_VALUE_COLUMNS of each
    event, in order.
    """
    columns = EVENT_VALUE_COLUMNS
    marks = DIALECT.marks(len(columns))
    rows = ", ".join(f"({n}::bigint, {marks})" for n in range(1, count + 1))
    return (
        "WITH numbered AS (UPDATE event_counter SET last = last + %s RETURNING last), "
        "notified AS (SELECT pg_notify(%s, last::text) FROM numbered), "
        f"stored AS (INSERT INTO events ({column_list(EVENT_COLUMNS)}) "
        f"SELECT numbered.last - %s + v.position, {', '.join('v.' + c for c in columns)} "
        f"FROM numbered, notified, (VALUES {rows}) AS v(position, {column_list(columns)}) "
        "RETURNING sequence) "
        "SELECT min(sequence) FROM stored"
    )
