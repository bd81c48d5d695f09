"""The SQLite engine: one writer thread with group commit, one reader, one file.

`SqliteStorage` runs every write job on its writer thread, many jobs to one
transaction, and reads on a reader thread of their own.
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
from pathlib import Path
from typing import IO, Any

from incident_manager.adapters.sqlite.cache import WriterCache
from incident_manager.adapters.sqlite.repositories import SqliteUnitOfWork
from incident_manager.adapters.sqlite.schema import migrate
from incident_manager.domain.errors import StorageUnavailable
from incident_manager.domain.model import IncidentEvent
from incident_manager.service.ports import Storage, T, UnitOfWork

log = logging.getLogger("incident_manager.adapters.sqlite")


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


WRITER_CACHE_KIB = 64 * 1024
"""The writer's page cache (SQLite's default is 2 MiB). New incidents go into two indexes
on random keys (the id and the fingerprint); once those outgrow the cache, every insert
reads pages back. Measured with 500-row INSERTs at 60,000 stored incidents: 72 µs of CPU
per incident row with the default, 33 µs with this."""


def _connect(path: Path, *, cache_kib: int = 0) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    if cache_kib:
        conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
    return conn


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

    def __init__(
        self,
        path: Path | str,
        *,
        cache: WriterCache | None = None,
        cache_kib: int = WRITER_CACHE_KIB,
    ) -> None:
        super().__init__()
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise StorageUnavailable(
                f"{str(path)!r} is not supported: give the path of a database file"
            )
        self.path = Path(path)
        self._cache_kib = cache_kib
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_exclusively(self.path)
            self._write_conn = _connect(self.path, cache_kib=self._cache_kib)
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
            group, stopping = self._group_behind(first)
            live = [job for job in group if not job.future.cancelled()]
            try:
                self._run_group(live)
            except BaseException as error:
                log.exception("database writer failed", extra={"database": str(self.path)})
                self._broken = self._broken or f"the database writer failed: {error}"
                self._answer(live, failure=self._broken)

    def _group_behind(self, first: _WriteJob) -> tuple[list[_WriteJob], bool]:
        """`first` and the jobs queued behind it, up to MAX_GROUP; True if one said stop."""
        group = [first]
        while len(group) < self.MAX_GROUP:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return group, True
            group.append(job)
        return group, False

    def _warm_cache(self) -> None:
        """Fill the dedup index and the alert-key filter from the database."""
        began = time.monotonic()
        cache = self._cache
        rows = self._write_conn.execute(
            "SELECT fingerprint, last_alert_time, id FROM incidents WHERE state < 5 LIMIT ?",
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
                self._write_conn = _connect(self.path, cache_kib=self._cache_kib)
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
