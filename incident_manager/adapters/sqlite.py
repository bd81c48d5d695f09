"""SQLite storage: the embedded default. Nothing to install, one file on disk.

One connection writes, on one thread, so write transactions never contend;
another connection reads on its own thread (WAL lets it read while a write is
in progress). The write connection runs with `synchronous=FULL`: a commit
returns only after the WAL is on disk, so an acknowledged alert survives
`kill -9` of the server and a power loss alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from incident_manager.adapters.cache import WriterCache
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
    resolution_to_json,
)
from incident_manager.domain.errors import ConcurrentModification, StorageUnavailable
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

# Each entry upgrades the schema by one version (PRAGMA user_version). Never
# edit an entry that has shipped; append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        severity INTEGER NOT NULL,
        type INTEGER NOT NULL,
        state INTEGER NOT NULL,
        source TEXT NOT NULL,
        affected_resources TEXT NOT NULL,
        labels TEXT NOT NULL,
        assignees TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        alert_count INTEGER NOT NULL,
        create_time INTEGER NOT NULL,
        update_time INTEGER NOT NULL,
        resolution TEXT,
        version INTEGER NOT NULL,
        timeline_size INTEGER NOT NULL
    );
    CREATE INDEX incidents_by_create_time ON incidents (create_time, id);
    CREATE INDEX incidents_by_update_time ON incidents (update_time, id);
    CREATE INDEX incidents_by_severity ON incidents (severity, create_time, id);
    CREATE INDEX incidents_active_by_fingerprint ON incidents (fingerprint, create_time)
        WHERE state < 5;
    CREATE TABLE events (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id TEXT NOT NULL,
        type INTEGER NOT NULL,
        actor TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL,
        create_time INTEGER NOT NULL,
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
        id TEXT PRIMARY KEY,
        incident_id TEXT NOT NULL,
        author TEXT NOT NULL,
        content TEXT NOT NULL,
        create_time INTEGER NOT NULL
    );
    CREATE INDEX notes_by_incident ON notes (incident_id, create_time);
    CREATE TABLE alerts (
        source TEXT NOT NULL,
        alert_id TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        receive_time INTEGER NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (source, alert_id)
    ) WITHOUT ROWID;
    """,
    """
    ALTER TABLE incidents ADD COLUMN notes_size INTEGER NOT NULL DEFAULT 0;
    UPDATE incidents SET notes_size = (SELECT COUNT(*) FROM notes WHERE incident_id = incidents.id);
    """,
    # Lets ListIncidents count the matches of its filters from an index alone.
    """
    CREATE INDEX incidents_by_filters ON incidents (state, severity, type, source);
    """,
    # Client-chosen request ids, so CreateIncident and AddNote can be retried.
    """
    CREATE TABLE requests (
        request_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        note_id TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # Resolve signals: when each alert cleared; an incident's alerts, newest first.
    """
    ALTER TABLE alerts ADD COLUMN cleared_time INTEGER;
    CREATE INDEX alerts_by_incident ON alerts (incident_id, receive_time);
    """,
)

_UPDATE_INCIDENT = (
    "UPDATE incidents SET "
    + ", ".join(f"{c.strip()} = ?" for c in INCIDENT_COLUMNS.split(",")[1:])
    + " WHERE id = ? AND version = ?"
)
_UPDATE_COUNTERS = (
    "UPDATE incidents SET severity = ?, state = ?, alert_count = ?, update_time = ?, "
    "resolution = ?, version = ?, timeline_size = ?, notes_size = ? "
    "WHERE id = ? AND version = ?"
)
_SORT_COLUMNS = {
    SortKey.CREATE_TIME: ("create_time", "id"),
    SortKey.UPDATE_TIME: ("update_time", "id"),
    SortKey.SEVERITY: ("severity", "create_time", "id"),
}


class SqliteIncidents(IncidentRepository):
    def __init__(self, conn: sqlite3.Connection, cache: WriterCache | None = None) -> None:
        self._conn = conn
        self._cache = cache
        self.stored_events: list[IncidentEvent] = []
        """Events stored by this unit of work, with their sequences, in order."""

    def get(self, incident_id: str, *, with_history: bool = False) -> Incident | None:
        if self._cache is not None and not with_history:
            cached = self._cache.incident(incident_id)
            if cached is not None:
                return cached
        row = self._conn.execute(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = ?", (incident_id,)
        ).fetchone()
        if row is None:
            return None
        incident = incident_from_row(row)
        if self._cache is not None:
            self._cache.remember(incident)
        if with_history:
            self._load_history(incident)
        return incident

    def _load_history(self, incident: Incident) -> None:
        rows = self._conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE incident_id = ? "
            "ORDER BY sequence DESC LIMIT ?",
            (incident.id, TIMELINE_LIMIT),
        ).fetchall()
        incident.timeline = [event_from_row(r).event for r in reversed(rows)]
        notes = [
            note_from_row(r)
            for r in self._conn.execute(
                f"SELECT {NOTE_COLUMNS} FROM notes WHERE incident_id = ? "
                "ORDER BY create_time DESC, rowid DESC LIMIT ?",
                (incident.id, NOTES_LIMIT),
            )
        ]
        incident.notes = notes[::-1]

    def find_mergeable(self, fingerprint: str, opened_since: datetime) -> Incident | None:
        cache = self._cache
        if cache is not None and cache.fingerprints_complete:
            entry = cache.newest_active(fingerprint)
            if entry is None or entry[0] < micros(opened_since):
                return None
            return self.get(entry[1])
        row = self._newest_active_row(fingerprint, micros(opened_since))
        if row is None:
            return None
        incident = incident_from_row(row)
        if cache is not None:
            cache.remember(incident)
        return incident

    def _newest_active_row(self, fingerprint: str, opened_since: int) -> Any:
        # `state < 5` is written out so that the partial index applies.
        return self._conn.execute(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents "
            "WHERE fingerprint = ? AND state < 5 AND create_time >= ? "
            "ORDER BY create_time DESC, id DESC LIMIT 1",
            (fingerprint, opened_since),
        ).fetchone()

    def _index(self, incident: Incident) -> None:
        """Keep the writer's cache and dedup index in step with what was just written."""
        cache = self._cache
        if cache is None:
            return
        cache.remember(incident)
        if not cache.fingerprints_complete:
            return
        current = cache.newest_active(incident.fingerprint)
        key = (micros(incident.create_time), incident.id)
        if incident.state.is_active:
            if current is None or key > current:
                cache.set_newest(incident.fingerprint, key)
        elif current is not None and current[1] == incident.id:
            # The indexed incident closed: an older one may still be open.
            row = self._newest_active_row(incident.fingerprint, -(2**63))
            cache.set_newest(incident.fingerprint, None if row is None else (row[12], row[0]))

    def add(self, incident: Incident) -> None:
        placeholders = ", ".join("?" * 18)
        self._conn.execute(
            f"INSERT INTO incidents ({INCIDENT_COLUMNS}) VALUES ({placeholders})",
            incident_row(incident),
        )
        self._store_pending(incident)
        self._index(incident)

    def save(self, incident: Incident) -> None:
        if self._only_counters_changed(incident):
            # A merged alert changes counters and times only: skip re-encoding
            # the JSON columns (the writer's biggest cost in a storm).
            cursor = self._conn.execute(
                _UPDATE_COUNTERS,
                (
                    int(incident.severity),
                    int(incident.state),
                    incident.alert_count,
                    micros(incident.update_time),
                    resolution_to_json(incident.resolution),
                    incident.version,
                    incident.timeline_size,
                    incident.notes_size,
                    incident.id,
                    incident.loaded_version,
                ),
            )
        else:
            row = incident_row(incident)
            cursor = self._conn.execute(
                _UPDATE_INCIDENT, (*row[1:], incident.id, incident.loaded_version)
            )
        if cursor.rowcount != 1:
            raise ConcurrentModification(incident.id)
        self._store_pending(incident)
        self._index(incident)

    def _only_counters_changed(self, incident: Incident) -> bool:
        stored = self._cache.peek(incident.id) if self._cache is not None else None
        return (
            stored is not None
            and stored.version == incident.loaded_version
            and stored.title == incident.title
            and stored.description == incident.description
            and stored.type is incident.type
            and stored.source == incident.source
            and stored.fingerprint == incident.fingerprint
            and stored.affected_resources == incident.affected_resources
            and stored.labels == incident.labels
            and stored.assignees == incident.assignees
        )

    def _store_pending(self, incident: Incident) -> None:
        stored: list[IncidentEvent] = []
        for pending in incident.pending_events:
            cursor = self._conn.execute(
                f"INSERT INTO events ({EVENT_COLUMNS}) "
                "VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                event_values(pending),
            )
            assert cursor.lastrowid is not None
            stored.append(pending.with_sequence(cursor.lastrowid))
        for note in incident.pending_notes:
            self._conn.execute(
                "INSERT INTO notes (id, incident_id, author, content, create_time) "
                "VALUES (?, ?, ?, ?, ?)",
                note_values(incident.id, note),
            )
        incident.loaded_version = incident.version
        incident.pending_events = []
        incident.pending_notes = []
        self.stored_events.extend(stored)

    def get_note(self, note_id: str) -> Note | None:
        row = self._conn.execute(
            f"SELECT {NOTE_COLUMNS} FROM notes WHERE id = ?", (note_id,)
        ).fetchone()
        if row is None:
            return None
        return note_from_row(row)

    def list(self, query: IncidentQuery) -> IncidentPage:
        # The filter is written twice. COUNT(*) reads the covering index on
        # (state, severity, type, source). The page reads the index of its
        # sort order and stops after one page; the filter columns carry a
        # unary `+` so the planner does not pick their index and then sort
        # every match (measured on 1M incidents: 170 ms against 0.1 ms).
        count_where: list[str] = []
        page_where: list[str] = []
        params: list[Any] = []
        f = query.filter
        for column, values in filter_values(f):
            marks = ", ".join("?" * len(values))
            count_where.append(f"{column} IN ({marks})")
            page_where.append(f"+{column} IN ({marks})")
            params.extend(values)
        if f.assignee:
            clause = "EXISTS (SELECT 1 FROM json_each(incidents.assignees) WHERE value = ?)"
            count_where.append(clause)
            page_where.append(clause)
            params.append(f.assignee)
        if f.incident_id:
            count_where.append("id = ?")
            page_where.append("id = ?")
            params.append(f.incident_id)
        total = self._conn.execute(
            f"SELECT COUNT(*) FROM incidents WHERE {' AND '.join(count_where) or '1'}", params
        ).fetchone()[0]

        columns = _SORT_COLUMNS[query.ordering.key]
        direction = "DESC" if query.ordering.descending else "ASC"
        page_params = list(params)
        if query.after is not None:
            comparison = "<" if query.ordering.descending else ">"
            page_where.append(
                f"({', '.join(columns)}) {comparison} ({', '.join('?' * len(columns))})"
            )
            page_params.extend(query.after)
        order = ", ".join(f"{c} {direction}" for c in columns)
        rows = self._conn.execute(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents WHERE {' AND '.join(page_where) or '1'} "
            f"ORDER BY {order} LIMIT ?",
            (*page_params, query.page_size + 1),
        ).fetchall()
        incidents = [incident_from_row(r) for r in rows[: query.page_size]]
        if query.with_history:
            for incident in incidents:
                self._load_history(incident)
        return IncidentPage(
            incidents=incidents, total_size=total, has_more=len(rows) > query.page_size
        )


