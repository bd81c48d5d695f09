"""Group commit: the write jobs queued on one replica, run in one transaction.

Each job (one unit of work) runs in a savepoint of its own. A job that
raises, or returns without committing, is rolled back to its savepoint
alone, and the others carry on; a job that lost a race (a lock it may not
wait for, a unique violation, a deadlock, an incident changed under it) is
rolled back alone too and handed back, to run again in a later group that
takes its locks first. The kept jobs' events are numbered together, so the
event counter is locked once per group, and the group commits once: nobody
is answered before that COMMIT returned, and when it fails, every job of the
group fails or runs again, none is acknowledged.

A group of one job takes no savepoint: it costs the statements it did
before group commit existed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from incident_manager.adapters.postgres.repositories import PostgresUnitOfWork, number_and_store
from incident_manager.adapters.postgres.transaction import LockBusy, RaceLost, Transaction
from incident_manager.domain.errors import StorageUnavailable
from incident_manager.domain.model import IncidentEvent
from incident_manager.service.ports import UnitOfWork

MAX_GROUP = 64
"""Jobs in one transaction at most. Each job that writes takes a subtransaction id, and
PostgreSQL keeps 64 of them per transaction in shared memory; past that, every other
session's snapshots must look them up on disk (pg_subtrans), which slows them all."""
MAX_GROUP_EVENTS = 1000
"""Once this many events are staged, the group takes no more jobs: a bound on how long
one group holds its locks (1000 events are also what one numbering statement stores)."""
MAX_ATTEMPTS = 6
"""Runs of one unit of work at most, when it loses a race to another transaction."""
MAX_LOCK_ROUNDS = 40
"""Runs at most while each run learns a lock it must take up front (see Transaction.lock)."""

RACES = (
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
    pg_errors.UniqueViolation,
)
"""Errors that mean another transaction got there first: run the unit of work again."""


class StaleConnection(Exception):
    """A pooled connection broke while idle (the database restarted): nothing ran on it."""


class Unreachable(StorageUnavailable):
    """The database could not be reached (as opposed to refusing a change)."""


