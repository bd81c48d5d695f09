"""PostgreSQL storage: several server replicas share one database.

Chosen by a `postgresql://` (or `postgres://`) database URL. Everything that
must hold across replicas is enforced by the database, never by one
process's memory:

Units of work stay synchronous. The storage contract runs a plain function
over a `UnitOfWork` inside one transaction, and the handlers that use it are
synchronous by design (they are the same for SQLite and the in-memory fake).
So units of work run on a synchronous `psycopg_pool.ConnectionPool`, one
worker thread per pooled connection, and the event loop only awaits them.
psycopg's async API is used where it fits without wrapping the handlers: the
LISTEN connection that follows other replicas' commits is an
`AsyncConnection` in a task on the event loop.

Exact dedup. Before the reads that decide dedup, a write transaction takes a
transaction-scoped advisory lock on what it is about to decide: the alert's
key (source, alert id) before looking the alert up, the fingerprint before
looking for a mergeable incident, the request id before looking for an
earlier request. Another replica deciding the same thing waits for the
first to commit; under READ COMMITTED its next statement then sees that
commit, so it merges instead of opening a second incident, or answers a
retry instead of counting it twice. Primary keys are the backstop: a unique
violation, a deadlock (40P01) or a serialization failure (40001) rolls the
whole unit of work back and runs it again; so does a lost race on an
incident's version that was read inside the same unit of work. Advisory locks
are taken in ascending key order when a transaction must wait (or with
`pg_try_advisory_xact_lock` otherwise; when that fails, the unit is run again
taking every key it needed up front, in order), so two batches that share
fingerprints in different orders never deadlock on them.

Gap-free events. Sequence numbers come from a one-row counter, taken as late
as possible: the unit of work keeps its timeline events in memory, and only
after the work has returned are they numbered (`UPDATE event_counter SET
last = last + n RETURNING last`), inserted, and committed. The counter's row
lock is held until COMMIT, so transactions commit in sequence order: once a
reader has seen sequence N, every smaller sequence is already committed.
Each commit NOTIFYs a channel. Every replica runs one follower task that
LISTENs on it and, when woken (or every `FALLBACK_POLL` seconds, and after
reconnecting), reads the events after the last one it published and hands
them to the listeners in order. A replica's own commits are published at
once when they directly follow what it published last, or else by the
follower (which reads the events in between first); either way each
replica publishes every event exactly once, in sequence order.

Faults. A call that cannot reach the database fails with StorageUnavailable
(gRPC UNAVAILABLE); a unit of work is answered only after its COMMIT
returned. A pooled connection found broken when its transaction begins
(nothing has run on it yet) is dropped and the unit of work takes another,
so connections broken by a restart are replaced without failing calls once
the database is back (cheaper than checking every connection before lending
it: one round trip less per call); the follower reconnects with
backoff and catches up from the last sequence it published, so live streams
resume without a gap. `available` is False from a failed connection until
the follower's next successful query.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from incident_manager.adapters.rows import (
    ALERT_COLUMNS,
    EVENT_COLUMNS,
    INCIDENT_COLUMNS,
    NOTE_COLUMNS,
    alert_values,
    event_from_row,
    event_values,
    filter_values,
    incident_from_row,
    incident_row,
    note_from_row,
    note_values,
    received_alert_from_row,
)
from incident_manager.domain.errors import (
    ConcurrentModification,
    StorageUnavailable,
    ValidationError,
)
from incident_manager.domain.model import (
    Incident,
    IncidentEvent,
    Note,
    ReceivedAlert,
    RequestRecord,
)
from incident_manager.domain.query import (
    NOTES_LIMIT,
    TIMELINE_LIMIT,
    IncidentPage,
    IncidentQuery,
    SortKey,
    micros,
)
from incident_manager.service.ports import (
    AlertLog,
    EventLog,
    IncidentRepository,
    RequestLog,
    Storage,
    T,
    UnitOfWork,
)

log = logging.getLogger(__name__)

URL_SCHEMES = ("postgresql://", "postgres://")
CHANNEL = "incident_manager_events"
"""NOTIFY channel: the payload is the last sequence of the commit."""
MIGRATION_LOCK = 0x1_6C1D_E47
"""Session advisory lock held while migrating, so replicas starting together migrate once."""
DEFAULT_POOL_SIZE = 10
MAX_ATTEMPTS = 6
"""Runs of one unit of work at most, when it loses a race to another transaction."""
MAX_LOCK_ROUNDS = 40
"""Runs at most while each run learns a lock it must take up front (see _Transaction.lock)."""
TRY_LOCK_PAUSES = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0)
"""Pauses between tries of a lock that may not be waited for (about 30 ms in all)."""
FALLBACK_POLL = 1.0
"""Seconds the follower waits for a notification before it reads anyway."""
FOLLOW_PAGE = 500
CONNECT_TIMEOUT = 3
"""Seconds to establish one connection (libpq's connect_timeout)."""
POOL_TIMEOUT = 3.0
"""Seconds a call waits for a pooled connection before it fails as unavailable."""
ONE_STATEMENT_EVENTS = 1000
"""Events stored with one statement at most (13 parameters each; PostgreSQL takes 65,535)."""
LOCAL_PUBLISH_WAIT = 2.0
"""Seconds a write waits for the follower to publish other replicas' events before its own."""

# Each entry upgrades the schema by one version (the schema_version table).
# Never edit an entry that has shipped; append a new one. Text keys use the
# "C" collation, so ids sort by their bytes as on SQLite and in Python.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE incidents (
        id TEXT COLLATE "C" PRIMARY KEY,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        severity INTEGER NOT NULL,
        type INTEGER NOT NULL,
        state INTEGER NOT NULL,
        source TEXT COLLATE "C" NOT NULL,
        affected_resources TEXT NOT NULL,
        labels TEXT NOT NULL,
        assignees TEXT NOT NULL,
        fingerprint TEXT COLLATE "C" NOT NULL,
        alert_count INTEGER NOT NULL,
        create_time BIGINT NOT NULL,
        update_time BIGINT NOT NULL,
        resolution TEXT,
        version INTEGER NOT NULL,
        timeline_size INTEGER NOT NULL,
        notes_size INTEGER NOT NULL
    );
    CREATE INDEX incidents_by_create_time ON incidents (create_time, id);
    CREATE INDEX incidents_by_update_time ON incidents (update_time, id);
    CREATE INDEX incidents_by_severity ON incidents (severity, create_time, id);
    CREATE INDEX incidents_active_by_fingerprint ON incidents (fingerprint, create_time)
        WHERE state < 5;
    CREATE INDEX incidents_by_filters ON incidents (state, severity, type, source);
    CREATE TABLE event_counter (
        only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
        last BIGINT NOT NULL
    );
    INSERT INTO event_counter (last) VALUES (0);
    CREATE TABLE events (
        sequence BIGINT PRIMARY KEY,
        incident_id TEXT COLLATE "C" NOT NULL,
        type INTEGER NOT NULL,
        actor TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL,
        create_time BIGINT NOT NULL,
        title TEXT NOT NULL,
        state INTEGER NOT NULL,
        severity INTEGER NOT NULL,
        incident_type INTEGER NOT NULL,
        source TEXT NOT NULL,
        assignees TEXT NOT NULL,
        alert_count INTEGER NOT NULL
    );
    CREATE INDEX events_by_incident ON events (incident_id, sequence);
    CREATE TABLE notes (
        position BIGSERIAL NOT NULL,
        id TEXT COLLATE "C" PRIMARY KEY,
        incident_id TEXT COLLATE "C" NOT NULL,
        author TEXT NOT NULL,
        content TEXT NOT NULL,
        create_time BIGINT NOT NULL
    );
    CREATE INDEX notes_by_incident ON notes (incident_id, create_time, position);
    CREATE TABLE alerts (
        source TEXT COLLATE "C" NOT NULL,
        alert_id TEXT COLLATE "C" NOT NULL,
        incident_id TEXT COLLATE "C" NOT NULL,
        status INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        receive_time BIGINT NOT NULL,
        payload TEXT NOT NULL,
        cleared_time BIGINT,
        PRIMARY KEY (source, alert_id)
    );
    CREATE INDEX alerts_by_incident ON alerts (incident_id, receive_time);
    CREATE TABLE requests (
        request_id TEXT COLLATE "C" PRIMARY KEY,
        kind TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        note_id TEXT NOT NULL
    );
    """,
)

_UPDATE_INCIDENT = (
    "UPDATE incidents SET "
    + ", ".join(f"{c.strip()} = %s" for c in INCIDENT_COLUMNS.split(",")[1:])
    + " WHERE id = %s AND version = %s"
)
_SORT_COLUMNS = {
    SortKey.CREATE_TIME: ("create_time", "id"),
    SortKey.UPDATE_TIME: ("update_time", "id"),
    SortKey.SEVERITY: ("severity", "create_time", "id"),
}
_RACES = (
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.UniqueViolation,
)
"""Errors that mean another transaction got there first: run the unit of work again."""


def is_postgres_url(database: str) -> bool:
    return database.startswith(URL_SCHEMES)


def lock_key(kind: str, *parts: str) -> int:
    """A 64-bit advisory lock key for one decision (a collision only over-serializes)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (kind, *parts):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return int.from_bytes(digest.digest(), "big", signed=True)


