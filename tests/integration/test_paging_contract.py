"""The paging storage contract: memory, SQLite and PostgreSQL keep paging state alike.

Every test before the last sections runs unchanged on each backend. At the
end: what only PostgreSQL promises (replicas claim different rows), and the
query plans of SQLite's claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.adapters.postgres import PostgresStorage
from incident_manager.adapters.sql.paging import SqlPaging
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.adapters.sqlite.repositories import DIALECT as SQLITE
from incident_manager.domain.errors import ConcurrentModification
from incident_manager.domain.model import IncidentType, Severity
from incident_manager.domain.paging.ledger import (
    Escalation,
    EscalationStatus,
    Notification,
    NotificationState,
)
from incident_manager.domain.paging.model import (
    EscalationPolicy,
    Level,
    Matcher,
    Override,
    Silence,
    Target,
    TargetKind,
)
from incident_manager.service.ports import PagingRepository, Storage, UnitOfWork
from tests.support.postgres import fresh_database

T = TypeVar("T")
# Microseconds are part of every time: a backend that rounds them fails.
T0 = datetime(2026, 5, 1, 8, 0, 0, 250001, tzinfo=UTC)
LEASE = timedelta(seconds=60)

CRITICAL = EscalationPolicy(
    id="critical",
    levels=(
        Level(
            timedelta(0),
            (Target(TargetKind.SCHEDULE, "primary"), Target(TargetKind.CHANNEL, "ops-hook")),
        ),
        Level(timedelta(minutes=10, microseconds=7), (Target(TargetKind.USER, "bob"),)),
    ),
    ack_timeout=timedelta(minutes=30),
    repeat=2,
    repeat_after=timedelta(minutes=5),
)
DEFAULT = EscalationPolicy(
    id="default", levels=(Level(timedelta(0), (Target(TargetKind.CHANNEL, "ops-hook"),)),)
)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "postgres":
        with fresh_database() as url:
            backend: Storage = PostgresStorage(url)
            yield backend
            await backend.close()
        return
    backend = MemoryStorage() if request.param == "memory" else SqliteStorage(tmp_path / "p.db")
    yield backend
    await backend.close()


async def write(storage: Storage, change: Callable[[PagingRepository], T]) -> T:
    """Run `change` in a unit of work that commits."""

    def work(uow: UnitOfWork) -> T:
        with uow:
            result = change(uow.paging)
            uow.commit()
        return result

    return await storage.write(work)


async def read(storage: Storage, look: Callable[[PagingRepository], T]) -> T:
    """Run `look` against the committed state, in a read unit of work."""
    return await storage.read(lambda uow: look(uow.paging))


def escalation(
    incident_id: str,
    due_at: datetime | None = T0,
    *,
    status: EscalationStatus = EscalationStatus.ACTIVE,
    silenced_by: str = "",
    policy: EscalationPolicy = CRITICAL,
) -> Escalation:
    return Escalation(
        incident_id=incident_id,
        policy=policy,
        route=1,
        status=status,
        started_at=T0 - timedelta(minutes=20),
        due_at=due_at,
        silenced_by=silenced_by,
    )


def notification(
    notification_id: str,
    next_attempt_time: datetime | None = T0,
    *,
    incident_id: str = "inc_1",
    state: NotificationState = NotificationState.PENDING,
    create_time: datetime = T0 - timedelta(minutes=5),
    ordinal: int = 0,
    claimed_by: str = "",
    claim_until: datetime | None = None,
    attempts: int = 0,
) -> Notification:
    return Notification(
        id=notification_id,
        incident_id=incident_id,
        policy_id="critical",
        level=1,
        round=0,
        target_kind=TargetKind.SCHEDULE,
        target_id="primary",
        user_id="alice",
        channel_id="ops-hook",
        channel_type="webhook",
        recipient="https://hooks.example.com/ops",
        reason="new incident",
        create_time=create_time,
        ordinal=ordinal,
        state=state,
        attempts=attempts,
        next_attempt_time=next_attempt_time,
        claimed_by=claimed_by,
        claim_until=claim_until,
    )


def silence(
    silence_id: str,
    start: datetime,
    end: datetime,
    *,
    create_time: datetime | None = None,
) -> Silence:
    return Silence(
        id=silence_id,
        matcher=Matcher(sources=frozenset({"llm-shield"})),
        start=start,
        end=end,
        created_by="alice",
        comment="maintenance",
        create_time=create_time or start,
    )


def override(
    override_id: str, start: datetime, end: datetime, schedule_id: str = "primary"
) -> Override:
    return Override(
        id=override_id,
        schedule_id=schedule_id,
        user_id="bob",
        start=start,
        end=end,
        created_by="alice",
        create_time=T0 - timedelta(days=1),
    )


def ids(items: Sequence[Escalation | Notification | Silence | Override]) -> list[str]:
    return [item.incident_id if isinstance(item, Escalation) else item.id for item in items]


async def save(storage: Storage, *escalations: Escalation) -> None:
    def change(paging: PagingRepository) -> None:
        for item in escalations:
            paging.save_escalation(item)

    await write(storage, change)


# Escalations.


async def test_an_escalation_reads_back_with_its_policy_snapshot_times_and_status(
    storage: Storage,
) -> None:
    held = Escalation(
        incident_id="inc_held",
        policy=CRITICAL,
        route=3,
        status=EscalationStatus.SILENCED,
        started_at=T0 - timedelta(microseconds=3),
        next_level=1,
        next_round=2,
        due_at=T0 + timedelta(hours=1, microseconds=9),
        reason="level 2 after 10m without an acknowledgement ✓",
        silenced_by="sil_1",
    )
    done = escalation("inc_done", None, status=EscalationStatus.EXHAUSTED, policy=DEFAULT)
    await save(storage, held, done)
    assert (held.fence, held.loaded_fence) == (0, 0)
    assert await read(storage, lambda p: p.escalation("inc_held")) == held
    assert await read(storage, lambda p: p.escalation("inc_done")) == done
    assert await read(storage, lambda p: p.escalation("inc_never_paged")) is None

    def acknowledge(paging: PagingRepository) -> Escalation:
        stored = paging.escalation("inc_held")
        assert stored is not None
        stored.acknowledge(T0 + timedelta(minutes=2))
        paging.save_escalation(stored)
        return stored

    acknowledged = await write(storage, acknowledge)
    loaded = await read(storage, lambda p: p.escalation("inc_held"))
    assert loaded == acknowledged
    assert loaded is not None
    assert (loaded.status, loaded.due_at, loaded.silenced_by, loaded.fence) == (
        EscalationStatus.ACKNOWLEDGED,
        T0 + timedelta(minutes=32),
        "",
        1,
    )
    assert loaded.policy == CRITICAL  # the snapshot, levels and timings included


async def test_a_save_from_a_stale_read_is_refused_and_the_first_writer_wins(
    storage: Storage,
) -> None:
    await save(storage, escalation("inc_1"))
    stale = await read(storage, lambda p: p.escalation("inc_1"))
    fresh = await read(storage, lambda p: p.escalation("inc_1"))
    assert stale is not None and fresh is not None
    fresh.acknowledge(T0)
    await save(storage, fresh)
    stale.stop()
    with pytest.raises(ConcurrentModification):
        await save(storage, stale)
    # Paging an incident that another writer has just paged is a stale read too.
    with pytest.raises(ConcurrentModification):
        await save(storage, escalation("inc_1", status=EscalationStatus.EXHAUSTED))
    stored = await read(storage, lambda p: p.escalation("inc_1"))
    assert stored is not None
    assert (stored.status, stored.fence) == (EscalationStatus.ACKNOWLEDGED, 1)


async def test_claiming_due_escalations_returns_only_due_ones_earliest_first_up_to_the_limit(
    storage: Storage,
) -> None:
    await save(
        storage,
        escalation("inc_now", T0),  # due exactly now: due
        escalation("inc_later", T0 + timedelta(microseconds=1)),
        escalation("inc_first", T0 - timedelta(minutes=3)),
        escalation("inc_done", None, status=EscalationStatus.EXHAUSTED),
        escalation("inc_second", T0 - timedelta(minutes=1)),
    )
    everything = await write(storage, lambda p: p.claim_due_escalations(T0, 10))
    assert ids(everything) == ["inc_first", "inc_second", "inc_now"]
    assert everything[0] == await read(storage, lambda p: p.escalation("inc_first"))
    assert ids(await write(storage, lambda p: p.claim_due_escalations(T0, 2))) == [
        "inc_first",
        "inc_second",
    ]

    def advance_the_first(paging: PagingRepository) -> None:
        # What the worker does with a claimed row: step it on in the same unit of work.
        claimed = paging.claim_due_escalations(T0, 1)[0]
        claimed.due_at = T0 + timedelta(hours=1)
        paging.save_escalation(claimed)

    await write(storage, advance_the_first)
    assert ids(await write(storage, lambda p: p.claim_due_escalations(T0, 10))) == [
        "inc_second",
        "inc_now",
    ]


async def test_a_silence_holds_only_the_escalations_it_silenced(storage: Storage) -> None:
    held = EscalationStatus.SILENCED
    await save(
        storage,
        escalation("inc_a", status=held, silenced_by="sil_a"),
        escalation("inc_b", status=held, silenced_by="sil_b"),
        escalation("inc_c", status=held, silenced_by="sil_a"),
        escalation("inc_d", status=EscalationStatus.ACTIVE, silenced_by="sil_a"),
    )
    assert sorted(ids(await read(storage, lambda p: p.held_by("sil_a")))) == ["inc_a", "inc_c"]
    assert ids(await read(storage, lambda p: p.held_by("sil_b"))) == ["inc_b"]
    assert await read(storage, lambda p: p.held_by("sil_none")) == []


async def test_the_next_due_time_is_the_earliest_escalation_step_or_delivery_attempt(
    storage: Storage,
) -> None:
    async def next_due() -> datetime | None:
        return await read(storage, lambda p: p.next_due())

    assert await next_due() is None
    await save(
        storage,
        escalation("inc_1", T0 + timedelta(minutes=10)),
        escalation("inc_2", None, status=EscalationStatus.EXHAUSTED),
    )
    assert await next_due() == T0 + timedelta(minutes=10)

    async def add(*notifications: Notification) -> None:
        await write(storage, lambda p: p.add_notifications(list(notifications)))

    finished = NotificationState.SUPPRESSED
    await add(notification("ntf_suppressed", T0 - timedelta(hours=1), state=finished))
    assert await next_due() == T0 + timedelta(minutes=10)
    await add(notification("ntf_retry", T0 + timedelta(minutes=5)))
    assert await next_due() == T0 + timedelta(minutes=5)
    # A claimed delivery is due again when its lease runs out, not at its attempt time.
    await add(
        notification(
            "ntf_leased", T0 - timedelta(minutes=1), claimed_by="w", claim_until=T0 + LEASE
        )
    )
    assert await next_due() == T0 + LEASE
    # A lease that ran out (its worker died) is due at once.
    await add(
        notification(
            "ntf_orphan",
            T0 - timedelta(minutes=2),
            claimed_by="dead",
            claim_until=T0 - timedelta(seconds=30),
        )
    )
    assert await next_due() == T0 - timedelta(seconds=30)


# Notifications: the outbox and the ledger.


async def test_a_notification_reads_back_with_its_content(storage: Storage) -> None:
    first = replace(
        notification("ntf_1", T0 + timedelta(seconds=3, microseconds=1), attempts=2),
        content={
            "incident": {"title": "p99 latency above 2s ✓", "alert_count": 3, "labels": {}},
            "targets": [{"kind": "user", "id": "alice"}, {"kind": "channel", "id": "ops"}],
            "flag": True,
            "missing": None,
        },
        last_error="HTTP 503 from hooks.example.com",
        update_time=T0 + timedelta(microseconds=5),
    )
    second = replace(notification("ntf_2"), target_kind=TargetKind.USER, level=2, round=1)
    await write(storage, lambda p: p.add_notifications([first, second]))
    for reading in (storage.read, storage.write):  # a write unit may lock the row; a read not
        assert await reading(lambda uow: uow.paging.notification("ntf_1")) == first
    assert await read(storage, lambda p: p.notification("ntf_2")) == second
    assert await read(storage, lambda p: p.notification("ntf_missing")) is None

    delivered = replace(first, attempts=3)
    delivered.sent(T0 + timedelta(seconds=4))
    await write(storage, lambda p: p.save_notification(delivered))
    assert await read(storage, lambda p: p.notification("ntf_1")) == delivered
    assert await read(storage, lambda p: p.notification("ntf_2")) == second


async def test_a_claim_gives_each_due_delivery_the_worker_the_lease_and_one_more_attempt(
    storage: Storage,
) -> None:
    await write(
        storage,
        lambda p: p.add_notifications(
            [
                notification("ntf_due", T0 - timedelta(minutes=1)),
                notification("ntf_retry", T0, attempts=2),  # due exactly now
                notification("ntf_later", T0 + timedelta(hours=1)),
                notification("ntf_sent", None, state=NotificationState.SENT, attempts=1),
                notification("ntf_gave_up", T0, state=NotificationState.FAILED, attempts=8),
            ]
        ),
    )
    claimed = await write(storage, lambda p: p.claim_notifications("w1", T0, T0 + LEASE, 10))
    assert sorted((n.id, n.claimed_by, n.claim_until, n.attempts) for n in claimed) == [
        ("ntf_due", "w1", T0 + LEASE, 1),
        ("ntf_retry", "w1", T0 + LEASE, 3),
    ]
    for item in claimed:  # the claim is stored, not only returned
        assert await read(storage, lambda p, i=item.id: p.notification(i)) == item  # type: ignore[misc]

    # Another worker gets nothing while the lease holds...
    during = T0 + LEASE - timedelta(microseconds=1)
    assert (
        await write(storage, lambda p: p.claim_notifications("w2", during, during + LEASE, 10))
        == []
    )
    # ...and takes both over once it has run out.
    after = T0 + LEASE
    taken = await write(storage, lambda p: p.claim_notifications("w2", after, after + LEASE, 10))
    assert sorted((n.id, n.claimed_by, n.claim_until, n.attempts) for n in taken) == [
        ("ntf_due", "w2", after + LEASE, 2),
        ("ntf_retry", "w2", after + LEASE, 4),
    ]


async def test_a_claim_takes_the_earliest_due_deliveries_up_to_the_limit(
    storage: Storage,
) -> None:
    await write(
        storage,
        lambda p: p.add_notifications(
            [
                notification("ntf_c", T0 - timedelta(minutes=1)),
                notification("ntf_a", T0 - timedelta(minutes=3)),
                notification("ntf_d", T0),
                notification("ntf_b", T0 - timedelta(minutes=2)),
            ]
        ),
    )
    first = await write(storage, lambda p: p.claim_notifications("w", T0, T0 + LEASE, 2))
    assert sorted(ids(first)) == ["ntf_a", "ntf_b"]
    rest = await write(storage, lambda p: p.claim_notifications("w", T0, T0 + LEASE, 2))
    assert sorted(ids(rest)) == ["ntf_c", "ntf_d"]
    assert await write(storage, lambda p: p.claim_notifications("w", T0, T0 + LEASE, 2)) == []


async def test_released_claims_can_be_claimed_again_before_their_lease_runs_out(
    storage: Storage,
) -> None:
    await write(
        storage, lambda p: p.add_notifications([notification("ntf_1"), notification("ntf_2")])
    )
    await write(storage, lambda p: p.claim_notifications("w1", T0, T0 + LEASE, 10))
    assert await write(storage, lambda p: p.release_claims()) == 2
    for notification_id in ("ntf_1", "ntf_2"):
        released = await read(storage, lambda p, i=notification_id: p.notification(i))  # type: ignore[misc]
        assert (released.claimed_by, released.claim_until, released.attempts) == ("", None, 1)
    again = await write(storage, lambda p: p.claim_notifications("w2", T0, T0 + LEASE, 10))
    assert sorted((n.id, n.claimed_by, n.attempts) for n in again) == [
        ("ntf_1", "w2", 2),
        ("ntf_2", "w2", 2),
    ]
    assert await write(storage, lambda p: p.release_claims()) == 2
    assert await write(storage, lambda p: p.release_claims()) == 0


async def test_pending_notifications_are_the_incidents_deliveries_not_yet_finished(
    storage: Storage,
) -> None:
    await write(
        storage,
        lambda p: p.add_notifications(
            [
                notification("ntf_waiting", T0 + timedelta(minutes=1)),
                notification("ntf_leased", T0, claimed_by="w", claim_until=T0 + LEASE),
                notification("ntf_sent", None, state=NotificationState.SENT),
                notification("ntf_failed", None, state=NotificationState.FAILED),
                notification("ntf_suppressed", None, state=NotificationState.SUPPRESSED),
                notification("ntf_other_incident", T0, incident_id="inc_2"),
            ]
        ),
    )
    pending = await read(storage, lambda p: p.pending_notifications("inc_1"))
    assert sorted(ids(pending)) == ["ntf_leased", "ntf_waiting"]
    assert await read(storage, lambda p: p.pending_notifications("inc_none")) == []


async def test_live_notifications_are_the_incidents_sent_or_pending_deliveries_through_a_channel(
    storage: Storage,
) -> None:
    unreached = replace(
        notification("ntf_nobody", None, ordinal=9), channel_id="", channel_type="", recipient=""
    )
    await write(
        storage,
        lambda p: p.add_notifications(
            [
                notification("ntf_sent_late", None, state=NotificationState.SENT, ordinal=2),
                notification("ntf_waiting", T0 + timedelta(minutes=1), ordinal=1),
                notification(
                    "ntf_sent_first", None, state=NotificationState.SENT, create_time=T0 - 9 * LEASE
                ),
                notification("ntf_failed", None, state=NotificationState.FAILED, ordinal=3),
                notification("ntf_suppressed", None, state=NotificationState.SUPPRESSED),
                notification("ntf_other_incident", T0, incident_id="inc_2"),
                unreached,
            ]
        ),
    )
    live = await read(storage, lambda p: p.live_notifications("inc_1"))
    assert ids(live) == ["ntf_sent_first", "ntf_waiting", "ntf_sent_late"]
    assert [n.channel_id for n in live] == ["ops-hook"] * 3
    assert live[0].state is NotificationState.SENT and live[1].attempts == 0
    assert await read(storage, lambda p: p.live_notifications("inc_none")) == []


async def test_ledger_pages_walk_every_notification_once_by_create_time_ordinal_and_id(
    storage: Storage,
) -> None:
    # Ties on the create time, then on the ordinal: the id decides.
    ledger = [
        notification(
            f"ntf_{(7 * n) % 11:02d}",
            create_time=T0 + timedelta(seconds=n // 4),
            ordinal=(n // 2) % 2,
        )
        for n in range(11)
    ]
    others = [notification("ntf_other", incident_id="inc_2", create_time=T0)]
    await write(storage, lambda p: p.add_notifications(list(reversed(ledger)) + others))
    seen: list[Notification] = []
    after = None
    while True:
        page = await read(
            storage,
            lambda p, a=after: p.list_notifications("inc_1", a, 3),  # type: ignore[misc]
        )
        assert len(page) <= 3
        seen += page
        if len(page) < 3:
            break
        after = page[-1].ledger_key
    assert seen == sorted(ledger, key=lambda n: n.ledger_key)
    assert await read(storage, lambda p: p.list_notifications("inc_none", None, 3)) == []


# Silences.


async def test_a_silence_reads_back_and_is_active_until_it_ends(storage: Storage) -> None:
    hour = timedelta(hours=1)
    ended = silence("sil_ended", T0 - 2 * hour, T0 - timedelta(microseconds=1))
    ends_now = silence("sil_ends_now", T0 - hour, T0)
    active = replace(
        silence("sil_active", T0 - hour, T0 + hour),
        matcher=Matcher(
            severities=frozenset({Severity.P0, Severity.P1}),
            types=frozenset({IncidentType.SECURITY}),
            sources=frozenset({"llm-shield", "llm-sentinel"}),
            labels={"région": "eu-west-1", "tenant": "acme"},
            labels_regex={"model": re.compile("gpt-4.*"), "zone": re.compile(r"eu-\w+-\d")},
        ),
        comment="upgrade of the shield ✓",
    )
    upcoming = silence("sil_upcoming", T0 + hour, T0 + 2 * hour)
    await write(storage, lambda p: [p.add_silence(s) for s in (ended, ends_now, active, upcoming)])
    assert await read(storage, lambda p: p.silence("sil_active")) == active
    assert await read(storage, lambda p: p.silence("sil_missing")) is None
    found = await read(storage, lambda p: p.silences_active(T0))
    assert sorted(ids(found)) == ["sil_active", "sil_upcoming"]

    expired = active.expired(T0, by="bob")
    await write(storage, lambda p: p.save_silence(expired))
    assert await read(storage, lambda p: p.silence("sil_active")) == expired
    assert ids(await read(storage, lambda p: p.silences_active(T0))) == ["sil_upcoming"]


async def test_silences_are_listed_newest_first_in_pages_with_expired_ones_on_request(
    storage: Storage,
) -> None:
    day = timedelta(days=1)
    made = [T0 - timedelta(minutes=n // 2) for n in range(7)]  # pairs made at once
    silences = [
        silence(
            f"sil_{n}", made[n], made[n] + (day if n % 3 else timedelta(0)), create_time=made[n]
        )
        for n in range(7)
    ]
    await write(storage, lambda p: [p.add_silence(s) for s in reversed(silences)])
    newest_first = sorted(silences, key=lambda s: (s.create_time, s.id), reverse=True)

    async def walk(include_expired: bool) -> list[Silence]:
        seen: list[Silence] = []
        after = None
        while True:
            page = await read(
                storage,
                lambda p, a=after: p.list_silences(include_expired, T0, a, 2),  # type: ignore[misc]
            )
            seen += page
            if len(page) < 2:
                return seen
            last = page[-1]
            assert last.create_time is not None
            after = (last.create_time, last.id)

    assert await walk(include_expired=True) == newest_first
    assert await walk(include_expired=False) == [s for s in newest_first if s.end > T0]
    assert ids(await read(storage, lambda p: p.list_silences(False, T0, None, 100))) == [
        "sil_1",
        "sil_2",
        "sil_5",
        "sil_4",
    ]


# Overrides.


async def test_overrides_between_are_those_that_share_part_of_the_window(
    storage: Storage,
) -> None:
    start, end = T0, T0 + timedelta(hours=8)
    hour = timedelta(hours=1)
    overrides = [
        override("ovr_before", start - 2 * hour, start),  # ends as the window begins
        override("ovr_into", start - hour, start + hour),
        override("ovr_inside", start + 2 * hour, start + 3 * hour),
        override("ovr_around", start - hour, end + hour),
        override("ovr_out_of", end - hour, end + hour),
        override("ovr_after", end, end + hour),  # begins as the window ends
        override("ovr_other_schedule", start + hour, start + 2 * hour, "secondary"),
    ]
    await write(storage, lambda p: [p.add_override(o) for o in overrides])
    found = await read(storage, lambda p: p.overrides_between("primary", start, end))
    assert sorted(ids(found)) == ["ovr_around", "ovr_inside", "ovr_into", "ovr_out_of"]
    assert await read(storage, lambda p: p.override("ovr_into")) == overrides[1]
    tiny = await read(
        storage,
        lambda p: p.overrides_between("primary", start, start + timedelta(microseconds=1)),
    )
    assert sorted(ids(tiny)) == ["ovr_around", "ovr_into"]
    assert await read(storage, lambda p: p.overrides_between("nobody", start, end)) == []


async def test_overrides_are_listed_by_start_in_pages_per_schedule_with_ended_ones_on_request(
    storage: Storage,
) -> None:
    hour = timedelta(hours=1)
    overrides = [
        override("ovr_ended", T0 - 3 * hour, T0),
        override("ovr_now_b", T0 - hour, T0 + hour),
        override("ovr_now_a", T0 - hour, T0 + hour),  # same start: the id decides
        override("ovr_tonight", T0 + 10 * hour, T0 + 12 * hour),
        override("ovr_secondary", T0 - 2 * hour, T0 + hour, "secondary"),
        override("ovr_secondary_ended", T0 - 4 * hour, T0 - hour, "secondary"),
    ]
    await write(storage, lambda p: [p.add_override(o) for o in overrides])

    async def walk(schedule_id: str, include_ended: bool) -> list[str]:
        seen: list[Override] = []
        after = None
        while True:
            page = await read(
                storage,
                lambda p, a=after: p.list_overrides(schedule_id, include_ended, T0, a, 2),  # type: ignore[misc]
            )
            seen += page
            if len(page) < 2:
                return ids(seen)
            after = (page[-1].start, page[-1].id)

    assert await walk("primary", False) == ["ovr_now_a", "ovr_now_b", "ovr_tonight"]
    assert await walk("primary", True) == ["ovr_ended", "ovr_now_a", "ovr_now_b", "ovr_tonight"]
    assert await walk("", False) == ["ovr_secondary", "ovr_now_a", "ovr_now_b", "ovr_tonight"]
    assert await walk("", True) == [
        "ovr_secondary_ended", "ovr_ended", "ovr_secondary", "ovr_now_a", "ovr_now_b",
        "ovr_tonight",
    ]  # fmt: skip


async def test_a_deleted_override_is_gone_and_deleting_it_again_says_so(storage: Storage) -> None:
    covering = override("ovr_1", T0, T0 + timedelta(hours=1))
    kept = override("ovr_2", T0, T0 + timedelta(hours=1))
    await write(storage, lambda p: [p.add_override(covering), p.add_override(kept)])
    assert await write(storage, lambda p: p.delete_override("ovr_1")) is True
    assert await read(storage, lambda p: p.override("ovr_1")) is None
    assert await write(storage, lambda p: p.delete_override("ovr_1")) is False
    assert await write(storage, lambda p: p.delete_override("ovr_missing")) is False
    between = await read(storage, lambda p: p.overrides_between("primary", T0, T0 + LEASE))
    assert ids(between) == ["ovr_2"]


# Units of work that are not kept.


async def test_paging_work_that_is_not_committed_or_fails_leaves_no_trace(
    storage: Storage,
) -> None:
    hour = timedelta(hours=1)
    await save(storage, escalation("inc_1", T0))
    await write(
        storage,
        lambda p: [
            p.add_notifications([notification("ntf_1")]),
            p.add_silence(silence("sil_1", T0, T0 + hour)),
            p.add_override(override("ovr_1", T0, T0 + hour)),
        ],
    )

    def change_everything(paging: PagingRepository) -> None:
        stored = paging.escalation("inc_1")
        assert stored is not None
        stored.stop()
        paging.save_escalation(stored)
        paging.save_escalation(escalation("inc_2"))
        assert ids(paging.claim_due_escalations(T0, 10)) == ["inc_2"]
        assert ids(paging.claim_notifications("w", T0, T0 + LEASE, 10)) == ["ntf_1"]
        paging.add_notifications([notification("ntf_2")])
        paging.release_claims()
        paging.save_silence(silence("sil_1", T0, T0 + hour).expired(T0, by="bob"))
        paging.add_silence(silence("sil_2", T0, T0 + hour))
        assert paging.delete_override("ovr_1")
        paging.add_override(override("ovr_2", T0, T0 + hour))

    def abandon(uow: UnitOfWork) -> None:
        with uow:
            change_everything(uow.paging)  # and no commit()

    def fail(uow: UnitOfWork) -> None:
        with uow:
            change_everything(uow.paging)
            raise RuntimeError("boom")

    def commit_then_fail(uow: UnitOfWork) -> None:
        change_everything(uow.paging)
        uow.commit()
        raise RuntimeError("after commit")

    await storage.write(abandon)
    for failing in (fail, commit_then_fail):
        with pytest.raises(RuntimeError):
            await storage.write(failing)

    kept = await read(storage, lambda p: p.escalation("inc_1"))
    assert kept is not None and (kept.status, kept.fence) == (EscalationStatus.ACTIVE, 0)
    assert await read(storage, lambda p: p.escalation("inc_2")) is None
    ledger = await read(storage, lambda p: p.list_notifications("inc_1", None, 10))
    assert [(n.id, n.claimed_by, n.claim_until, n.attempts) for n in ledger] == [
        ("ntf_1", "", None, 0)
    ]
    assert ids(await read(storage, lambda p: p.silences_active(T0))) == ["sil_1"]
    assert ids(await read(storage, lambda p: p.list_overrides("", True, T0, None, 10))) == ["ovr_1"]
    assert ids(await write(storage, lambda p: p.claim_due_escalations(T0, 10))) == ["inc_1"]


# PostgreSQL only: replicas share the due rows.


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[PostgresStorage, PostgresStorage]]:
    """Two storages on one PostgreSQL database, as two server replicas have."""
    with fresh_database() as url:
        first = PostgresStorage(url)
        second = PostgresStorage(url)
        try:
            yield first, second
        finally:
            await first.close()
            await second.close()


def claiming(
    claim: Callable[[PagingRepository], list[Any]], together: threading.Barrier
) -> Callable[[UnitOfWork], list[str]]:
    """A unit of work that claims, then waits until the other replica has claimed too."""

    def work(uow: UnitOfWork) -> list[str]:
        with uow:
            claimed = ids(claim(uow.paging))
            together.wait(timeout=20)  # both hold their rows now
            uow.commit()
        return claimed

    return work


async def test_two_replicas_claiming_due_escalations_at_once_get_different_ones(
    replicas: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, _ = replicas
    due = [f"inc_{n}" for n in range(6)]
    await save(first, *(escalation(i, T0 - timedelta(seconds=n)) for n, i in enumerate(due)))
    together = threading.Barrier(2)
    got = await asyncio.gather(
        *(
            replica.write(claiming(lambda p: p.claim_due_escalations(T0, 4), together))
            for replica in replicas
        )
    )
    assert all(len(claimed) <= 4 for claimed in got)
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == due


async def test_two_replicas_claiming_deliveries_at_once_get_different_ones(
    replicas: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, _ = replicas
    due = [f"ntf_{n}" for n in range(6)]
    await write(
        first,
        lambda p: p.add_notifications(
            [notification(i, T0 - timedelta(seconds=n)) for n, i in enumerate(due)]
        ),
    )
    together = threading.Barrier(2)
    got = await asyncio.gather(
        *(
            replica.write(
                claiming(lambda p, w=f"w{n}": p.claim_notifications(w, T0, T0 + LEASE, 4), together)  # type: ignore[misc]
            )
            for n, replica in enumerate(replicas)
        )
    )
    assert all(len(claimed) <= 4 for claimed in got)
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == due
    for worker, claimed in zip(("w0", "w1"), got, strict=True):
        for notification_id in claimed:
            stored = await read(first, lambda p, i=notification_id: p.notification(i))  # type: ignore[misc]
            assert (stored.claimed_by, stored.attempts) == (worker, 1)


async def test_escalations_claimed_by_a_unit_of_work_that_fails_can_be_claimed_again(
    replicas: tuple[PostgresStorage, PostgresStorage],
) -> None:
    first, second = replicas
    await save(first, escalation("inc_1", T0 - timedelta(minutes=1)), escalation("inc_2", T0))
    claimed, looked = threading.Event(), threading.Event()

    def claim_and_die(uow: UnitOfWork) -> None:
        with uow:
            assert ids(uow.paging.claim_due_escalations(T0, 10)) == ["inc_1", "inc_2"]
            claimed.set()
            looked.wait(timeout=20)
            raise RuntimeError("the worker crashed mid-step")

    dying = asyncio.ensure_future(first.write(claim_and_die))
    assert await asyncio.to_thread(claimed.wait, 20)
    try:
        assert await write(second, lambda p: p.claim_due_escalations(T0, 10)) == []
    finally:
        looked.set()
    with pytest.raises(RuntimeError, match="crashed"):
        await dying
    again = await write(second, lambda p: p.claim_due_escalations(T0, 10))
    assert ids(again) == ["inc_1", "inc_2"]


# SQLite only: the claims read their partial indexes.


def sqlite_plans(path: Path, use: Callable[[PagingRepository], object]) -> list[str]:
    """The query plan of each statement `use` runs, on the file's real schema."""
    plans: list[str] = []
    with contextlib.closing(sqlite3.connect(path)) as conn:

        def explained(query: str, params: Sequence[Any]) -> sqlite3.Cursor:
            rows = conn.execute(f"EXPLAIN QUERY PLAN {query}", params).fetchall()
            plans.append(" / ".join(row[3] for row in rows))
            return conn.execute(query, params)

        use(SqlPaging(explained, SQLITE))
        conn.rollback()
    return plans


