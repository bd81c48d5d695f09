"""Rate limits and digests in storage: memory, SQLite and PostgreSQL keep them alike.

Every test before the last sections runs unchanged on each backend. Then: two workers on
one PostgreSQL database share one quota, and an SQLite file of the schema before digests
upgrades.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.adapters.postgres import PostgresStorage
from incident_manager.adapters.sql.paging import DIGEST_MIGRATION
from incident_manager.adapters.sql.paging_rows import NOTIFICATION_COLUMNS, notification_row
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.adapters.sqlite.schema import MIGRATIONS
from incident_manager.domain.paging.digest import ChannelWindow, window_start
from incident_manager.domain.paging.ledger import Notification, NotificationState
from incident_manager.domain.paging.model import TargetKind
from incident_manager.service import paging
from incident_manager.service.digests import Claim, claim_deliveries
from incident_manager.service.ports import DeliveryOutcome, PagingRepository, Storage, UnitOfWork
from tests.support.postgres import fresh_database

T = TypeVar("T")
T0 = datetime(2026, 5, 1, 8, 0, 0, 250001, tzinfo=UTC)
LEASE = timedelta(seconds=60)
LIMITS = {"ops-slack": 3}


class Never:
    def delay(self, attempt: int, retry_after: float | None, age: timedelta) -> timedelta | None:
        return None


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "postgres":
        with fresh_database() as url:
            backend: Storage = PostgresStorage(url)
            yield backend
            await backend.close()
        return
    backend = MemoryStorage() if request.param == "memory" else SqliteStorage(tmp_path / "d.db")
    yield backend
    await backend.close()


async def write(storage: Storage, change: Callable[[PagingRepository], T]) -> T:
    def work(uow: UnitOfWork) -> T:
        with uow:
            result = change(uow.paging)
            uow.commit()
        return result

    return await storage.write(work)


async def read(storage: Storage, look: Callable[[PagingRepository], T]) -> T:
    return await storage.read(lambda uow: look(uow.paging))


def page(number: int, due: datetime = T0, channel: str = "ops-slack") -> Notification:
    return Notification(
        id=f"ntf_{number:04d}",
        incident_id=f"inc_{number:04d}",
        policy_id="default",
        level=1,
        round=1,
        target_kind=TargetKind.CHANNEL,
        target_id=channel,
        user_id="",
        channel_id=channel,
        channel_type="slack",
        recipient=channel,
        reason="new incident",
        create_time=due - timedelta(seconds=1),
        ordinal=0,
        content={"severity": "P1", "title": f"GPU node {number} down", "event": "paged"},
        update_time=due,
        next_attempt_time=due,
    )


def claiming(
    worker: str, now: datetime, limit: int = 10, lease: timedelta = LEASE
) -> Callable[[UnitOfWork], Claim]:
    def work(uow: UnitOfWork) -> Claim:
        with uow:
            claim = claim_deliveries(uow.paging, worker, now, now + lease, limit, LIMITS)
            uow.commit()
        return claim

    return work


async def test_a_channel_window_is_created_empty_and_keeps_what_was_saved(
    storage: Storage,
) -> None:
    later = T0 + timedelta(seconds=30)
    found = await write(storage, lambda p: p.lock_channel_windows(["a", "b"], later))
    assert found == {
        "a": ChannelWindow("a", window_start(T0)),
        "b": ChannelWindow("b", window_start(T0)),
    }
    kept = ChannelWindow("a", window_start(T0), used=2, open_digests={"a": "ntf_d"})
    await write(storage, lambda p: p.save_channel_window(kept))
    again = await write(storage, lambda p: p.lock_channel_windows(["a"], later))
    assert again == {"a": kept}


async def test_due_deliveries_are_found_without_being_claimed_then_claimed_by_id(
    storage: Storage,
) -> None:
    await write(storage, lambda p: p.add_notifications([page(1), page(2, T0 + LEASE), page(3)]))
    due = await write(storage, lambda p: p.due_notifications(T0, 10))
    assert [n.id for n in due] == ["ntf_0001", "ntf_0003"]
    assert all((n.claimed_by, n.attempts) == ("", 0) for n in due)
    claimed = await write(storage, lambda p: p.claim_these(["ntf_0003"], "w_1", T0 + LEASE))
    assert [(n.id, n.claimed_by, n.attempts, n.claim_until) for n in claimed] == [
        ("ntf_0003", "w_1", 1, T0 + LEASE)
    ]
    assert [n.id for n in await write(storage, lambda p: p.due_notifications(T0, 10))] == [
        "ntf_0001"
    ]


async def test_pages_past_the_quota_wait_in_one_digest_that_is_due_next_window(
    storage: Storage,
) -> None:
    await write(storage, lambda p: p.add_notifications([page(n) for n in range(8)]))
    claim = await storage.write(claiming("w_1", T0))
    assert (len(claim.claimed), dict(claim.folded), claim.deferred) == (3, {"ops-slack": 5}, 0)
    ledger = [await read(storage, lambda p, n=n: p.notification(f"ntf_{n:04d}")) for n in range(8)]  # type: ignore[misc]
    digest_ids = {n.digest_id for n in ledger if n is not None and n.digest_id}
    assert len(digest_ids) == 1
    [digest_id] = digest_ids
    digest = await read(storage, lambda p: p.notification(digest_id))
    assert digest is not None and digest.is_digest
    assert (digest.reason, digest.next_attempt_time) == (
        "digest of 5 pages", window_start(T0) + timedelta(minutes=1),
    )  # fmt: skip
    assert digest.content["digest"]["total"] == 5  # type: ignore[index]
    folded = await read(storage, lambda p: p.folded_into(digest_id))
    assert [n.id for n in folded] == [f"ntf_{n:04d}" for n in range(3, 8)]
    assert all(n.next_attempt_time is None for n in folded)
    # Still pending for their incidents (an acknowledgement suppresses them), never due.
    assert [n.id for n in await read(storage, lambda p: p.pending_notifications("inc_0004"))] == [
        "ntf_0004"
    ]
    assert await read(storage, lambda p: p.next_due()) == digest.next_attempt_time
    listed = await read(storage, lambda p: p.list_notifications("inc_0004", None, 10))
    assert [n.digest_id for n in listed] == [digest_id]

    # More pages in the same window join the same digest; its content keeps what it had.
    await write(storage, lambda p: p.add_notifications([page(n) for n in range(8, 10)]))
    await storage.write(claiming("w_2", T0 + timedelta(seconds=10)))
    digest = await read(storage, lambda p: p.notification(digest_id))
    assert digest is not None and digest.reason == "digest of 7 pages"
    listed_ids = [p["notification_id"] for p in digest.content["digest"]["pages"]]  # type: ignore[index]
    assert listed_ids == [f"ntf_{n:04d}" for n in range(3, 10)]


async def test_the_digest_takes_the_next_windows_first_slot_and_its_pages_end_as_it_does(
    storage: Storage,
) -> None:
    await write(storage, lambda p: p.add_notifications([page(n) for n in range(5)]))
    await storage.write(claiming("w_1", T0))
    next_window = window_start(T0) + timedelta(minutes=1)
    late = [page(n, next_window) for n in range(5, 9)]
    await write(storage, lambda p: p.add_notifications(late))
    claim = await storage.write(claiming("w_1", next_window, limit=20))
    digest = next(n for n in claim.claimed if n.is_digest)
    assert len(claim.claimed) == 3 and dict(claim.folded) == {"ops-slack": 2}
    # Claimed: the digest takes no more pages; the two late ones open the next digest.
    second = await read(storage, lambda p: p.notification("ntf_0008"))
    assert second is not None and second.digest_id not in ("", digest.id)

    def record(uow: UnitOfWork) -> NotificationState | None:
        with uow:
            state = paging.record_delivery(
                uow.paging, uow.incidents, digest.id, "w_1", 1,
                DeliveryOutcome(sent=True, retry=False, detail="HTTP 200 ok", status=200),
                Never(), next_window,
            )  # fmt: skip
            uow.commit()
        return state

    assert await storage.write(record) is NotificationState.SENT
    for n in (3, 4):
        folded = await read(storage, lambda p, n=n: p.notification(f"ntf_{n:04d}"))  # type: ignore[misc]
        assert folded is not None
        assert (folded.state, folded.last_error, folded.send_time, folded.digest_id) == (
            NotificationState.SENT, f"SENT in digest {digest.id}", next_window, digest.id,
        )  # fmt: skip
    assert await read(storage, lambda p: p.folded_into(digest.id)) == []


async def test_a_due_digest_goes_first_even_behind_a_backlog_of_older_pages(
    storage: Storage,
) -> None:
    await write(storage, lambda p: p.add_notifications([page(n) for n in range(4)]))
    await storage.write(claiming("w_1", T0))  # 3 sent, 1 folded into the digest
    backlog = [page(n, T0 + timedelta(seconds=30 + n)) for n in range(10, 20)]
    await write(storage, lambda p: p.add_notifications(backlog))
    next_window = window_start(T0) + timedelta(minutes=1)
    claim = await storage.write(claiming("w_1", next_window, limit=3))
    assert [n.is_digest for n in claim.claimed].count(True) == 1
    assert len(claim.claimed) == 3 and dict(claim.folded) == {"ops-slack": 1}


async def test_retries_past_the_quota_wait_for_the_next_window(storage: Storage) -> None:
    retried = page(1, T0 + timedelta(seconds=1))
    retried.attempts = 2
    await write(storage, lambda p: p.add_notifications([page(n) for n in range(2, 5)] + [retried]))
    claim = await storage.write(claiming("w_1", T0 + timedelta(seconds=1)))
    assert (len(claim.claimed), claim.deferred) == (3, 1)
    waiting = await read(storage, lambda p: p.notification("ntf_0001"))
    assert waiting is not None
    assert (waiting.next_attempt_time, waiting.digest_id, waiting.attempts) == (
        window_start(T0) + timedelta(minutes=1), "", 2,
    )  # fmt: skip


# PostgreSQL only: replicas share one quota.


class Meeting:
    """The paging repository, except that a claim, once it has read its due deliveries,
    waits (at most half a second) for the other replica's claim to get as far: without the
    window row's lock both would then count from the same row and both use the quota."""

    def __init__(self, paging: PagingRepository, barrier: threading.Barrier) -> None:
        self._paging = paging
        self._barrier = barrier

    def __getattr__(self, name: str) -> Any:
        return getattr(self._paging, name)

    def due_notifications(self, now: datetime, limit: int) -> list[Notification]:
        found = self._paging.due_notifications(now, limit)
        with contextlib.suppress(threading.BrokenBarrierError):
            self._barrier.wait(timeout=0.5)  # with the lock, the other is waiting for us
        return found