def describe(conninfo: str) -> str:
    """Where the database is, for messages: host, port and name, never the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "PostgreSQL (unparsable URL)"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"PostgreSQL at {host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def split_options(url: str) -> tuple[str, int]:
    """The URL for libpq, and our own `pool_size` query parameter (libpq would refuse it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    pool_size = DEFAULT_POOL_SIZE
    kept = []
    for name, value in query:
        if name == "pool_size":
            try:
                pool_size = int(value)
            except ValueError:
                pool_size = 0
            if not 1 <= pool_size <= 1000:
                raise StorageUnavailable(f"pool_size must be between 1 and 1000, not {value!r}")
        else:
            kept.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), pool_size


class _LockBusy(Exception):
    """Another transaction holds a lock this one may not wait for (it could deadlock)."""


class Unreachable(StorageUnavailable):
    """The database could not be reached (as opposed to refusing a change)."""


class _StaleConnection(Exception):
    """A pooled connection broke while idle (the database restarted): nothing ran on it."""


class _RaceLost(ConcurrentModification):
    """An incident read in this unit of work changed before it was saved: run it again."""


@dataclass
class _Undo:
    incident: Incident
    pending_events: list[IncidentEvent]
    pending_notes: list[Note]
    loaded_version: int

    def apply(self) -> None:
        self.incident.pending_events = self.pending_events
        self.incident.pending_notes = self.pending_notes
        self.incident.loaded_version = self.loaded_version