@pytest.fixture
async def sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "plans.db"
    await SqliteStorage(path).close()
    return path


async def test_claiming_due_escalations_reads_the_partial_due_index_without_sorting(
    sqlite_file: Path,
) -> None:
    [plan] = sqlite_plans(sqlite_file, lambda p: p.claim_due_escalations(T0, 10))
    # `due_at IS NOT NULL` reads as `due_at>?` (greater than NULL).
    assert "USING INDEX escalations_due (due_at>? AND due_at<?)" in plan
    assert "TEMP B-TREE" not in plan


async def test_claiming_deliveries_reads_the_partial_due_index_without_sorting(
    sqlite_file: Path,
) -> None:
    [plan] = sqlite_plans(sqlite_file, lambda p: p.claim_notifications("w", T0, T0 + LEASE, 10))
    assert "USING INDEX notifications_due (next_attempt_time<?)" in plan
    assert "TEMP B-TREE" not in plan


async def test_the_next_due_time_is_read_from_the_partial_indexes(sqlite_file: Path) -> None:
    plans = sqlite_plans(sqlite_file, lambda p: p.next_due())
    assert len(plans) == 3
    assert "escalations_due" in plans[0]
    assert "notifications_due" in plans[1]
    assert "notifications_leases" in plans[2]
    assert not [
        plan for plan in plans if "SCAN escalations" in plan or "SCAN notifications" in plan
    ]