class SqliteRequests(RequestLog):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, request_id: str) -> RequestRecord | None:
        row = self._conn.execute(
            "SELECT kind, incident_id, note_id FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else RequestRecord(row[0], row[1], row[2])

    def add(self, request_id: str, record: RequestRecord) -> None:
        self._conn.execute(
            "INSERT INTO requests (request_id, kind, incident_id, note_id) VALUES (?, ?, ?, ?)",
            (request_id, record.kind, record.incident_id, record.note_id),
        )


class SqliteAlerts(AlertLog):
    def __init__(self, conn: sqlite3.Connection, cache: WriterCache | None = None) -> None:
        self._conn = conn
        self._cache = cache

    def get(self, source: str, alert_id: str) -> ReceivedAlert | None:
        if self._cache is not None and not self._cache.maybe_seen(source, alert_id):
            return None  # never stored: the common case costs no read
        row = self._conn.execute(
            f"SELECT {ALERT_COLUMNS} FROM alerts WHERE source = ? AND alert_id = ?",
            (source, alert_id),
        ).fetchone()
        return None if row is None else received_alert_from_row(row)

    def add(self, received: ReceivedAlert) -> None:
        if self._cache is not None:
            self._cache.saw(received.alert.source, received.alert.id)
        self._conn.execute(
            "INSERT INTO alerts (source, alert_id, incident_id, status, fingerprint, "
            "receive_time, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
            alert_values(received),
        )

    def clear(self, source: str, alert_id: str, when: datetime) -> None:
        self._conn.execute(
            "UPDATE alerts SET cleared_time = ? WHERE source = ? AND alert_id = ?",
            (micros(when), source, alert_id),
        )

    def open_count(self, incident_id: str) -> int:
        row = self._conn.execute(
            "SELECT COUNT(*) FROM alerts WHERE incident_id = ? AND cleared_time IS NULL",
            (incident_id,),
        ).fetchone()
        return int(row[0])

    def latest(self, incident_id: str) -> tuple[str, str] | None:
        row = self._conn.execute(
            "SELECT source, alert_id FROM alerts WHERE incident_id = ? "
            "ORDER BY receive_time DESC, alert_id DESC LIMIT 1",
            (incident_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1])


class SqliteEvents(EventLog):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def after(self, sequence: int, limit: int) -> list[IncidentEvent]:
        rows = self._conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > ? ORDER BY sequence LIMIT ?",
            (sequence, limit),
        ).fetchall()
        return [event_from_row(r) for r in rows]

    def last_sequence(self) -> int:
        row = self._conn.execute("SELECT MAX(sequence) FROM events").fetchone()
        return int(row[0] or 0)