@dataclass
class _Transaction:
    """What the repositories of one run of a unit of work share."""

    conn: psycopg.Connection[Any]
    write: bool
    held: set[int] = field(default_factory=set)
    needed: set[int] = field(default_factory=set)
    """Every lock asked for: taken up front, in order, if the unit must run again."""
    wrote: bool = False
    staged: list[IncidentEvent] = field(default_factory=list)
    """Events to store at commit, numbered -1, -2, ... until then."""
    histories: list[Incident] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)
    undo: list[_Undo] = field(default_factory=list)

    def execute(self, query: str, params: tuple[Any, ...] | list[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(query, params)

    def lock(self, key: int) -> None:
        """Hold `key` until this transaction ends; a read transaction takes no locks.

        Waiting is safe only for a key above every key already held and before
        any write: then no cycle of waits can form. Otherwise try for a short
        while (its holder usually commits within milliseconds), and if the
        key stays taken, give up this run.
        """
        if not self.write:
            return
        self.needed.add(key)
        if key in self.held:
            return
        if not self.wrote and (not self.held or key > max(self.held)):
            self.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        else:
            for pause in TRY_LOCK_PAUSES:
                row = self.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,)).fetchone()
                if row and row[0]:
                    break
                time.sleep(pause)
            else:
                raise _LockBusy(key)
        self.held.add(key)

    def writing(self, incident: Incident | None = None) -> None:
        self.wrote = True
        if incident is not None:
            self.undo.append(
                _Undo(
                    incident,
                    list(incident.pending_events),
                    list(incident.pending_notes),
                    incident.loaded_version,
                )
            )