async def test_finding_what_a_silence_holds_reads_the_partial_silence_index(
    sqlite_file: Path,
) -> None:
    [plan] = sqlite_plans(sqlite_file, lambda p: p.held_by("sil_1"))
    assert "USING INDEX escalations_by_silence (silenced_by=?)" in plan


async def test_a_silence_stored_before_label_patterns_were_kept_reads_back_without_any(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    storage = SqliteStorage(path)
    try:
        made = silence("sil_old", T0, T0 + timedelta(hours=1))
        await write(storage, lambda p: p.add_silence(made))
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                "UPDATE silences SET matchers = ?",
                ('{"sources":["llm-shield"],"types":[],"severities":[],"labels":{}}',),
            )
        assert await read(storage, lambda p: p.silence("sil_old")) == made
    finally:
        await storage.close()


# Automated actions in the policy snapshot.

JAILBREAK = EscalationPolicy(
    id="jailbreak",
    levels=(
        Level(
            timedelta(0),
            (
                Target(
                    TargetKind.ACTION,
                    "gateway-kill-switch",
                    '{"model": "{{ incident.labels.model }}", "reason": "{{ incident.title }}"}\n',
                ),
            ),
        ),
        Level(
            timedelta(minutes=5),
            (Target(TargetKind.SCHEDULE, "primary"), Target(TargetKind.ACTION, "rollback", "v41")),
        ),
    ),
)