def meeting(
    worker: str, now: datetime, barrier: threading.Barrier
) -> Callable[[UnitOfWork], Claim]:
    def work(uow: UnitOfWork) -> Claim:
        with uow:
            repository = cast(PagingRepository, Meeting(uow.paging, barrier))
            # Leases outlast the test: nothing claimed comes back as a retry.
            until = now + timedelta(hours=1)
            claim = claim_deliveries(repository, worker, now, until, 25, LIMITS)
            uow.commit()
        return claim

    return work


async def test_two_workers_on_one_postgresql_database_never_exceed_the_quota_together() -> None:
    with fresh_database() as url:
        replicas = (PostgresStorage(url), PostgresStorage(url))
        try:
            for minute in range(3):
                now = window_start(T0) + timedelta(minutes=minute, seconds=1)
                fresh = [page(minute * 100 + n, now) for n in range(40)]
                await write(replicas[0], lambda p, f=fresh: p.add_notifications(f))  # type: ignore[misc]
                barrier = threading.Barrier(2)
                claims = await asyncio.gather(
                    *(
                        replica.write(meeting(f"w{n}", now, barrier))
                        for n, replica in enumerate(replicas)
                    )
                )
                pages = [n for c in claims for n in c.claimed if not n.is_digest]
                digests = [n for c in claims for n in c.claimed if n.is_digest]
                # The digest of the minute before takes one of the three slots.
                assert len(pages) + len(digests) == LIMITS["ops-slack"]
                assert len(digests) == (1 if minute else 0)
                assert sum(c.folded.get("ops-slack", 0) for c in claims) == 40 - len(pages)
        finally:
            for replica in replicas:
                await replica.close()


# SQLite only: a file from before digests upgrades.


async def test_an_sqlite_file_of_the_schema_before_digests_upgrades_and_keeps_its_ledger(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v7.db"
    previous = MIGRATIONS.index(DIGEST_MIGRATION)
    old_columns = NOTIFICATION_COLUMNS[: NOTIFICATION_COLUMNS.index("digest_id")]
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for script in MIGRATIONS[:previous]:
            conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {previous}")
        conn.execute(
            f"INSERT INTO notifications ({', '.join(old_columns)})"
            f" VALUES ({', '.join('?' * len(old_columns))})",
            notification_row(page(1))[: len(old_columns)],
        )
    storage = SqliteStorage(path)
    try:
        kept = await read(storage, lambda p: p.notification("ntf_0001"))
        assert kept is not None and (kept.digest_id, kept.content) == ("", page(1).content)
        claim = await storage.write(claiming("w_1", T0))
        assert [n.id for n in claim.claimed] == ["ntf_0001"]
    finally:
        await storage.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM notifications"
            " WHERE digest_id = ? AND digest_id <> '' AND state = 1",
            ("ntf_x",),
        ).fetchall()
    assert "notifications_by_digest" in " ".join(row[3] for row in plan)