class PostgresIncidents(IncidentRepository):
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def get(self, incident_id: str, *, with_history: bool = False) -> Incident | None:
        row = self._tx.execute(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = %s", (incident_id,)
        ).fetchone()
        if row is None:
            return None
        incident = incident_from_row(row)
        self._tx.loaded.add(incident.id)
        if with_history:
            self._load_history(incident)
        return incident

    def _load_history(self, incident: Incident) -> None:
        rows = self._tx.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE incident_id = %s "
            "ORDER BY sequence DESC LIMIT %s",
            (incident.id, TIMELINE_LIMIT),
        ).fetchall()
        stored = [event_from_row(r).event for r in reversed(rows)]
        staged = [e.event for e in self._tx.staged if e.incident_id == incident.id]
        incident.timeline = (stored + staged)[-TIMELINE_LIMIT:]
        if staged:
            self._tx.histories.append(incident)  # numbered at commit
        notes = [
            note_from_row(r)
            for r in self._tx.execute(
                f"SELECT {NOTE_COLUMNS} FROM notes WHERE incident_id = %s "
                "ORDER BY create_time DESC, position DESC LIMIT %s",
                (incident.id, NOTES_LIMIT),
            )
        ]
        incident.notes = notes[::-1]

    def find_mergeable(self, fingerprint: str, opened_since: datetime) -> Incident | None:
        self._tx.lock(lock_key("fingerprint", fingerprint))
        row = self._tx.execute(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents "
            "WHERE fingerprint = %s AND state < 5 AND create_time >= %s "
            "ORDER BY create_time DESC, id DESC LIMIT 1",
            (fingerprint, micros(opened_since)),
        ).fetchone()
        if row is None:
            return None
        incident = incident_from_row(row)
        self._tx.loaded.add(incident.id)
        return incident

    def add(self, incident: Incident) -> None:
        self._tx.writing(incident)
        placeholders = ", ".join(["%s"] * 18)
        self._tx.execute(
            f"INSERT INTO incidents ({INCIDENT_COLUMNS}) VALUES ({placeholders})",
            incident_row(incident),
        )
        self._store_pending(incident)

    def save(self, incident: Incident) -> None:
        self._tx.writing(incident)
        row = incident_row(incident)
        cursor = self._tx.execute(
            _UPDATE_INCIDENT, (*row[1:], incident.id, incident.loaded_version)
        )
        if cursor.rowcount != 1:
            if incident.id in self._tx.loaded:
                raise _RaceLost(incident.id)
            raise ConcurrentModification(incident.id)
        self._store_pending(incident)

    def _store_pending(self, incident: Incident) -> None:
        staged = self._tx.staged
        for pending in incident.pending_events:
            staged.append(pending.with_sequence(-(len(staged) + 1)))
        if incident.pending_notes:
            with self._tx.conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO notes (id, incident_id, author, content, create_time) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [note_values(incident.id, n) for n in incident.pending_notes],
                )
        incident.loaded_version = incident.version
        incident.pending_events = []
        incident.pending_notes = []

    def get_note(self, note_id: str) -> Note | None:
        row = self._tx.execute(
            f"SELECT {NOTE_COLUMNS} FROM notes WHERE id = %s", (note_id,)
        ).fetchone()
        if row is None:
            return None
        return note_from_row(row)

    def list(self, query: IncidentQuery) -> IncidentPage:
        where: list[str] = []
        params: list[Any] = []
        f = query.filter
        for column, values in filter_values(f):
            where.append(f"{column} = ANY(%s)")
            params.append(values)
        if f.assignee:
            where.append("assignees::jsonb ? %s")
            params.append(f.assignee)
        if f.incident_id:
            where.append("id = %s")
            params.append(f.incident_id)
        row = self._tx.execute(
            f"SELECT COUNT(*) FROM incidents WHERE {' AND '.join(where) or 'TRUE'}", params
        ).fetchone()
        total = int(row[0]) if row else 0

        columns = _SORT_COLUMNS[query.ordering.key]
        direction = "DESC" if query.ordering.descending else "ASC"
        page_where = list(where)
        page_params = list(params)
        if query.after is not None:
            comparison = "<" if query.ordering.descending else ">"
            marks = ", ".join(["%s"] * len(columns))
            page_where.append(f"({', '.join(columns)}) {comparison} ({marks})")
            page_params.extend(query.after)
        order = ", ".join(f"{c} {direction}" for c in columns)
        rows = self._tx.execute(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents "
            f"WHERE {' AND '.join(page_where) or 'TRUE'} ORDER BY {order} LIMIT %s",
            (*page_params, query.page_size + 1),
        ).fetchall()
        incidents = [incident_from_row(r) for r in rows[: query.page_size]]
        if query.with_history:
            for incident in incidents:
                self._load_history(incident)
        return IncidentPage(
            incidents=incidents, total_size=total, has_more=len(rows) > query.page_size
        )