class SqliteUnitOfWork(UnitOfWork):
    """A read transaction, or one write job inside the writer's group transaction.

    A write job runs in a SAVEPOINT that the writer opens and closes: if the
    job called `commit()` and returned normally, its savepoint is released
    into the group's transaction; otherwise it is rolled back, whatever the
    job did. The group's COMMIT, and so durability, comes after; nothing of
    the job is published or acknowledged before it.
    """

    def __init__(
        self, conn: sqlite3.Connection, *, write: bool, cache: WriterCache | None = None
    ) -> None:
        super().__init__()
        self._conn = conn
        self._write = write
        self.committed = False
        self._incidents = SqliteIncidents(conn, cache)
        self.incidents = self._incidents
        self.alerts = SqliteAlerts(conn, cache)
        self.events = SqliteEvents(conn)
        self.requests = SqliteRequests(conn)
        if not write:
            conn.execute("BEGIN")

    def commit(self) -> None:
        if not self._write:
            raise RuntimeError("a read unit of work cannot commit")
        self.committed = True
        self.committed_events = list(self._incidents.stored_events)

    def rollback(self) -> None:
        if self._write:
            return  # the writer rolls the job's savepoint back unless it committed
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


@dataclass
class _WriteJob:
    work: Callable[[UnitOfWork], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = None
    events: list[IncidentEvent] = field(default_factory=list)


def _lock_exclusively(path: Path) -> IO[str]:
    """Hold a lock beside the database so that a second server cannot open it.

    Two servers on one file would each keep their own live event fan-out, so
    the subscribers of one would silently miss the other's changes.
    """
    lock = open(path.with_name(path.name + ".lock"), "a+")  # noqa: SIM115 - held until close
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StorageUnavailable(
            f"database {str(path)!r} is already in use by another incident-manager "
            f"(pid {holder}); stop it, or give this one another --database"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns the version it is at now."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StorageUnavailable(
                f"the database schema is version {version}, newer than this server knows "
                f"({len(MIGRATIONS)}); run a newer incident-manager"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            log.info("database schema migrated", extra={"schema_version": number})
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


class SqliteStorage(Storage):
    """Stores everything in one SQLite file (WAL mode, fully synchronous commits).

    Writes use group commit: one writer thread takes every job queued while
    the previous transaction was committing and runs them in one transaction
    (each in its own savepoint), so one fsync covers many acknowledgements.
    No job is answered before the COMMIT that holds it has returned.
    """

    MAX_GROUP = 512
    """Jobs per transaction at most, so one group never delays the next for long."""
    PROBE_SECONDS = 1.0
    """While writes fail (disk full, read-only file), how often the idle writer tries
    a write that changes nothing, so that `available` turns True again without
    traffic: a server whose health says NOT_SERVING gets none."""

    def __init__(self, path: Path | str, *, cache: WriterCache | None = None) -> None:
        super().__init__()
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise StorageUnavailable(
                f"{str(path)!r} is not supported: give the path of a database file"
            )
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_exclusively(self.path)
            self._write_conn = _connect(self.path)
            migrate(self._write_conn)
            self._read_conn = _connect(self.path)
        except (sqlite3.Error, OSError) as error:
            raise StorageUnavailable(f"cannot open database {str(self.path)!r}: {error}") from error
        self._cache = cache if cache is not None else WriterCache()
        self._warm_cache()
        self._broken: str | None = None
        """Why writes can no longer succeed, once the writer cannot recover."""
        self._failing: str | None = None
        """Why the last write failed, until a write succeeds again."""
        self._jobs: queue.SimpleQueue[_WriteJob | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="sqlite-writer", daemon=True)
        self._writer.start()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        self._closed = False

    @property
    def available(self) -> bool:
        """False from a failed write (disk full, read-only file) until a write succeeds."""
        return (
            not self._closed
            and self._broken is None
            and self._failing is None
            and self._writer.is_alive()
        )

    async def write(self, work: Callable[[UnitOfWork], T]) -> T:
        if self._closed:
            raise StorageUnavailable("the database is closed because the server is stopping")
        if self._broken is not None or not self._writer.is_alive():
            raise StorageUnavailable(self._broken or "the database writer has stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_WriteJob(work, loop, future))
        # If the caller is cancelled before the writer reaches the job, the
        # writer skips it; once started, it runs to its end.
        return await future

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._jobs.get(
                    timeout=self.PROBE_SECONDS if self._failing is not None else None
                )
            except queue.Empty:
                self._probe()
                continue
            if first is None:
                break
            group = [first]
            while len(group) < self.MAX_GROUP:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                group.append(job)
            live = [job for job in group if not job.future.cancelled()]
            try:
                self._run_group(live)
            except BaseException as error:
                log.exception("database writer failed", extra={"database": str(self.path)})
                self._broken = self._broken or f"the database writer failed: {error}"
                self._answer(live, failure=self._broken)

    def _warm_cache(self) -> None:
        """Fill the dedup index and the alert-key filter from the database."""
        began = time.monotonic()
        cache = self._cache
        rows = self._write_conn.execute(
            "SELECT fingerprint, create_time, id FROM incidents WHERE state < 5 LIMIT ?",
            (cache.max_fingerprints + 1,),
        ).fetchall()
        cache.load_fingerprints(rows)
        alerts = 0
        for source, alert_id in self._write_conn.execute("SELECT source, alert_id FROM alerts"):
            cache.saw(source, alert_id)
            alerts += 1
        cache.warm = True
        log.info(
            "dedup index loaded",
            extra={
                "open_fingerprints": cache.fingerprint_count,
                "index_complete": cache.fingerprints_complete,
                "alerts": alerts,
                "seconds": round(time.monotonic() - began, 3),
            },
        )

    def _run_group(self, group: list[_WriteJob]) -> None:
        if not group:
            return
        if self._broken is not None:
            self._answer(group, failure=self._broken)
            return
        conn = self._write_conn
        cache = self._cache
        failure: str | None = None
        try:
            if not cache.warm:
                self._warm_cache()
            conn.execute("BEGIN IMMEDIATE")
            for job in group:
                self._run_job(conn, cache, job)
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            failure = f"{error} (database {str(self.path)!r})"
            log.error(
                "database write failed", extra={"database": str(self.path), "error": str(error)}
            )
            cache.clear()
            self._recover(conn)
            self._failing = failure
        else:
            self._writes_work_again()
        self._answer(group, failure=failure)

    def _probe(self) -> None:
        """Rewrite the schema version as it is: a real commit that changes nothing."""
        if self._broken is not None:
            return
        conn = self._write_conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            self._recover(conn)
            self._failing = f"{error} (database {str(self.path)!r})"
        else:
            self._writes_work_again()

    def _writes_work_again(self) -> None:
        if self._failing is not None:
            self._failing = None
            log.warning("database writes work again", extra={"database": str(self.path)})

    def _run_job(self, conn: sqlite3.Connection, cache: WriterCache, job: _WriteJob) -> None:
        """Run one job in its own savepoint; only a broken transaction escapes."""
        cache.begin_job()
        conn.execute("SAVEPOINT job")
        uow = SqliteUnitOfWork(conn, write=True, cache=cache)
        try:
            job.result = job.work(uow)
        except sqlite3.Error as error:
            job.error = StorageUnavailable(f"{error} (database {str(self.path)!r})")
        except Exception as error:  # a domain error: this job's alone
            job.error = error
        kept = job.error is None and uow.committed
        try:
            if kept:
                conn.execute("RELEASE job")
                job.events = uow.committed_events
            else:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
        finally:
            cache.end_job(succeeded=kept)
        if not conn.in_transaction:
            # SQLite rolled the whole transaction back (e.g. disk full):
            # every job of the group is lost, so fail the group.
            raise sqlite3.OperationalError("the transaction was rolled back by SQLite")

    def _answer(self, group: list[_WriteJob], *, failure: str | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_WriteJob]] = {}
        for job in group:
            if failure is not None:
                job.error = StorageUnavailable(failure)
                job.events = []
            by_loop.setdefault(job.loop, []).append(job)
        # One wake-up of each event loop per group, not one per job.
        for loop, jobs in by_loop.items():
            # A closed event loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, jobs)

    def _recover(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            # A connection stuck in a transaction would refuse every later
            # write; start over with a fresh one.
            conn.close()
            try:
                self._write_conn = _connect(self.path)
            except sqlite3.Error as error:
                self._broken = f"cannot reopen the database {str(self.path)!r}: {error}"
                log.error("database writer is broken", extra={"error": self._broken})

    def _deliver(self, jobs: list[_WriteJob]) -> None:
        """On the event loop: publish each job's events, then answer its caller, in order."""
        for job in jobs:
            if job.events:
                self._publish(job.events)
            if job.future.done():
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.result)

    async def read(self, work: Callable[[UnitOfWork], T]) -> T:
        if self._closed:
            raise StorageUnavailable("the database is closed because the server is stopping")

        def run() -> T:
            with SqliteUnitOfWork(self._read_conn, write=False) as uow:
                return work(uow)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, run)
        except sqlite3.Error as error:
            log.error("database error", extra={"database": str(self.path), "error": str(error)})
            raise StorageUnavailable(f"{error} (database {str(self.path)!r})") from error

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._writer.join)
        await loop.run_in_executor(None, self._reader.shutdown, True)
        self._read_conn.close()
        self._write_conn.close()
        self._lock.close()
