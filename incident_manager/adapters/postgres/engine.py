"""The PostgreSQL engine: the pool, runs and reruns of units of work, the LISTEN follower.

`PostgresStorage` runs each unit of work on a worker thread over a pooled
connection, runs it again when it lost a race to another replica, and
publishes every replica's events in sequence order (see the package's
docstring for why each of these is needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from incident_manager.adapters.postgres.repositories import (
    CHANNEL,
    SQL,
    PostgresUnitOfWork,
    number_and_store,
)
from incident_manager.adapters.postgres.schema import migrate
from incident_manager.adapters.postgres.transaction import LockBusy, RaceLost, Transaction
from incident_manager.adapters.sql.rows import event_from_row
from incident_manager.domain.errors import StorageUnavailable
from incident_manager.domain.model import IncidentEvent
from incident_manager.service.ports import Storage, T, UnitOfWork

log = logging.getLogger("incident_manager.adapters.postgres")

URL_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_POOL_SIZE = 10
MAX_ATTEMPTS = 6
"""Runs of one unit of work at most, when it loses a race to another transaction."""
MAX_LOCK_ROUNDS = 40
"""Runs at most while each run learns a lock it must take up front (see Transaction.lock)."""
FALLBACK_POLL = 1.0
"""Seconds the follower waits for a notification before it reads anyway."""
FOLLOW_PAGE = 500
CONNECT_TIMEOUT = 3
"""Seconds to establish one connection (libpq's connect_timeout)."""
POOL_TIMEOUT = 3.0
"""Seconds a call waits for a pooled connection before it fails as unavailable."""
LOCAL_PUBLISH_WAIT = 2.0
"""Seconds a write waits for the follower to publish other replicas' events before its own."""

_RACES = (
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.UniqueViolation,
)
"""Errors that mean another transaction got there first: run the unit of work again."""


def is_postgres_url(database: str) -> bool:
    """True for a `postgresql://` or `postgres://` URL: a database for PostgresStorage."""
    return database.startswith(URL_SCHEMES)


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


class Unreachable(StorageUnavailable):
    """The database could not be reached (as opposed to refusing a change)."""


class _StaleConnection(Exception):
    """A pooled connection broke while idle (the database restarted): nothing ran on it."""


@dataclass
class _Outcome:
    result: Any
    events: list[IncidentEvent]


@dataclass
class _Reruns:
    """Why one unit of work runs again, and how often it still may, by reason.

    Every run counts toward MAX_LOCK_ROUNDS; lost races also toward
    MAX_ATTEMPTS; connections broken while idle toward the pool's size.
    """

    where: str
    max_stale: int
    runs: int = 0
    races: int = 0
    stale: int = 0
    prelock: set[int] = field(default_factory=set)
    """Locks the next run takes before its work, in ascending order."""

    def start(self) -> None:
        """Count one more run; StorageUnavailable when none is left."""
        if self.runs == MAX_LOCK_ROUNDS:
            raise StorageUnavailable(
                f"{self.where}: too much contention, gave up after {MAX_LOCK_ROUNDS} runs"
            )
        self.runs += 1

    def stale_connection(self, error: _StaleConnection) -> None:
        """Take another connection: after a restart, every idle one may be broken."""
        self.stale += 1
        if self.stale > self.max_stale:
            raise Unreachable(
                f"cannot reach {self.where}: {_reason(error.__cause__ or error)}"
            ) from error

    def lock_busy(self, busy: LockBusy) -> None:
        """Take every lock learned of before the work; the set grows by one key a run at least."""
        self.prelock |= busy.needed

    def race_lost(self, error: Exception) -> None:
        """Run again, unless the races are lost MAX_ATTEMPTS times."""
        self.races += 1
        if self.races < MAX_ATTEMPTS:
            return
        if isinstance(error, RaceLost):
            raise error
        raise StorageUnavailable(
            f"{self.where} refused the change {MAX_ATTEMPTS} times: {_reason(error)}"
        ) from error

    def pause(self) -> float:
        """Seconds to wait before running again: longer, at random, as races are lost."""
        return random.uniform(0, 0.002 * (self.races + 1))


class PostgresStorage(Storage):
    """Stores everything in a PostgreSQL database that any number of replicas share."""

    def __init__(self, url: str) -> None:
        super().__init__()
        conninfo, pool_size = split_options(url)
        self._conninfo = conninfo
        self.where = describe(conninfo)
        self._pool = _new_pool(conninfo, pool_size)
        self._published = self._open(conninfo)
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

    def _open(self, conninfo: str) -> int:
        """Migrate the schema and fill the pool; returns the last stored sequence."""
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
        return int(row[0]) if row else 0

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
        """On a worker thread: run `work` until it commits, fails, or runs out of reruns."""
        reruns = _Reruns(self.where, max_stale=self._pool.max_size)
        while True:
            reruns.start()
            try:
                return self._run_once(work, write, reruns.prelock)
            except _StaleConnection as error:
                reruns.stale_connection(error)
                continue  # no pause: nothing ran, no one to make way for
            except LockBusy as busy:
                reruns.lock_busy(busy)
            except (*_RACES, RaceLost) as error:
                reruns.race_lost(error)
            except (PoolTimeout, psycopg.Error) as error:
                raise self._failure(error) from error
            with self._retries_lock:
                self._retries += 1
            time.sleep(reruns.pause())

    def _run_once(
        self, work: Callable[[UnitOfWork], Any], write: bool, prelock: set[int]
    ) -> _Outcome:
        """One run in one transaction; whatever goes wrong, it leaves no trace to run again on."""
        with self._pool.connection() as conn:
            tx = Transaction(conn, write)
            try:
                return self._attempt(tx, work, prelock)
            except BaseException:
                tx.abandon()
                raise

    def _attempt(
        self, tx: Transaction, work: Callable[[UnitOfWork], Any], prelock: set[int]
    ) -> _Outcome:
        """Begin, run the work, and commit if it asked to (else roll back)."""
        self._begin(tx, prelock)
        uow = PostgresUnitOfWork(tx)
        result = work(uow)
        if not (tx.write and uow.committed):
            tx.conn.execute("ROLLBACK")
            return _Outcome(result, [])
        uow.committed_events = self._commit(tx)
        return _Outcome(result, uow.committed_events)

    def _begin(self, tx: Transaction, prelock: set[int]) -> None:
        """BEGIN, then take the locks a previous run learned of (ascending: waiting is safe)."""
        try:
            tx.conn.execute(
                "BEGIN" if tx.write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
            )
        except psycopg.OperationalError as error:
            raise _StaleConnection from error
        for key in sorted(prelock):
            tx.lock(key)

    def _commit(self, tx: Transaction) -> list[IncidentEvent]:
        """Number and store the staged events, and COMMIT; returns the events as stored."""
        events = number_and_store(tx)
        try:
            tx.conn.execute("COMMIT")
        except psycopg.OperationalError as error:
            raise Unreachable(
                f"the connection to {self.where} broke while committing, so the change "
                f"may or may not be stored; retrying is safe for alerts: {_reason(error)}"
            ) from error
        return events

    def _failure(self, error: PoolTimeout | psycopg.Error) -> Exception:
        """What the caller gets for an error that running again would not cure."""
        if isinstance(error, PoolTimeout):
            return Unreachable(
                f"cannot reach {self.where} (no connection within {POOL_TIMEOUT:g}s): "
                f"{_reason(error)}"
            )
        if isinstance(error, psycopg.OperationalError):
            return Unreachable(f"{self.where}: {_reason(error)}")
        return StorageUnavailable(f"{self.where}: {_reason(error)}")

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
            cursor = await conn.execute(SQL.events_after, (self._published, FOLLOW_PAGE))
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


def _new_pool(conninfo: str, size: int) -> ConnectionPool[psycopg.Connection[Any]]:
    """The pool of connections units of work run on; opened by PostgresStorage._open."""
    return ConnectionPool(
        conninfo,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
        configure=_configure,
        timeout=POOL_TIMEOUT,
        name="incident-manager",
        open=False,
    )


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