class PostgresRequests(RequestLog):
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def get(self, request_id: str) -> RequestRecord | None:
        self._tx.lock(lock_key("request", request_id))
        row = self._tx.execute(
            "SELECT kind, incident_id, note_id FROM requests WHERE request_id = %s", (request_id,)
        ).fetchone()
        return None if row is None else RequestRecord(row[0], row[1], row[2])

    def add(self, request_id: str, record: RequestRecord) -> None:
        self._tx.writing()
        self._tx.execute(
            "INSERT INTO requests (request_id, kind, incident_id, note_id) VALUES (%s, %s, %s, %s)",
            (request_id, record.kind, record.incident_id, record.note_id),
        )


class PostgresAlerts(AlertLog):
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def get(self, source: str, alert_id: str) -> ReceivedAlert | None:
        self._tx.lock(lock_key("alert", source, alert_id))
        row = self._tx.execute(
            f"SELECT {ALERT_COLUMNS} FROM alerts WHERE source = %s AND alert_id = %s",
            (source, alert_id),
        ).fetchone()
        return None if row is None else received_alert_from_row(row)

    def add(self, received: ReceivedAlert) -> None:
        self._tx.writing()
        self._tx.execute(
            "INSERT INTO alerts (source, alert_id, incident_id, status, fingerprint, "
            "receive_time, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            alert_values(received),
        )

    def clear(self, source: str, alert_id: str, when: datetime) -> None:
        self._tx.writing()
        self._tx.execute(
            "UPDATE alerts SET cleared_time = %s WHERE source = %s AND alert_id = %s",
            (micros(when), source, alert_id),
        )

    def open_count(self, incident_id: str) -> int:
        row = self._tx.execute(
            "SELECT COUNT(*) FROM alerts WHERE incident_id = %s AND cleared_time IS NULL",
            (incident_id,),
        ).fetchone()
        return int(row[0]) if row else 0

    def latest(self, incident_id: str) -> tuple[str, str] | None:
        row = self._tx.execute(
            "SELECT source, alert_id FROM alerts WHERE incident_id = %s "
            "ORDER BY receive_time DESC, alert_id DESC LIMIT 1",
            (incident_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1])


def _events_after(conn: psycopg.Connection[Any], sequence: int, limit: int) -> list[IncidentEvent]:
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > %s ORDER BY sequence LIMIT %s",
        (sequence, limit),
    ).fetchall()
    return [event_from_row(r) for r in rows]