async def test_an_actions_webhook_and_body_template_survive_the_policy_snapshot(
    storage: Storage,
) -> None:
    await save(storage, escalation("inc_jailbreak", policy=JAILBREAK))
    loaded = await read(storage, lambda p: p.escalation("inc_jailbreak"))
    assert loaded is not None
    assert loaded.policy == JAILBREAK
    action = loaded.policy.levels[0].targets[0]
    assert (action.kind, action.id, action.body) == (
        TargetKind.ACTION,
        "gateway-kill-switch",
        JAILBREAK.levels[0].targets[0].body,
    )
    assert loaded.policy.levels[1].targets[0].body is None


async def test_an_action_notification_keeps_its_kind_and_rendered_body(storage: Storage) -> None:
    made = replace(
        notification("ntf_action"),
        target_kind=TargetKind.ACTION,
        target_id="gateway-kill-switch",
        channel_id="gateway-kill-switch",
        content={"title": "Jailbreak wave", "action_body": '{"model": "gpt-4o"}'},
    )
    await write(storage, lambda p: p.add_notifications([made]))
    loaded = await read(storage, lambda p: p.notification("ntf_action"))
    assert loaded == made


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_policy_snapshot_stored_before_actions_existed_reads_back(
    backend: str, tmp_path: Path
) -> None:
    # The text an escalation row held before a target could carry a body.
    old = (
        '{"id":"default","levels":[{"after":0,"targets":[["channel","ops-hook"]]}],'
        '"repeat":0,"repeat_after":600000000,"ack_timeout":null}'
    )
    update = "UPDATE escalations SET policy = {mark} WHERE incident_id = 'inc_old'"
    with contextlib.ExitStack() as stack:
        if backend == "postgres":
            url = stack.enter_context(fresh_database())
            storage: Storage = PostgresStorage(url)
        else:
            storage = SqliteStorage(tmp_path / "old.db")
        try:
            await save(storage, escalation("inc_old", policy=CRITICAL))
            if backend == "postgres":
                with psycopg.connect(url, autocommit=True) as server:
                    server.execute(update.format(mark="%s"), (old,))
            else:
                with contextlib.closing(sqlite3.connect(tmp_path / "old.db")) as file, file:
                    file.execute(update.format(mark="?"), (old,))
            loaded = await read(storage, lambda p: p.escalation("inc_old"))
            assert loaded is not None and loaded.policy == DEFAULT
        finally:
            await storage.close()
