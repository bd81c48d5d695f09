"""Group commit on PostgreSQL: write jobs queued on one replica share one transaction.

A storage with `pool_size=2` has one thread running groups. A first job that
blocks on an event holds that thread, so the jobs written meanwhile queue up
behind it and run, when it is released, as one group: what each test checks
is what that group does with a failing job, a failing COMMIT, or another
replica deciding the same fingerprints at the same moment.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import psycopg
import pytest

from incident_manager.adapters.postgres import PostgresStorage
from incident_manager.adapters.postgres.engine import wait_until_published
from incident_manager.adapters.postgres.repositories import SQL
from incident_manager.adapters.postgres.transaction import lock_key
from incident_manager.adapters.sql.rows import alert_values
from incident_manager.domain.errors import IncidentNotFound, StorageUnavailable
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    AlertAck,
    Incident,
    IncidentEvent,
    IncidentType,
    ReceivedAlert,
    Severity,
)
from incident_manager.domain.query import IncidentQuery
from incident_manager.service.handlers import submit_alert
from incident_manager.service.ports import UnitOfWork
from tests.support.polling import eventually
from tests.support.postgres import fresh_database

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def incident(title: str) -> Incident:
    return Incident.open(
        title=title, description="", severity=Severity.P2, type=IncidentType.DATA,
        source="drift-detector", affected_resources=[], labels={}, assignees=[],
        fingerprint=f"fp-{title}", actor="drift-detector", now=T0, alert_count=1,
    )  # fmt: skip


def add(item: Incident, *, then_fail: bool = False) -> Callable[[UnitOfWork], str]:
    def work(uow: UnitOfWork) -> str:
        with uow:
            uow.incidents.add(item)
            if then_fail:
                raise IncidentNotFound(item.id)
            uow.commit()
        return item.id

    return work


@asynccontextmanager
async def one_group_behind_a_blocker(
    storage: PostgresStorage,
) -> AsyncIterator[Callable[[Callable[[UnitOfWork], Any]], Awaitable[Any]]]:
    """Jobs written inside the block queue behind a blocked job and run as one group
    when the block ends; yields how to write one."""
    started, release = threading.Event(), threading.Event()

    def blocker(uow: UnitOfWork) -> str:
        started.set()
        release.wait(timeout=30)
        return add(incident("blocker"))(uow)

    blocked = asyncio.ensure_future(storage.write(blocker))
    await asyncio.to_thread(started.wait, 30)
    queued: list[asyncio.Future[Any]] = []

    async def write(work: Callable[[UnitOfWork], Any]) -> Any:
        queued.append(asyncio.ensure_future(storage.write(work)))
        return await queued[-1]

    try:
        yield write
    finally:
        release.set()
        await blocked


async def titles(storage: PostgresStorage) -> list[str]:
    page = await storage.read(lambda uow: uow.incidents.list(IncidentQuery()))
    return sorted(i.title for i in page.incidents)


async def test_a_caller_cancelled_as_its_events_are_published_is_cancelled() -> None:
    published = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(wait_until_published(published, 2.0))
    await asyncio.sleep(0)
    published.set_result(None)
    waiting.cancel()  # in the same turn: asyncio.wait_for would return normally here
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_group_where_one_job_fails_commits_the_others() -> None:
    with fresh_database() as url:
        storage = PostgresStorage(url + "?pool_size=2")
        heard: list[int] = []
        storage.add_listener(lambda events: heard.extend(e.sequence for e in events))
        try:
            async with one_group_behind_a_blocker(storage) as write:
                results = asyncio.gather(
                    write(add(incident("first"))),
                    write(add(incident("doomed"), then_fail=True)),
                    write(add(incident("second"))),
                    return_exceptions=True,
                )
                await asyncio.sleep(0)  # every job queued behind the blocker
            first, doomed, second = await results
            assert isinstance(first, str) and isinstance(second, str)
            assert isinstance(doomed, IncidentNotFound)
            assert storage.commits == 2  # the blocker's, then one for the group of three
            assert await titles(storage) == ["blocker", "first", "second"]
            assert heard == [1, 2, 3]
        finally:
            await storage.close()


async def test_a_failed_commit_acknowledges_no_job_of_its_group() -> None:
    with fresh_database() as url:
        storage = PostgresStorage(url + "?pool_size=2")
        with psycopg.connect(url, autocommit=True) as conn:
            # Checked at COMMIT: the group's last statement is the one that fails.
            conn.execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF NEW.title = 'poison' THEN RAISE EXCEPTION 'poison refused';"
                " END IF; RETURN NULL; END $$"
            )
            conn.execute(
                "CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON incidents"
                " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        heard: list[int] = []
        storage.add_listener(lambda events: heard.extend(e.sequence for e in events))
        try:
            async with one_group_behind_a_blocker(storage) as write:
                results = asyncio.gather(
                    write(add(incident("first"))),
                    write(add(incident("poison"))),
                    write(add(incident("second"))),
                    return_exceptions=True,
                )
                await asyncio.sleep(0)
            answers = await results
            assert all(isinstance(a, StorageUnavailable) for a in answers), answers
            assert "poison refused" in str(answers[0])
            assert await titles(storage) == ["blocker"]
            assert heard == [1]
            assert storage.commits == 1
            assert storage.available
        finally:
            await storage.close()


def hear(sequences: list[int], events: list[IncidentEvent]) -> None:
    sequences.extend(e.sequence for e in events)


def storm_alert(problem: int, alert_id: str) -> Alert:
    return Alert(
        id=alert_id, source="rack-7", title=f"fan {problem} stopped", severity=Severity.P2,
        type=IncidentType.DATA,
    )  # fmt: skip


async def test_two_replicas_grouping_one_set_of_fingerprints_open_one_incident_each() -> None:
    problems, per_replica = 8, 20
    with fresh_database() as url:
        replicas = [PostgresStorage(url + "?pool_size=4") for _ in range(2)]
        heard: list[list[int]] = [[], []]
        for replica, sequences in zip(replicas, heard, strict=True):
            replica.add_listener(partial(hear, sequences))
        try:

            def submit(replica: PostgresStorage, one: Alert) -> Awaitable[AlertAck]:
                return replica.write(
                    partial(submit_alert, alert=one, window=timedelta(minutes=15), now=T0)
                )

            # Every alert twice, the retry through the other replica, all at once and
            # interleaved, so that both replicas' groups decide every fingerprint.
            sends = [
                (replicas[(n + retry) % 2], storm_alert(problem, f"r{n % 2}-{problem}-{n}"))
                for n in range(2 * per_replica)
                for problem in range(problems)
                for retry in (0, 1)
            ]
            acks = await asyncio.gather(*(submit(replica, one) for replica, one in sends))
            by_alert: dict[str, set[tuple[AckStatus, str]]] = {}
            for (_, one), ack in zip(sends, acks, strict=True):
                by_alert.setdefault(one.id, set()).add((ack.status, ack.incident_id))
            assert all(len(answers) == 1 for answers in by_alert.values())  # retries agree
            page = await replicas[0].read(
                lambda uow: uow.incidents.list(IncidentQuery(page_size=100))
            )
            per_title = Counter(i.title for i in page.incidents)
            assert per_title == {f"fan {p} stopped": 1 for p in range(problems)}
            assert {i.alert_count for i in page.incidents} == {2 * per_replica}  # exact counts
            # Group commit was on: each replica committed fewer transactions than jobs.
            for replica in replicas:
                assert replica.commits < len(sends) / 2
            # Each replica published every event of both, once, in sequence order.
            last = await replicas[0].read(lambda uow: uow.events.last_sequence())

            async def caught_up() -> bool:
                return all(sequences[-1:] == [last] for sequences in heard)

            await eventually(caught_up, what="both replicas to publish the last event")
            assert heard == [list(range(1, last + 1))] * 2
        finally:
            for replica in replicas:
                await replica.close()


async def test_a_lookup_that_waited_for_a_lock_sees_what_its_holder_committed() -> None:
    with fresh_database() as url:
        storage = PostgresStorage(url)
        try:
            key = lock_key("alert", "rack-7", "fan-1")
            with psycopg.connect(url) as holder:  # one transaction until the block ends
                holder.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                stored = ReceivedAlert(
                    alert=storm_alert(1, "fan-1"), incident_id="inc_1",
                    status=AckStatus.ACCEPTED, fingerprint="fp", receive_time=T0,
                )  # fmt: skip
                holder.execute(SQL.insert_alert, alert_values(stored))
                lookup = asyncio.ensure_future(
                    storage.write(lambda uow: uow.alerts.get("rack-7", "fan-1"))
                )
                await eventually_waiting_for_a_lock(url)
                assert not lookup.done()
            # The holder committed: the lookup, in one statement that took the lock
            # first, reads the row committed while it waited.
            found = await lookup
            assert found is not None and found.incident_id == "inc_1"
        finally:
            await storage.close()


async def eventually_waiting_for_a_lock(url: str) -> None:
    """Until a session of the database waits for an advisory lock."""

    async def waiting() -> bool:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
        return bool(row and row[0])

    await eventually(waiting, what="a session to wait for the advisory lock")