class PostgresEvents(EventLog):
    """Committed events only: a write unit of work numbers its own at commit."""

    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def after(self, sequence: int, limit: int) -> list[IncidentEvent]:
        return _events_after(self._tx.conn, sequence, limit)

    def last_sequence(self) -> int:
        # Commits happen in sequence order, so the counter is the greatest
        # committed sequence this transaction can see.
        row = self._tx.execute("SELECT last FROM event_counter").fetchone()
        return int(row[0]) if row else 0


class PostgresUnitOfWork(UnitOfWork):
    """One run of a unit of work in one transaction; the storage commits it after the work."""

    def __init__(self, tx: _Transaction) -> None:
        super().__init__()
        self.tx = tx
        self.committed = False
        self.incidents = PostgresIncidents(tx)
        self.alerts = PostgresAlerts(tx)
        self.events = PostgresEvents(tx)
        self.requests = PostgresRequests(tx)

    def commit(self) -> None:
        if not self.tx.write:
            raise RuntimeError("a read unit of work cannot commit")
        self.committed = True

    def rollback(self) -> None:
        return None  # the storage rolls back unless the work committed and returned


def _number_and_store(tx: _Transaction) -> list[IncidentEvent]:
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
        row = tx.execute(
            "UPDATE event_counter SET last = last + %s RETURNING last", (count,)
        ).fetchone()
        assert row is not None
        first = int(row[0]) - count + 1
        events = [e.with_sequence(first + n) for n, e in enumerate(tx.staged)]
        with tx.conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({', '.join(['%s'] * 14)})",
                [(e.sequence, *event_values(e)) for e in events],
            )
        tx.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(events[-1].sequence)))
    for incident in tx.histories:
        incident.timeline = [
            replace(e, sequence=first - e.sequence - 1) if e.sequence < 0 else e
            for e in incident.timeline
        ]
    return events


