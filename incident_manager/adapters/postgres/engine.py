"""The PostgreSQL engine: the pool, the queue of write jobs, the LISTEN follower.

`PostgresStorage` queues each write unit of work; worker threads take what
is queued, up to a group (adapters/postgres/group.py), and run it in one
transaction over a pooled connection; jobs that lost a race go back to the
front of the queue. A lone job starts at once: only what is already queued
waits for a group. Reads run one per worker thread. Every replica's events
are published in sequence order (see the package's docstring for why each
of these is needed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from incident_manager.adapters.postgres.group import (
    MAX_ATTEMPTS,
    MAX_GROUP,
    RACES,
    Group,
    Reruns,
    StaleConnection,
    Unreachable,
    WriteJob,
    reason,
)
from incident_manager.adapters.postgres.repositories import CHANNEL, SQL, PostgresUnitOfWork
from incident_manager.adapters.postgres.schema import migrate
from incident_manager.adapters.postgres.transaction import RaceLost, Transaction
from incident_manager.adapters.sql.rows import event_from_row
from incident_manager.domain.errors import StorageUnavailable
from incident_manager.domain.model import IncidentEvent
from incident_manager.service.ports import Storage, T, UnitOfWork

__all__ = ["MAX_ATTEMPTS", "PostgresStorage", "Unreachable", "is_postgres_url"]

log = logging.getLogger("incident_manager.adapters.postgres")

URL_SCHEMES = ("postgresql://", "postgres://")
DEFAULT_POOL_SIZE = 10
FALLBACK_POLL = 1.0
"""Seconds the follower waits for a notification before it reads anyway."""
FOLLOW_PAGE = 500
CONNECT_TIMEOUT = 3
"""Seconds to establish one connection (libpq's connect_timeout)."""
POOL_TIMEOUT = 3.0
"""Seconds a call waits for a pooled connection before it fails as unavailable."""
LOCAL_PUBLISH_WAIT = 2.0
"""Seconds a write waits for the follower to publish other replicas' events before its own."""


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


GROUP_WORKERS = 3
"""Groups of write jobs one replica runs at once, at most. More groups split the queue
into smaller ones that take each other's fingerprint locks (each loss reruns a job in
a later group): on the 2-core test machine, with 64 callers and 90% duplicates, 9 at
once cost 1,300 µs of CPU per alert in-process against 650-950 µs with 2 or 3, and
were no faster; batches, on the other hand, ran faster with 3 than with 1 or 2."""


def group_workers(pool_size: int) -> int:
    """Threads that run groups of write jobs at once: one connection stays for reads."""
    return max(1, min(GROUP_WORKERS, pool_size - 1))


@dataclass
class _Outcome:
    result: Any
    published: asyncio.Future[None] | None = None
    """Resolved once this replica published the job's events (None: nothing to wait for)."""


async def wait_until_published(published: asyncio.Future[None], seconds: float) -> None:
    """Wait until `published` is resolved, at most `seconds`; a cancellation of the
    caller always propagates.

    Not `asyncio.wait_for`: on Python 3.11 it returns normally, swallowing the
    cancellation, when the caller is cancelled in the same turn as the future
    resolves (tests/integration/test_postgres_group.py shows it).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            # Shielded: the future is shared by every job of a group.
            await asyncio.shield(published)


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
        self._parked: dict[int, list[IncidentEvent]] = {}
        """Own commits that came back before an earlier own commit, by first sequence."""
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="postgres")
        self._queue: collections.deque[WriteJob] = collections.deque()
        self._queue_lock = threading.Lock()
        self._workers = 0
        """Threads taking groups off the queue, at most `_max_workers`."""
        self._max_workers = group_workers(pool_size)
        self._available = True
        self._closed = False
        self._follower: asyncio.Task[None] | None = None
        self._retries = 0
        self._commits = 0
        self._counts_lock = threading.Lock()
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
            raise StorageUnavailable(f"cannot open {self.where}: {reason(error)}") from error
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

    @property
    def commits(self) -> int:
        """Transactions of write jobs committed: fewer than the jobs when they were grouped
        (for tests and tuning)."""
        return self._commits

    def _start_follower(self) -> None:
        if self._follower is None and not self._closed:
            self._follower = asyncio.get_running_loop().create_task(
                self._follow(), name="postgres-follower"
            )

    async def write(self, work: Callable[[UnitOfWork], T]) -> T:
        if self._closed:
            raise StorageUnavailable("the database is closed because the server is stopping")
        self._start_follower()
        loop = asyncio.get_running_loop()
        job = WriteJob(work, loop, loop.create_future(), Reruns(self.where, self._pool.max_size))
        self._enqueue(job)
        # If the caller is cancelled before a worker reaches the job, the job
        # is skipped; once started, it runs to its end.
        outcome: _Outcome = await job.future
        if outcome.published is not None:
            await wait_until_published(outcome.published, LOCAL_PUBLISH_WAIT)
        result: T = outcome.result
        return result

    def _enqueue(self, job: WriteJob) -> None:
        """Queue the job; start a worker if fewer than the most are running."""
        with self._queue_lock:
            self._queue.append(job)
            if self._workers >= self._max_workers:
                return
            self._workers += 1
        self._executor.submit(self._take_groups)

    def _take_groups(self) -> None:
        """On a worker thread: run groups off the queue until it is empty."""
        while True:
            with self._queue_lock:
                if not self._queue:
                    self._workers -= 1
                    return
                group = [self._queue.popleft() for _ in range(min(MAX_GROUP, len(self._queue)))]
            group = [job for job in group if not job.future.cancelled()]
            try:
                again = self._run_group(group)
            except BaseException as error:  # a bug: answer everyone, keep the worker
                log.exception("PostgreSQL group failed", extra={"database": self.where})
                for job in group:
                    job.error = StorageUnavailable(f"{self.where}: {reason(error)}")
                self._answer(group)
                continue
            if again:
                with self._queue_lock:
                    self._queue.extendleft(reversed(again))

    def _run_group(self, jobs: list[WriteJob]) -> list[WriteJob]:
        """Run `jobs` in one transaction and answer them; returns those to run again."""
        if not jobs:
            return []
        answered: list[WriteJob] = []
        again: list[WriteJob] = []
        retried = 0  # jobs run again for a lost race (not a stale connection, not no room)
        try:
            with self._pool.connection() as conn:
                group = Group(Transaction(conn, True, grouped=len(jobs) > 1), jobs, self.where)
                try:
                    group.begin()
                    group.run()
                except BaseException:
                    group.tx.abandon()
                    raise
            answered, again = group.answered, group.again + group.later
            retried = len(group.again)
            if group.committed:
                with self._counts_lock:
                    self._commits += 1
        except StaleConnection as error:
            # Nothing ran; take another connection at once.
            for job in jobs:
                job.reset()
                try:
                    job.reruns.stale_connection(error)
                except Unreachable as unreachable:
                    job.error = unreachable
                    answered.append(job)
                else:
                    again.append(job)
        except (*RACES, RaceLost) as error:
            # Lost at the group's end (numbering or COMMIT): every job runs again.
            for job in jobs:
                job.reset()
                job.raced = True
                try:
                    job.reruns.race_lost(error)
                except Exception as final:
                    job.error = final
                    answered.append(job)
                else:
                    again.append(job)
                    retried += 1
        except (PoolTimeout, psycopg.Error, StorageUnavailable) as error:
            failure = error if isinstance(error, StorageUnavailable) else self._failure(error)
            for job in jobs:
                job.reset()
                job.error = failure
            answered = jobs
        if any(isinstance(job.error, Unreachable) for job in answered):
            self._available = False  # until the follower reads again
        self._answer(answered)
        if retried:
            with self._counts_lock:
                self._retries += retried
        if again:
            pause = max((job.reruns.pause() for job in again if job.raced), default=0.0)
            if pause:
                time.sleep(pause)
        return again

    def _answer(self, jobs: list[WriteJob]) -> None:
        """Hand the answers to each job's event loop, one wake-up per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[WriteJob]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, answers in by_loop.items():
            # A closed event loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, answers)

    def _deliver(self, jobs: list[WriteJob]) -> None:
        """On the event loop: publish the group's events in order, then answer each job."""
        events = sorted((e for job in jobs for e in job.events), key=lambda e: e.sequence)
        published = self._publish_own(events) if events else None
        for job in jobs:
            if job.future.done():
                continue  # the caller was cancelled
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(_Outcome(job.result, published if job.events else None))

    async def read(self, work: Callable[[UnitOfWork], T]) -> T:
        if self._closed:
            raise StorageUnavailable("the database is closed because the server is stopping")
        self._start_follower()
        loop = asyncio.get_running_loop()
        try:
            result: T = await loop.run_in_executor(self._executor, self._read, work)
        except Unreachable:
            self._available = False  # until the follower reads again
            raise
        return result

    def _read(self, work: Callable[[UnitOfWork], Any]) -> Any:
        """On a worker thread: run `work` in a read-only transaction."""
        reruns = Reruns(self.where, max_stale=self._pool.max_size)
        while True:
            reruns.start()
            try:
                with self._pool.connection() as conn:
                    tx = Transaction(conn, write=False)
                    try:
                        try:
                            tx.command("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        except psycopg.OperationalError as error:
                            raise StaleConnection from error
                        result = work(PostgresUnitOfWork(tx))
                        tx.command("ROLLBACK")
                        return result
                    except BaseException:
                        tx.abandon()
                        raise
            except StaleConnection as error:
                reruns.stale_connection(error)
            except (PoolTimeout, psycopg.Error) as error:
                raise self._failure(error) from error

    def _failure(self, error: PoolTimeout | psycopg.Error) -> Exception:
        """What the caller gets for an error that running again would not cure."""
        if isinstance(error, PoolTimeout):
            return Unreachable(
                f"cannot reach {self.where} (no connection within {POOL_TIMEOUT:g}s): "
                f"{reason(error)}"
            )
        if isinstance(error, psycopg.OperationalError):
            return Unreachable(f"{self.where}: {reason(error)}")
        return StorageUnavailable(f"{self.where}: {reason(error)}")

    def _publish_own(self, events: list[IncidentEvent]) -> asyncio.Future[None] | None:
        """Publish this process's commit in order: now if it is next, else once the ones
        before it are (its own, parked, or other replicas', read by the follower).

        Returns what to wait for before answering, so that a client that reads
        its own write on a stream sees it; None when it is published already.
        """
        if events[-1].sequence <= self._published:
            return None  # the follower got there first
        if events[0].sequence <= self._published + 1:
            self._hand_out(events)
            return None
        # Another commit came in between: our own (parked until its worker
        # answers) or another replica's (the follower, woken by our NOTIFY,
        # reads it and ours in order).
        self._parked[events[0].sequence] = events
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((events[-1].sequence, future))
        return future

    def _hand_out(self, events: list[IncidentEvent]) -> None:
        self._publish_in_order(events)
        while self._parked:
            first = min(self._parked)
            if first > self._published + 1:
                break
            self._publish_in_order(self._parked.pop(first))
        if self._waiters:
            waiting = []
            for target, future in self._waiters:
                if target <= self._published:
                    if not future.done():
                        future.set_result(None)
                else:
                    waiting.append((target, future))
            self._waiters = waiting

    def _publish_in_order(self, events: list[IncidentEvent]) -> None:
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
                        extra={"database": self.where, "error": reason(error)},
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