def reason(error: BaseException) -> str:
    """One line saying why, without libpq's multi-line decoration."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


@dataclass
class Reruns:
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

    def stale_connection(self, error: StaleConnection) -> None:
        """Take another connection: after a restart, every idle one may be broken."""
        self.stale += 1
        if self.stale > self.max_stale:
            raise Unreachable(
                f"cannot reach {self.where}: {reason(error.__cause__ or error)}"
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
            f"{self.where} refused the change {MAX_ATTEMPTS} times: {reason(error)}"
        ) from error

    def pause(self) -> float:
        """Seconds to wait before running again: longer, at random, as races are lost."""
        return random.uniform(0, 0.002 * (self.races + 1))


@dataclass
class WriteJob:
    """One unit of work waiting on an event loop for its group's COMMIT."""

    work: Callable[[UnitOfWork], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    reruns: Reruns
    result: Any = None
    error: BaseException | None = None
    events: list[IncidentEvent] = field(default_factory=list)
    """The job's events as stored, once its group committed."""
    raced: bool = False
    """The last run lost a race to another transaction (pause before the next)."""

    def reset(self) -> None:
        """Forget what a previous run found: this run decides anew."""
        self.result = None
        self.error = None
        self.events = []
        self.raced = False


@dataclass
class _Kept:
    job: WriteJob
    uow: PostgresUnitOfWork
    first_event: int
    """Index of the job's first event among the group's staged events."""
    end_event: int


class Group:
    """Runs a group of jobs in one transaction; `run` returns with every job decided.

    Afterwards each job is answered (its `result` or `error`, and `events`
    once committed) or in `again`, to run in a later group. Whatever escapes
    `run` (a broken connection, a race at COMMIT) concerns the whole group:
    the caller abandons the transaction, and fails or reruns every job.
    """

    def __init__(self, tx: Transaction, jobs: list[WriteJob], where: str) -> None:
        self.tx = tx
        self.jobs = jobs
        self.where = where
        self.answered: list[WriteJob] = []
        self.again: list[WriteJob] = []
        self.later: list[WriteJob] = []
        """Jobs the group had no room for (MAX_GROUP_EVENTS): they were not run."""
        self.committed = False
        self._kept: list[_Kept] = []
        self._savepoint = False
        """A savepoint is open, and the job before released nothing into it yet."""

    def begin(self) -> None:
        """BEGIN, then take the locks earlier runs learned of (ascending: waiting is safe)."""
        prelock: set[int] = set()
        for job in self.jobs:
            prelock |= job.reruns.prelock
        # In a group, the first job's savepoint comes with the BEGIN (one round trip).
        first_savepoint = self.tx.grouped and not prelock
        try:
            self.tx.command("BEGIN; SAVEPOINT job" if first_savepoint else "BEGIN")
        except psycopg.OperationalError as error:
            raise StaleConnection from error
        self._savepoint = first_savepoint
        for key in sorted(prelock):
            self.tx.lock(key)

    def run(self) -> None:
        """Run every job, then number the kept jobs' events and COMMIT (or ROLLBACK)."""
        for index, job in enumerate(self.jobs):
            if index and len(self.tx.staged) >= MAX_GROUP_EVENTS:
                self.later = self.jobs[index:]
                break
            self._run_job(job)
        if not self._kept:
            if self.tx.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.tx.command("ROLLBACK")
            return
        events = number_and_store(self.tx)
        commit(self.tx, self.where)
        self.committed = True
        for kept in self._kept:
            kept.job.events = events[kept.first_event : kept.end_event]
            kept.uow.committed_events = kept.job.events
            self.answered.append(kept.job)

    def _run_job(self, job: WriteJob) -> None:
        tx = self.tx
        job.reset()
        try:
            job.reruns.start()
        except StorageUnavailable as error:
            job.error = error
            self.answered.append(job)
            return
        if tx.grouped:
            self._open_savepoint()
        tx.begin_job()
        uow = PostgresUnitOfWork(tx)
        try:
            job.result = job.work(uow)
        except LockBusy as busy:
            self._undo(job)
            job.reruns.lock_busy(busy)
            self.again.append(job)
            return
        except (*RACES, RaceLost) as error:
            self._undo(job)
            job.raced = True
            try:
                job.reruns.race_lost(error)
            except Exception as final:
                job.error = final
                self.answered.append(job)
            else:
                self.again.append(job)
            return
        except psycopg.Error as error:
            if tx.conn.broken or not tx.grouped:
                raise  # the connection is gone, or the job was the whole transaction
            self._undo(job)
            job.error = StorageUnavailable(f"{job.reruns.where}: {reason(error)}")
            self.answered.append(job)
            return
        except Exception as error:  # a domain error: this job's alone
            self._undo(job)
            job.error = error
            self.answered.append(job)
            return
        if uow.committed:
            self._kept.append(_Kept(job, uow, tx.job_events(), len(tx.staged)))
            self._savepoint = False  # kept: the next job releases it first
        else:
            self._undo(job)
            self.answered.append(job)

    def _open_savepoint(self) -> None:
        """A savepoint for the next job: release the kept job's and open another, in one
        round trip; a savepoint just rolled back to is still open and clean."""
        if self._savepoint:
            return
        if self._kept:
            self.tx.command("RELEASE SAVEPOINT job; SAVEPOINT job")
        else:
            self.tx.command("SAVEPOINT job")
        self._savepoint = True

    def _undo(self, job: WriteJob) -> None:
        """Roll the job back alone (to its savepoint); a lone job ends the transaction."""
        tx = self.tx
        if not tx.grouped:
            tx.abandon()
            return
        tx.command("ROLLBACK TO SAVEPOINT job")
        tx.undo_job()
        self._savepoint = True


def commit(tx: Transaction, where: str) -> None:
    """COMMIT; a connection that breaks meanwhile leaves the outcome unknown."""
    try:
        tx.command("COMMIT")
    except psycopg.OperationalError as error:
        if isinstance(error, RACES):
            raise
        raise Unreachable(
            f"the connection to {where} broke while committing, so the change "
            f"may or may not be stored; retrying is safe for alerts: {reason(error)}"
        ) from error