@functools.cache
def _store_events_sql(count: int) -> str:
    """One statement that numbers `count` events, inserts them and notifies; returns the first.

    Parameters: count, channel, count, then 13 values per event (EVENT_COLUMNS
    after `sequence`), in order.
    """
    columns = [c.strip() for c in EVENT_COLUMNS.split(",")[1:]]
    marks = ", ".join(["%s"] * len(columns))
    rows = ", ".join(f"({n}::bigint, {marks})" for n in range(1, count + 1))
    return (
        "WITH numbered AS (UPDATE event_counter SET last = last + %s RETURNING last), "
        "notified AS (SELECT pg_notify(%s, last::text) FROM numbered), "
        f"stored AS (INSERT INTO events ({EVENT_COLUMNS}) "
        f"SELECT numbered.last - %s + v.position, {', '.join('v.' + c for c in columns)} "
        f"FROM numbered, notified, (VALUES {rows}) AS v(position, {', '.join(columns)}) "
        "RETURNING sequence) "
        "SELECT min(sequence) FROM stored"
    )


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema up to date under a session advisory lock; returns its version now."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        with conn.transaction():
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > len(MIGRATIONS):
                raise StorageUnavailable(
                    f"the database schema is version {version}, newer than this server knows "
                    f"({len(MIGRATIONS)}); run a newer incident-manager"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                conn.execute(script.encode())
                conn.execute("UPDATE schema_version SET version = %s", (number,))
                log.info("database schema migrated", extra={"schema_version": number})
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return len(MIGRATIONS)


@dataclass
class _Outcome:
    result: Any
    events: list[IncidentEvent]


class PostgresStorage(Storage):
    """Stores everything in a PostgreSQL database that any number of replicas share."""

    def __init__(self, url: str) -> None:
        super().__init__()
        conninfo, pool_size = split_options(url)
        self._conninfo = conninfo
        self.where = describe(conninfo)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            configure=_configure,
            timeout=POOL_TIMEOUT,
            name="incident-manager",
            open=False,
        )
        try:
            # A direct connection first: it fails at once, saying why, where
            # the pool would only time out.
            with psycopg.connect(
                conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            ) as conn:
                migrate(conn)
                row = conn.execute("SELECT last FROM event_counter").fetchone()
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT + 2)
        except (PoolTimeout, psycopg.Error) as error:
            self._pool.close()
            raise StorageUnavailable(f"cannot open {self.where}: {_reason(error)}") from error
        except BaseException:
            self._pool.close()
            raise
        self._published = int(row[0]) if row else 0
        """The last sequence handed to the listeners by this process."""
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="postgres")
        self._available = True
        self._closed = False
        self._follower: asyncio.Task[None] | None = None
        self._retries = 0
        self._retries_lock = threading.Lock()
        with contextlib.suppress(RuntimeError):  # no event loop yet: started by the first call
            self._start_follower()

    @property
    def available(self) -> bool:
        return self._available and not self._closed

    @property
    def retries(self) -> int:
        """Units of work run again after losing a race (for tests and tuning)."""
        return self._retries

    def _start_follower(self) -> None:
        if self._follower is None and not self._closed:
            self._follower = asyncio.get_running_loop().create_task(
                self._follow(), name="postgres-follower"
            )

    async def write(self, work: Callable[[UnitOfWork], T]) -> T:
        outcome = await self._submit(work, write=True)
        if outcome.events:
            await self._publish_own(outcome.events)
        result: T = outcome.result
        return result

    async def read(self, work: Callable[[UnitOfWork], T]) -> T:
        outcome = await self._submit(work, write=False)
        result: T = outcome.result
        return result

    async def _submit(self, work: Callable[[UnitOfWork], Any], *, write: bool) -> _Outcome:
        if self._closed:
            raise StorageUnavailable("the database is closed because the server is stopping")
        self._start_follower()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._run, work, write)
        except Unreachable:
            self._available = False  # until the follower reads again
            raise

    def _run(self, work: Callable[[UnitOfWork], Any], write: bool) -> _Outcome:
        """On a worker thread: run `work` until it commits, fails, or runs out of attempts."""
        prelock: set[int] = set()
        attempt = stale = 0
        for _round in range(MAX_LOCK_ROUNDS):
            try:
                with self._connection() as conn:
                    tx = _Transaction(conn, write)
                    try:
                        return self._attempt(tx, work, prelock)
                    except BaseException:
                        for undo in reversed(tx.undo):
                            undo.apply()
                        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                            with contextlib.suppress(psycopg.Error):
                                conn.execute("ROLLBACK")
                        raise
            except _StaleConnection as error:
                # The pool drops a broken connection when it gets it back;
                # idle ones may all be broken after a restart.
                stale += 1
                if stale > self._pool.max_size:
                    raise Unreachable(
                        f"cannot reach {self.where}: {_reason(error.__cause__ or error)}"
                    ) from error
                continue
            except _LockBusy:
                # Each run takes every lock it learned of before its work, in
                # order; the set grows by at least one key per run.
                prelock |= tx.needed
            except (*_RACES, _RaceLost) as error:
                attempt += 1
                if attempt == MAX_ATTEMPTS:
                    if isinstance(error, _RaceLost):
                        raise
                    raise StorageUnavailable(
                        f"{self.where} refused the change {MAX_ATTEMPTS} times: {_reason(error)}"
                    ) from error
            except PoolTimeout as error:
                raise Unreachable(
                    f"cannot reach {self.where} (no connection within {POOL_TIMEOUT:g}s): "
                    f"{_reason(error)}"
                ) from error
            except psycopg.DataError as error:
                if "NUL" not in str(error):
                    raise StorageUnavailable(f"{self.where}: {_reason(error)}") from error
                # SQLite stores U+0000 in text; PostgreSQL cannot.
                raise ValidationError.single(
                    "request", "text must not contain NUL (U+0000) characters"
                ) from error
            except psycopg.OperationalError as error:
                raise Unreachable(f"{self.where}: {_reason(error)}") from error
            except psycopg.Error as error:
                raise StorageUnavailable(f"{self.where}: {_reason(error)}") from error
            with self._retries_lock:
                self._retries += 1
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise StorageUnavailable(
            f"{self.where}: too much contention, gave up after {MAX_LOCK_ROUNDS} runs"
        )

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pool.connection() as conn:
            yield conn

    def _attempt(
        self, tx: _Transaction, work: Callable[[UnitOfWork], Any], prelock: set[int]
    ) -> _Outcome:
        conn = tx.conn
        try:
            conn.execute("BEGIN" if tx.write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except psycopg.OperationalError as error:
            raise _StaleConnection from error
        for key in sorted(prelock):
            tx.lock(key)  # ascending, before any write: waiting is safe
        uow = PostgresUnitOfWork(tx)
        result = work(uow)
        events: list[IncidentEvent] = []
        if tx.write and uow.committed:
            events = _number_and_store(tx)
            try:
                conn.execute("COMMIT")
            except psycopg.OperationalError as error:
                raise Unreachable(
                    f"the connection to {self.where} broke while committing, so the change "
                    f"may or may not be stored; retrying is safe for alerts: {_reason(error)}"
                ) from error
            uow.committed_events = events
        else:
            conn.execute("ROLLBACK")
        return _Outcome(result, events)

    async def _publish_own(self, events: list[IncidentEvent]) -> None:
        """Publish this process's commit in order: now if it is next, else via the follower."""
        if events[0].sequence == self._published + 1:
            self._hand_out(events)
            return
        if events[-1].sequence <= self._published:
            return  # the follower got there first
        # Other replicas committed in between: the follower (woken by our own
        # NOTIFY) reads them and ours in order. Do not answer before, so a
        # client that reads its own write on a stream sees it; but never hang
        # on a database that just went away.
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((events[-1].sequence, future))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), LOCAL_PUBLISH_WAIT)

    def _hand_out(self, events: list[IncidentEvent]) -> None:
        fresh = [e for e in events if e.sequence > self._published]
        if not fresh:
            return
        if fresh[0].sequence != self._published + 1:
            log.error(
                "event sequence gap",
                extra={"published": self._published, "next": fresh[0].sequence},
            )
        self._published = fresh[-1].sequence
        self._publish(fresh)
        if self._waiters:
            waiting = []
            for target, future in self._waiters:
                if target <= self._published:
                    if not future.done():
                        future.set_result(None)
                else:
                    waiting.append((target, future))
            self._waiters = waiting

    async def _follow(self) -> None:
        """Publish every replica's events in order: woken by NOTIFY, by a timer, on reconnect."""
        backoff = 0.1
        while not self._closed:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if not self._available:
                        log.info("database reachable again", extra={"database": self.where})
                    backoff = 0.1
                    while not self._closed:
                        await self._catch_up(conn)
                        self._available = True
                        async for _ in conn.notifies(timeout=FALLBACK_POLL, stop_after=1):
                            pass
            except Exception as error:  # psycopg.Error, OSError: the database went away
                if self._closed:
                    return
                if self._available:
                    log.error(
                        "database unreachable",
                        extra={"database": self.where, "error": _reason(error)},
                    )
                self._available = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _catch_up(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            cursor = await conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > %s "
                "ORDER BY sequence LIMIT %s",
                (self._published, FOLLOW_PAGE),
            )
            rows = await cursor.fetchall()
            if rows:
                self._hand_out([event_from_row(r) for r in rows])
            if len(rows) < FOLLOW_PAGE:
                return

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await self._follower
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._executor.shutdown, True)
        await loop.run_in_executor(None, self._pool.close)


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Settings for every pooled connection.

    No JIT: our statements are short, and the planner, misled by a one-row
    table it has no statistics for yet, compiled the event insert on every
    commit (7 ms each, against 1 ms for the whole commit without it).
    """
    conn.execute("SET jit = off")


def _reason(error: BaseException) -> str:
    """One line saying why, without libpq's multi-line decoration."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
