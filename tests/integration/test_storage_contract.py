"""The storage contract: every backend passes the same tests, so none can drift."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.adapters.postgres import PostgresStorage
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.domain.errors import ConcurrentModification
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    AlertAck,
    AlertStatus,
    EventType,
    Incident,
    IncidentEvent,
    IncidentState,
    IncidentType,
    ReceivedAlert,
    RequestRecord,
    ResolutionMethod,
    Severity,
)
from incident_manager.domain.query import (
    NOTES_LIMIT,
    TIMELINE_LIMIT,
    IncidentFilter,
    IncidentQuery,
    Ordering,
    SortKey,
)
from incident_manager.service.handlers import submit_alert, submit_alerts
from incident_manager.service.ports import Storage, UnitOfWork
from tests.support.postgres import fresh_database

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "postgres":
        with fresh_database() as url:
            backend: Storage = PostgresStorage(url)
            yield backend
            await backend.close()
        return
    backend = MemoryStorage() if request.param == "memory" else SqliteStorage(tmp_path / "c.db")
    yield backend
    await backend.close()


def incident(
    title: str = "embedding drift on index v3",
    *,
    at: datetime = T0,
    severity: Severity = Severity.P2,
    fingerprint: str = "fp-1",
    source: str = "drift-detector",
    assignees: tuple[str, ...] = (),
    type: IncidentType = IncidentType.DATA,
) -> Incident:
    return Incident.open(
        title=title,
        description="cosine distance to baseline above 0.3",
        severity=severity,
        type=type,
        source=source,
        affected_resources=["index/v3", "model/embed-2"],
        labels={"team": "search", "région": "eu"},
        assignees=assignees,
        fingerprint=fingerprint,
        actor=source,
        now=at,
        alert_count=1,
    )


async def store(storage: Storage, *incidents: Incident) -> None:
    def work(uow: UnitOfWork) -> None:
        with uow:
            for item in incidents:
                uow.incidents.add(item)
            uow.commit()

    await storage.write(work)


async def read(storage: Storage, fn: Callable[[UnitOfWork], Any]) -> Any:
    return await storage.read(fn)


async def test_a_stored_incident_reads_back_with_every_field(storage: Storage) -> None:
    original = incident(assignees=("alice", "bob"))
    original.add_note(author="alice", content="looking into it ✓", now=T0)
    await store(storage, original)
    loaded = await read(storage, lambda uow: uow.incidents.get(original.id, with_history=True))
    assert loaded is not None
    for field in (
        "id", "title", "description", "severity", "type", "state", "source",
        "affected_resources", "labels", "assignees", "fingerprint", "alert_count",
        "create_time", "update_time", "resolution", "version", "timeline_size", "notes_size",
        "last_alert_time", "acknowledged_by", "acknowledge_time",
    ):  # fmt: skip
        assert getattr(loaded, field) == getattr(original, field), field
    assert [e.type for e in loaded.timeline] == [EventType.CREATED, EventType.NOTE_ADDED]
    assert [n.content for n in loaded.notes] == ["looking into it ✓"]
    assert loaded.pending_events == []


async def test_an_acknowledgement_is_stored_and_read_back_with_the_incident(
    storage: Storage,
) -> None:
    never = incident("never acknowledged")
    item = incident()
    item.acknowledged_by = "alice"
    item.acknowledge_time = T0 + timedelta(minutes=3, microseconds=7)
    await store(storage, never, item)
    loaded = await read(storage, lambda uow: uow.incidents.get(item.id))
    assert (loaded.acknowledged_by, loaded.acknowledge_time) == ("alice", item.acknowledge_time)
    unacknowledged = await read(storage, lambda uow: uow.incidents.get(never.id))
    assert (unacknowledged.acknowledged_by, unacknowledged.acknowledge_time) == ("", None)

    def acknowledge_again(uow: UnitOfWork) -> None:
        with uow:
            target = uow.incidents.get(item.id)
            assert target is not None
            target.acknowledged_by = "bob"
            target.acknowledge_time = T0 + timedelta(minutes=9)
            # Otherwise only counters change: SQLite's writer must not take
            # its merge shortcut and drop the acknowledgement.
            target.merge_alert(NOISY, "dedup_key=n", T0 + timedelta(minutes=9))
            uow.incidents.save(target)
            uow.commit()

    await storage.write(acknowledge_again)
    for reading in (storage.read, storage.write):  # SQLite's writer answers from its cache
        again = await reading(lambda uow: uow.incidents.get(item.id))
        assert again is not None
        assert (again.acknowledged_by, again.acknowledge_time, again.alert_count) == (
            "bob",
            T0 + timedelta(minutes=9),
            2,
        )


async def test_an_unknown_incident_reads_as_none(storage: Storage) -> None:
    assert await read(storage, lambda uow: uow.incidents.get("inc_missing")) is None


async def test_a_resolution_is_stored_with_its_times(storage: Storage) -> None:
    item = incident()
    item.resolve(
        method=ResolutionMethod.AUTO_ASSISTED_MANUAL,
        root_cause="stale index",
        notes="reindexed",
        resolved_by="carol",
        now=T0 + timedelta(hours=2, microseconds=7),
    )
    await store(storage, item)
    loaded = await read(storage, lambda uow: uow.incidents.get(item.id))
    assert loaded.resolution == item.resolution


async def test_work_that_is_not_committed_leaves_no_trace(storage: Storage) -> None:
    item = incident()

    def abandon(uow: UnitOfWork) -> None:
        with uow:
            uow.incidents.add(item)
            uow.alerts.add(_received("a-1", item.id))

    await storage.write(abandon)

    def failing(uow: UnitOfWork) -> None:
        with uow:
            uow.incidents.add(incident("other"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await storage.write(failing)
    assert await read(storage, lambda uow: uow.incidents.get(item.id)) is None
    assert await read(storage, lambda uow: uow.alerts.get("s", "a-1")) is None
    assert await read(storage, lambda uow: uow.events.last_sequence()) == 0
    page = await read(storage, lambda uow: uow.incidents.list(IncidentQuery()))
    assert page.total_size == 0


async def test_sequences_strictly_increase_across_incidents_and_commits(storage: Storage) -> None:
    first, second = incident("a"), incident("b")
    await store(storage, first)
    await store(storage, second)
    events: list[IncidentEvent] = await read(storage, lambda uow: uow.events.after(0, 100))
    assert [e.sequence for e in events] == [1, 2]
    assert [e.incident_id for e in events] == [first.id, second.id]
    assert await read(storage, lambda uow: uow.events.last_sequence()) == 2
    assert [e.sequence for e in await read(storage, lambda uow: uow.events.after(1, 100))] == [2]


async def test_listeners_hear_committed_events_in_sequence_order(storage: Storage) -> None:
    heard: list[int] = []
    storage.add_listener(lambda events: heard.extend(e.sequence for e in events))
    await store(storage, incident("a"), incident("b"))
    await store(storage, incident("c"))
    assert heard == [1, 2, 3]


async def test_a_stale_version_is_refused(storage: Storage) -> None:
    item = incident()
    await store(storage, item)
    stale = await read(storage, lambda uow: uow.incidents.get(item.id))
    fresh = await read(storage, lambda uow: uow.incidents.get(item.id))

    def save(target: Incident) -> Callable[[UnitOfWork], None]:
        def work(uow: UnitOfWork) -> None:
            with uow:
                uow.incidents.save(target)
                uow.commit()

        return work

    fresh.update(actor="a", now=T0, title="first writer wins")
    await storage.write(save(fresh))
    stale.update(actor="b", now=T0, title="second writer loses")
    with pytest.raises(ConcurrentModification):
        await storage.write(save(stale))
    loaded = await read(storage, lambda uow: uow.incidents.get(item.id, with_history=True))
    assert loaded.title == "first writer wins"
    assert [e.actor for e in loaded.timeline] == ["drift-detector", "a"]


async def test_mergeable_means_the_active_incident_whose_last_alert_is_inside_the_window(
    storage: Storage,
) -> None:
    still_firing = incident(at=T0)
    still_firing.merge_alert(NOISY, "dedup_key=n", T0 + timedelta(minutes=10))
    opened_later = incident(at=T0 + timedelta(minutes=5))
    other = incident(at=T0 + timedelta(minutes=11), fingerprint="fp-2")
    quiet = incident(at=T0, fingerprint="fp-3")
    resolved = incident(at=T0 + timedelta(minutes=12))
    resolved.resolve(
        method=ResolutionMethod.MANUAL, root_cause="", notes="", resolved_by="x", now=T0
    )
    await store(storage, still_firing, opened_later, other, quiet, resolved)

    def find(since: datetime, fingerprint: str = "fp-1") -> Callable[[UnitOfWork], Incident | None]:
        return lambda uow: uow.incidents.find_mergeable(fingerprint, since)

    # The window is measured from each incident's last alert, not its opening.
    assert (await read(storage, find(T0))).id == still_firing.id
    assert (await read(storage, find(T0 + timedelta(minutes=10)))).id == still_firing.id
    assert await read(storage, find(T0 + timedelta(minutes=10, microseconds=1))) is None
    # With no merged alert, that is the alert that opened it.
    assert (await read(storage, find(T0, "fp-3"))).id == quiet.id
    assert await read(storage, find(T0 + timedelta(microseconds=1), "fp-3")) is None


async def test_a_received_alert_is_found_by_source_and_id(storage: Storage) -> None:
    item = incident()
    received = _received("a-77", item.id)

    def work(uow: UnitOfWork) -> None:
        with uow:
            uow.incidents.add(item)
            uow.alerts.add(received)
            uow.commit()

    await storage.write(work)
    assert await read(storage, lambda uow: uow.alerts.get("s", "a-77")) == received
    assert await read(storage, lambda uow: uow.alerts.get("other-source", "a-77")) is None


async def test_filters_combine_kinds_with_and_and_values_with_or(storage: Storage) -> None:
    items = [
        incident("a", severity=Severity.P0, source="llm-shield", assignees=("ann",)),
        incident("b", severity=Severity.P1, source="llm-shield", type=IncidentType.SECURITY),
        incident("c", severity=Severity.P0, source="llm-sentinel", assignees=("ann", "bo")),
        incident("d", severity=Severity.P3, source="llm-sentinel"),
    ]
    items[3].update(actor="x", now=T0, state=IncidentState.TRIAGED)
    await store(storage, *items)

    async def titles(query_filter: IncidentFilter) -> set[str]:
        page = await read(storage, lambda uow: uow.incidents.list(IncidentQuery(query_filter)))
        assert page.total_size == len(page.incidents)
        return {i.title for i in page.incidents}

    assert await titles(IncidentFilter()) == {"a", "b", "c", "d"}
    assert await titles(IncidentFilter(severities=frozenset({Severity.P0}))) == {"a", "c"}
    assert await titles(
        IncidentFilter(severities=frozenset({Severity.P0}), sources=frozenset({"llm-shield"}))
    ) == {"a"}
    assert await titles(IncidentFilter(assignee="ann")) == {"a", "c"}
    assert await titles(IncidentFilter(assignee="an")) == set()
    assert await titles(IncidentFilter(states=frozenset({IncidentState.TRIAGED}))) == {"d"}
    assert await titles(IncidentFilter(types=frozenset({IncidentType.SECURITY}))) == {"b"}
    assert await titles(IncidentFilter(incident_id=items[2].id)) == {"c"}


async def test_active_incidents_are_counted_by_severity_and_state(storage: Storage) -> None:
    assert await read(storage, lambda uow: uow.incidents.count_active()) == {}
    items = [
        incident("a", severity=Severity.P0),
        incident("b", severity=Severity.P0),
        incident("c", severity=Severity.P0),
        incident("d", severity=Severity.P2),
        incident("e", severity=Severity.P1),
        incident("f", severity=Severity.P1),
    ]
    items[2].update(actor="x", now=T0, state=IncidentState.TRIAGED)
    items[3].update(actor="x", now=T0, state=IncidentState.INVESTIGATING)
    for finished in items[4:]:
        finished.resolve(
            method=ResolutionMethod.MANUAL, root_cause="", notes="", resolved_by="x", now=T0
        )
    items[5].update(actor="x", now=T0, state=IncidentState.CLOSED)
    await store(storage, *items)
    stored = await read(storage, lambda uow: uow.incidents.get(items[1].id))
    stored.update(actor="x", now=T0, state=IncidentState.REMEDIATING)

    def save(uow: UnitOfWork) -> None:
        with uow:
            uow.incidents.save(stored)
            uow.commit()

    await storage.write(save)

    assert await read(storage, lambda uow: uow.incidents.count_active()) == {
        (Severity.P0, IncidentState.DETECTED): 1,
        (Severity.P0, IncidentState.REMEDIATING): 1,
        (Severity.P0, IncidentState.TRIAGED): 1,
        (Severity.P2, IncidentState.INVESTIGATING): 1,
    }


@pytest.mark.parametrize(
    "ordering",
    [Ordering(key, descending) for key in SortKey for descending in (True, False)],
    ids=lambda o: f"{o.key.value}-{'desc' if o.descending else 'asc'}",
)
async def test_keyset_pages_walk_every_incident_once_in_order(
    storage: Storage, ordering: Ordering
) -> None:
    severities = list(Severity)
    items = [
        incident(
            f"t{i}",
            at=T0 + timedelta(seconds=i // 3),  # ties on time, broken by id
            severity=severities[i % len(severities)],
        )
        for i in range(23)
    ]
    await store(storage, *items)
    seen: list[Incident] = []
    after = None
    while True:
        query = IncidentQuery(ordering=ordering, page_size=4, after=after)
        # mypy cannot type a lambda's default argument (it binds the loop's value).
        page = await read(storage, lambda uow, q=query: uow.incidents.list(q))  # type: ignore[misc]
        assert page.total_size == 23
        seen.extend(page.incidents)
        if not page.has_more:
            break
        after = ordering.key_of(page.incidents[-1])
    keys = [ordering.key_of(i) for i in seen]
    assert len(seen) == 23 and len(set(keys)) == 23
    assert keys == sorted(keys, reverse=ordering.descending)


NOISY = Alert(id="n", source="s", title="t", severity=Severity.P4, type=IncidentType.DATA)


async def test_a_long_timeline_keeps_its_most_recent_events(storage: Storage) -> None:
    item = incident()
    for _ in range(TIMELINE_LIMIT + 4):
        item.merge_alert(NOISY, "dedup_key=n", T0)
    await store(storage, item)
    loaded = await read(storage, lambda uow: uow.incidents.get(item.id, with_history=True))
    assert loaded.timeline_size == TIMELINE_LIMIT + 5
    assert len(loaded.timeline) == TIMELINE_LIMIT
    assert loaded.timeline[-1].sequence == TIMELINE_LIMIT + 5
    assert loaded.timeline[0].sequence == 6


def _received(alert_id: str, incident_id: str) -> ReceivedAlert:
    return ReceivedAlert(
        alert=Alert(
            id=alert_id,
            source="s",
            title="t",
            severity=Severity.P1,
            type=IncidentType.SECURITY,
            labels={"k": "v"},
            annotations={"summary": "s"},
            affected_resources=("r",),
            runbook_url="https://runbooks.example/r",
            fire_time=T0,
            dedup_key="dk",
        ),
        incident_id=incident_id,
        status=AckStatus.ACCEPTED,
        fingerprint="fp",
        receive_time=T0,
    )


async def test_many_notes_keep_the_most_recent_and_count_them_all(storage: Storage) -> None:
    item = incident()
    for i in range(NOTES_LIMIT + 3):
        item.add_note(author="a", content=f"note {i}", now=T0 + timedelta(seconds=i))
    await store(storage, item)
    loaded = await read(storage, lambda uow: uow.incidents.get(item.id, with_history=True))
    assert loaded.notes_size == NOTES_LIMIT + 3
    assert len(loaded.notes) == NOTES_LIMIT
    assert loaded.notes[0].content == "note 3"
    assert loaded.notes[-1].content == f"note {NOTES_LIMIT + 2}"


async def test_when_the_newest_match_resolves_an_older_open_one_takes_its_place(
    storage: Storage,
) -> None:
    older = incident(at=T0)
    newer = incident(at=T0 + timedelta(minutes=1))
    await store(storage, older, newer)

    def change(state: IncidentState | None) -> Callable[[UnitOfWork], None]:
        def work(uow: UnitOfWork) -> None:
            with uow:
                target = uow.incidents.get(newer.id)
                assert target is not None
                if state is None:
                    target.resolve(
                        method=ResolutionMethod.MANUAL,
                        root_cause="",
                        notes="",
                        resolved_by="x",
                        now=T0,
                    )
                else:
                    target.update(actor="x", now=T0, state=state)
                uow.incidents.save(target)
                uow.commit()

        return work

    def mergeable(uow: UnitOfWork) -> str | None:
        found = uow.incidents.find_mergeable("fp-1", T0)
        return None if found is None else found.id

    assert await storage.write(mergeable) == newer.id
    await storage.write(change(None))
    assert await storage.write(mergeable) == older.id
    await storage.write(change(IncidentState.TRIAGED))  # reopened
    assert await storage.write(mergeable) == newer.id


async def test_work_that_fails_after_writing_leaves_dedup_as_it_was(storage: Storage) -> None:
    kept = incident(at=T0)
    await store(storage, kept)

    def fail_after_adding(uow: UnitOfWork) -> None:
        with uow:
            uow.incidents.add(incident(at=T0 + timedelta(minutes=2)))
            uow.alerts.add(_received("doomed", kept.id))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await storage.write(fail_after_adding)

    def mergeable(uow: UnitOfWork) -> str | None:
        found = uow.incidents.find_mergeable("fp-1", T0)
        return None if found is None else found.id

    assert await storage.write(mergeable) == kept.id
    assert await storage.write(lambda uow: uow.alerts.get("s", "doomed")) is None


async def test_a_reopened_database_knows_its_open_incidents_and_alerts(tmp_path: Path) -> None:
    path = tmp_path / "warm.db"
    first = SqliteStorage(path)
    item = incident()

    def work(uow: UnitOfWork) -> None:
        with uow:
            uow.incidents.add(item)
            uow.alerts.add(_received("a-1", item.id))
            uow.commit()

    await first.write(work)
    await first.close()
    second = SqliteStorage(path)
    found = await second.write(lambda uow: uow.incidents.find_mergeable("fp-1", T0))
    assert found is not None and found.id == item.id
    assert await second.write(lambda uow: uow.alerts.get("s", "a-1")) is not None
    await second.close()


async def test_work_abandoned_or_failing_after_commit_leaves_nothing_for_later_writes(
    storage: Storage,
) -> None:
    heard: list[int] = []
    storage.add_listener(lambda events: heard.extend(e.sequence for e in events))
    abandoned = incident("abandoned", fingerprint="fp-abandoned")
    committed_then_failed = incident("failed", fingerprint="fp-failed")

    def abandon(uow: UnitOfWork) -> None:
        uow.incidents.add(abandoned)  # and return without commit()

    def commit_then_fail(uow: UnitOfWork) -> None:
        uow.incidents.add(committed_then_failed)
        uow.commit()
        raise RuntimeError("after commit")

    await storage.write(abandon)
    with pytest.raises(RuntimeError):
        await storage.write(commit_then_fail)
    for item in (abandoned, committed_then_failed):
        # mypy cannot type a lambda's default argument (it binds the loop's value).
        assert await storage.write(lambda uow, i=item: uow.incidents.get(i.id)) is None  # type: ignore[misc]
        assert (
            await storage.write(lambda uow, i=item: uow.incidents.find_mergeable(i.fingerprint, T0))  # type: ignore[misc]
            is None
        )
    assert heard == []


async def test_one_failing_job_does_not_fail_the_others_written_with_it(
    storage: Storage,
) -> None:
    existing = incident("existing")
    await store(storage, existing)

    def add(item: Incident) -> Callable[[UnitOfWork], str]:
        def work(uow: UnitOfWork) -> str:
            with uow:
                uow.incidents.add(item)
                uow.commit()
            return item.id

        return work

    clash = incident("clash")
    clash.id = existing.id  # the database refuses a second row with this id
    results = await asyncio.gather(
        storage.write(add(incident("first"))),
        storage.write(add(clash)),
        storage.write(add(incident("second"))),
        return_exceptions=True,
    )
    assert isinstance(results[0], str) and isinstance(results[2], str)
    assert isinstance(results[1], Exception)
    page = await read(storage, lambda uow: uow.incidents.list(IncidentQuery()))
    assert sorted(i.title for i in page.incidents) == ["existing", "first", "second"]


async def test_request_records_and_notes_are_found_by_id(storage: Storage) -> None:
    item = incident()
    note = item.add_note(author="a", content="c", now=T0)

    def work(uow: UnitOfWork) -> None:
        with uow:
            uow.incidents.add(item)
            uow.requests.add("req-1", RequestRecord("AddNote", item.id, note_id=note.id))
            uow.commit()

    await storage.write(work)
    assert await read(storage, lambda uow: uow.requests.get("req-1")) == RequestRecord(
        "AddNote", item.id, note_id=note.id
    )
    assert await read(storage, lambda uow: uow.requests.get("req-2")) is None
    assert await read(storage, lambda uow: uow.incidents.get_note(note.id)) == note
    assert await read(storage, lambda uow: uow.incidents.get_note("note_missing")) is None


async def test_cleared_alerts_are_counted_and_the_newest_is_known(storage: Storage) -> None:
    item = incident()
    older = _received("a-1", item.id)
    newer = replace(_received("a-2", item.id), receive_time=T0 + timedelta(seconds=1))

    def work(uow: UnitOfWork) -> None:
        with uow:
            uow.incidents.add(item)
            uow.alerts.add(older)
            uow.alerts.add(newer)
            uow.alerts.clear("s", "a-1", T0 + timedelta(minutes=1))
            uow.commit()

    await storage.write(work)
    assert await read(storage, lambda uow: uow.alerts.open_count(item.id)) == 1
    assert await read(storage, lambda uow: uow.alerts.latest(item.id)) == ("s", "a-2")
    stored = await read(storage, lambda uow: uow.alerts.get("s", "a-1"))
    assert stored.cleared_time == T0 + timedelta(minutes=1)
    assert await read(storage, lambda uow: uow.alerts.latest("inc_none")) is None


WINDOW = timedelta(minutes=15)


def firing(alert_id: str, **fields: Any) -> Alert:
    """An alert of one continuing problem: every one has the same fingerprint."""
    values: dict[str, Any] = {
        "source": "gpu-watch",
        "title": "GPU 3 above 90°C",
        "severity": Severity.P2,
        "type": IncidentType.INFRASTRUCTURE,
    } | fields
    return Alert(id=alert_id, **values)


async def submit(storage: Storage, alert: Alert, at: datetime) -> AlertAck:
    return await storage.write(partial(submit_alert, alert=alert, window=WINDOW, now=at))


async def submit_batch(storage: Storage, alerts: list[Alert], at: datetime) -> list[AlertAck]:
    return await storage.write(partial(submit_alerts, alerts=alerts, window=WINDOW, now=at))


async def test_an_alert_firing_every_ten_minutes_for_two_hours_stays_one_incident(
    storage: Storage,
) -> None:
    ticks = [T0 + timedelta(minutes=10 * n) for n in range(13)]  # 0, 10, ..., 120 minutes
    acks = [await submit(storage, firing(f"tick-{n}"), at) for n, at in enumerate(ticks)]
    assert [a.status for a in acks] == [AckStatus.ACCEPTED] + [AckStatus.DUPLICATE] * 12
    assert {a.incident_id for a in acks} == {acks[0].incident_id}
    stored = await read(storage, lambda uow: uow.incidents.get(acks[0].incident_id))
    assert stored.alert_count == 13
    assert (stored.create_time, stored.last_alert_time) == (T0, ticks[-1])


async def test_batches_firing_every_ten_minutes_for_two_hours_stay_one_incident(
    storage: Storage,
) -> None:
    ticks = [T0 + timedelta(minutes=10 * n) for n in range(13)]
    acks: list[AlertAck] = []
    for n, at in enumerate(ticks):
        acks += await submit_batch(storage, [firing(f"tick-{n}-a"), firing(f"tick-{n}-b")], at)
    assert [a.status for a in acks] == [AckStatus.ACCEPTED] + [AckStatus.DUPLICATE] * 25
    assert {a.incident_id for a in acks} == {acks[0].incident_id}
    stored = await read(storage, lambda uow: uow.incidents.get(acks[0].incident_id))
    assert stored.alert_count == 26
    assert (stored.create_time, stored.last_alert_time) == (T0, ticks[-1])


async def test_a_batch_stores_one_merged_event_per_incident_listing_every_alert(
    storage: Storage,
) -> None:
    first = await submit(storage, firing("a-0"), T0)
    batch = [firing(f"a-{n}") for n in range(1, 8)] + [firing("b-0", title="other")]
    batch += [firing("b-1", title="other"), firing("a-1"), firing("b-1", title="other")]
    acks = await submit_batch(storage, batch, T0 + timedelta(minutes=1))
    assert [a.status for a in acks] == [AckStatus.DUPLICATE] * 7 + [
        AckStatus.ACCEPTED,
        AckStatus.DUPLICATE,
        AckStatus.DUPLICATE,
        AckStatus.DUPLICATE,
    ]
    assert [a.retry for a in acks] == [False] * 9 + [True, True]
    assert "8 alerts so far" in acks[6].message
    assert acks[10].incident_id == acks[8].incident_id == acks[7].incident_id
    merged_into = await read(
        storage, lambda uow: uow.incidents.get(first.incident_id, with_history=True)
    )
    assert merged_into.alert_count == 8
    assert merged_into.last_alert_time == T0 + timedelta(minutes=1)
    created, merged = merged_into.timeline
    assert (created.type, merged.type) == (EventType.CREATED, EventType.ALERT_MERGED)
    assert merged.details["count"] == "7"
    assert [a["alert_id"] for a in json.loads(merged.details["alerts"])] == [
        f"a-{n}" for n in range(1, 8)
    ]
    opened = await read(
        storage, lambda uow: uow.incidents.get(acks[7].incident_id, with_history=True)
    )
    assert opened.alert_count == 2
    assert [(e.type, e.details.get("alert_id")) for e in opened.timeline] == [
        (EventType.CREATED, "b-0"),
        (EventType.ALERT_MERGED, "b-1"),
    ]
    events = await read(storage, lambda uow: uow.events.after(0, 100))
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    assert len(events) == 4
    again = await submit_batch(storage, batch, T0 + timedelta(minutes=2))
    assert [a.retry for a in again] == [True] * len(batch)
    assert [(a.status, a.incident_id) for a in again] == [(a.status, a.incident_id) for a in acks]


async def test_an_alert_after_a_quiet_gap_longer_than_the_window_opens_a_new_incident(
    storage: Storage,
) -> None:
    first = await submit(storage, firing("a-1"), T0)
    last_merged = T0 + timedelta(minutes=10)
    await submit(storage, firing("a-2"), last_merged)
    at_the_edge = await submit(storage, firing("a-3"), last_merged + WINDOW)
    assert (at_the_edge.status, at_the_edge.incident_id) == (
        AckStatus.DUPLICATE,
        first.incident_id,
    )
    after_the_gap = await submit(
        storage, firing("a-4"), last_merged + 2 * WINDOW + timedelta(microseconds=1)
    )
    assert after_the_gap.status is AckStatus.ACCEPTED
    assert after_the_gap.incident_id != first.incident_id
    old = await read(storage, lambda uow: uow.incidents.get(first.incident_id))
    assert (old.alert_count, old.last_alert_time) == (3, last_merged + WINDOW)
    # The quiet incident stays open; the problem's next alerts go to the new one.
    follow_up = await submit(
        storage, firing("a-5"), last_merged + 2 * WINDOW + timedelta(minutes=1)
    )
    assert follow_up.incident_id == after_the_gap.incident_id


async def test_an_alert_after_its_incident_resolved_opens_a_new_incident(
    storage: Storage,
) -> None:
    first = await submit(storage, firing("a-1"), T0)
    cleared = await submit(
        storage, firing("a-1", status=AlertStatus.RESOLVED), T0 + timedelta(minutes=1)
    )
    assert cleared.status is AckStatus.CLEARED
    again = await submit(storage, firing("a-2"), T0 + timedelta(minutes=2))
    assert again.status is AckStatus.ACCEPTED
    assert again.incident_id != first.incident_id


async def test_an_alert_after_a_resolve_in_the_same_batch_opens_a_new_incident(
    storage: Storage,
) -> None:
    acks = await submit_batch(
        storage,
        [
            firing("a-1"),
            firing("a-2"),
            firing("a-1", status=AlertStatus.RESOLVED),
            firing("a-2", status=AlertStatus.RESOLVED),
            firing("a-3"),
            firing("a-4"),
        ],
        T0,
    )
    assert [a.status for a in acks] == [
        AckStatus.ACCEPTED,
        AckStatus.DUPLICATE,
        AckStatus.CLEARED,
        AckStatus.CLEARED,
        AckStatus.ACCEPTED,
        AckStatus.DUPLICATE,
    ]
    first, second = acks[0].incident_id, acks[4].incident_id
    assert first != second and acks[5].incident_id == second
    resolved = await read(storage, lambda uow: uow.incidents.get(first))
    assert (resolved.state, resolved.alert_count) == (IncidentState.RESOLVED, 2)
    opened = await read(storage, lambda uow: uow.incidents.get(second))
    assert (opened.state, opened.alert_count) == (IncidentState.DETECTED, 2)
