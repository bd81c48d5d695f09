"""The incident manager's use cases on in-memory storage, with a clock the tests move."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.domain.errors import (
    EtagMismatch,
    IncidentNotFound,
    InvalidTransition,
    RateLimited,
    ShuttingDown,
    ValidationError,
)
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    EventType,
    IncidentEvent,
    IncidentState,
    IncidentType,
    ResolutionMethod,
    Severity,
)
from incident_manager.domain.query import IncidentFilter, Ordering, SortKey
from incident_manager.service.commands import (
    AddNote,
    CreateIncident,
    IncidentChanges,
    ResolveIncident,
    UpdateIncident,
)
from incident_manager.service.manager import IncidentManager, ListRequest
from incident_manager.service.streaming import EventHub
from tests.support import FakeClock

_counter = iter(range(1, 1_000_000))


def alert(**fields: object) -> Alert:
    values: dict[str, object] = {
        "id": f"a-{next(_counter)}",
        "source": "llm-sentinel",
        "title": "token usage 3x baseline",
        "severity": Severity.P2,
        "type": IncidentType.PERFORMANCE,
        "affected_resources": ("model/gpt-4o",),
    }
    values.update(fields)
    return Alert(**values)  # type: ignore[arg-type]


@pytest.fixture
def manager(clock: FakeClock) -> IncidentManager:
    return IncidentManager(
        MemoryStorage(), dedup_window=timedelta(minutes=15), clock=clock, hub=EventHub(5)
    )


async def test_a_retried_alert_is_counted_once_and_gets_the_same_answer(
    manager: IncidentManager,
) -> None:
    first = alert()
    ack = await manager.submit_alert(first)
    retry = await manager.submit_alert(first)
    assert ack.status is AckStatus.ACCEPTED
    assert retry.status is AckStatus.ACCEPTED
    assert retry.incident_id == ack.incident_id
    assert "retry" in retry.message
    incident = await manager.get_incident(ack.incident_id)
    assert incident.alert_count == 1
    assert incident.timeline_size == 1


async def test_a_duplicate_within_the_window_merges_and_reports_what_matched(
    manager: IncidentManager, clock: FakeClock
) -> None:
    opened = await manager.submit_alert(alert())
    clock.advance(minutes=14)
    merged = await manager.submit_alert(alert(severity=Severity.P0))
    assert merged.status is AckStatus.DUPLICATE
    assert merged.incident_id == opened.incident_id
    incident = await manager.get_incident(opened.incident_id)
    assert incident.alert_count == 2
    assert incident.severity is Severity.P0
    merge_event = next(e for e in incident.timeline if e.type is EventType.ALERT_MERGED)
    assert merge_event.details["matched_on"] == "source,type,title,affected_resources"


async def test_each_merged_alert_restarts_the_window(
    manager: IncidentManager, clock: FakeClock
) -> None:
    opened = await manager.submit_alert(alert())
    for _ in range(4):  # 56 minutes after the opening, never more than 14 apart
        clock.advance(minutes=14)
        merged = await manager.submit_alert(alert())
        assert (merged.status, merged.incident_id) == (AckStatus.DUPLICATE, opened.incident_id)
    incident = await manager.get_incident(opened.incident_id)
    assert incident.alert_count == 5
    assert incident.last_alert_time == clock.now


async def test_an_alert_after_a_quiet_gap_longer_than_the_window_opens_a_new_incident(
    manager: IncidentManager, clock: FakeClock
) -> None:
    first = await manager.submit_alert(alert())
    clock.advance(minutes=10)
    await manager.submit_alert(alert())
    clock.advance(minutes=15, seconds=1)
    later = await manager.submit_alert(alert())
    assert later.status is AckStatus.ACCEPTED
    assert later.incident_id != first.incident_id


async def test_an_alert_merges_into_the_incident_with_the_latest_alert_in_the_window(
    manager: IncidentManager, clock: FakeClock
) -> None:
    await manager.submit_alert(alert())
    clock.advance(minutes=20)
    newer = await manager.submit_alert(alert())
    clock.advance(minutes=1)
    merged = await manager.submit_alert(alert())
    assert merged.incident_id == newer.incident_id


async def test_an_alert_after_its_incident_resolved_opens_a_new_incident(
    manager: IncidentManager,
) -> None:
    first = await manager.submit_alert(alert(dedup_key="gpu-node-7"))
    await manager.resolve_incident(
        ResolveIncident(first.incident_id, ResolutionMethod.AUTOMATED, resolved_by="bot")
    )
    again = await manager.submit_alert(alert(dedup_key="gpu-node-7", title="other words"))
    assert again.status is AckStatus.ACCEPTED
    assert again.incident_id != first.incident_id


async def test_an_invalid_alert_names_every_bad_field_and_stores_nothing(
    manager: IncidentManager,
) -> None:
    with pytest.raises(ValidationError) as refused:
        await manager.submit_alert(
            alert(id="", title=" ", labels={f"k{i}": "v" for i in range(65)})
        )
    fields = {v.field for v in refused.value.violations}
    assert fields == {"alert.id", "alert.title", "alert.labels"}
    page = await manager.list_incidents(ListRequest(IncidentFilter(), Ordering()))
    assert page.total_size == 0


async def test_updates_follow_the_lifecycle_and_record_the_actor(manager: IncidentManager) -> None:
    incident = await manager.create_incident(
        CreateIncident("GPU OOM", Severity.P1, IncidentType.INFRASTRUCTURE, "k8s", actor="gina")
    )
    updated = await manager.update_incident(
        UpdateIncident(
            incident.id,
            IncidentChanges(state=IncidentState.INVESTIGATING, assignees=("gina",)),
            actor="gina",
        )
    )
    assert updated.state is IncidentState.INVESTIGATING
    assert [(e.type, e.actor) for e in updated.timeline] == [
        (EventType.CREATED, "gina"),
        (EventType.ASSIGNMENT_CHANGED, "gina"),
        (EventType.STATE_CHANGED, "gina"),
    ]
    with pytest.raises(InvalidTransition):
        await manager.update_incident(
            UpdateIncident(incident.id, IncidentChanges(state=IncidentState.TRIAGED))
        )


async def test_a_stale_etag_is_refused_and_a_current_one_accepted(
    manager: IncidentManager,
) -> None:
    incident = await manager.create_incident(
        CreateIncident("x", Severity.P3, IncidentType.DATA, "s")
    )
    await manager.update_incident(
        UpdateIncident(incident.id, IncidentChanges(title="y"), etag=incident.etag)
    )
    with pytest.raises(EtagMismatch):
        await manager.update_incident(
            UpdateIncident(incident.id, IncidentChanges(title="z"), etag=incident.etag)
        )
    with pytest.raises(EtagMismatch):
        await manager.resolve_incident(
            ResolveIncident(incident.id, ResolutionMethod.MANUAL, "me", etag=incident.etag)
        )


async def test_resolving_through_update_is_refused_with_a_pointer_to_resolve(
    manager: IncidentManager,
) -> None:
    incident = await manager.create_incident(
        CreateIncident("x", Severity.P3, IncidentType.DATA, "s")
    )
    with pytest.raises(ValidationError, match="ResolveIncident"):
        await manager.update_incident(
            UpdateIncident(incident.id, IncidentChanges(state=IncidentState.RESOLVED))
        )


async def test_unknown_incidents_are_not_found(manager: IncidentManager) -> None:
    with pytest.raises(IncidentNotFound):
        await manager.get_incident("inc_nope")
    with pytest.raises(IncidentNotFound):
        await manager.add_note(AddNote("inc_nope", "me", "hello"))


async def test_pages_stay_consistent_while_incidents_are_created(
    manager: IncidentManager, clock: FakeClock
) -> None:
    for i in range(7):
        clock.advance(seconds=1)
        await manager.submit_alert(alert(title=f"alert {i}"))
    request = ListRequest(IncidentFilter(), Ordering(), page_size=3)
    first = await manager.list_incidents(request)
    for i in range(5):
        clock.advance(seconds=1)
        await manager.submit_alert(alert(title=f"newer {i}"))
    seen = [i.title for i in first.incidents]
    token = first.next_page_token
    while token:
        page = await manager.list_incidents(
            ListRequest(IncidentFilter(), Ordering(), page_size=3, page_token=token)
        )
        seen += [i.title for i in page.incidents]
        token = page.next_page_token
    assert seen == [f"alert {i}" for i in reversed(range(7))]


async def test_a_page_token_only_works_with_the_query_that_made_it(
    manager: IncidentManager,
) -> None:
    for i in range(3):
        await manager.submit_alert(alert(title=f"t{i}"))
    page = await manager.list_incidents(ListRequest(IncidentFilter(), Ordering(), page_size=1))
    with pytest.raises(ValidationError, match="different filters"):
        await manager.list_incidents(
            ListRequest(
                IncidentFilter(severities=frozenset({Severity.P0})),
                Ordering(),
                page_token=page.next_page_token,
            )
        )
    with pytest.raises(ValidationError, match="not a token"):
        await manager.list_incidents(
            ListRequest(IncidentFilter(), Ordering(), page_token="garbage!")
        )


async def test_severity_order_puts_p0_first(manager: IncidentManager) -> None:
    for severity in (Severity.P3, Severity.P0, Severity.P4, Severity.P1):
        await manager.submit_alert(alert(title=severity.name, severity=severity))
    page = await manager.list_incidents(
        ListRequest(IncidentFilter(), Ordering(SortKey.SEVERITY, descending=False))
    )
    assert [i.severity for i in page.incidents] == [
        Severity.P0,
        Severity.P1,
        Severity.P3,
        Severity.P4,
    ]


async def collect(stream: object, count: int) -> list[IncidentEvent]:
    events: list[IncidentEvent] = []
    async for event in stream:  # type: ignore[attr-defined]
        events.append(event)
        if len(events) == count:
            break
    return events


async def test_a_resumed_stream_replays_what_it_missed_then_follows_live_events(
    manager: IncidentManager,
) -> None:
    for i in range(12):
        await manager.submit_alert(alert(title=f"t{i}"))
    stream = manager.follow_events(IncidentFilter(), after_sequence=4)
    first = await collect(stream, 8)
    assert [e.sequence for e in first] == list(range(5, 13))
    await manager.submit_alert(alert(title="live"))
    [live] = await collect(stream, 1)
    assert (live.sequence, live.title) == (13, "live")
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_subscriber_that_falls_behind_catches_up_from_storage_without_gaps(
    manager: IncidentManager,
) -> None:
    stream = manager.follow_events(IncidentFilter(), after_sequence=None)
    reader = asyncio.ensure_future(collect(stream, 1))
    await asyncio.sleep(0)
    for i in range(20):  # the hub buffers 5 per subscriber
        await manager.submit_alert(alert(title=f"t{i}"))
    [got] = await reader
    assert got.sequence == 1
    # 15 events more than its buffer behind: the same stream delivers them all,
    # the buffered ones first, then the rest read back from storage.
    rest = await collect(stream, 19)
    assert [e.sequence for e in rest] == list(range(2, 21))
    assert manager.catch_ups == 1
    await manager.submit_alert(alert(title="live again"))
    [live] = await collect(stream, 1)
    assert (live.sequence, live.title) == (21, "live again")
    assert manager.hub._subscriptions, "still subscribed to live events"
    await stream.aclose()  # type: ignore[attr-defined]


async def test_streams_end_with_a_resume_point_when_the_server_stops(
    manager: IncidentManager,
) -> None:
    await manager.submit_alert(alert())
    stream = manager.follow_events(IncidentFilter(), after_sequence=0)
    [event] = await collect(stream, 1)
    assert event.sequence == 1
    manager.close_streams()
    with pytest.raises(ShuttingDown, match="after_sequence=1"):
        await collect(stream, 1)


async def test_stream_filters_apply_to_the_incident_after_each_event(
    manager: IncidentManager,
) -> None:
    stream = manager.follow_events(
        IncidentFilter(severities=frozenset({Severity.P0})), after_sequence=0
    )
    minor = await manager.submit_alert(alert(severity=Severity.P3))
    await manager.submit_alert(alert(title="unrelated", severity=Severity.P4))
    await manager.submit_alert(alert(severity=Severity.P0))  # merges, escalates
    [event] = await asyncio.wait_for(collect(stream, 1), timeout=5)
    # The merge itself happened while the incident was still P3; the
    # escalation that followed is the first event of a P0 incident.
    assert (event.incident_id, event.event.type) == (minor.incident_id, EventType.SEVERITY_CHANGED)
    assert event.severity is Severity.P0


class GatedStorage(MemoryStorage):
    """Writes wait at a gate the test opens: a database that has fallen behind."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def write(self, work):  # type: ignore[no-untyped-def]
        await self.gate.wait()
        return await super().write(work)


async def test_an_overloaded_server_sheds_the_least_severe_alerts_at_once(
    clock: FakeClock,
) -> None:
    storage = GatedStorage()
    manager = IncidentManager(storage, clock=clock, max_pending_alerts=4)
    # Two P1 alerts wait to be stored: half the limit, where P3 and P4 are shed.
    waiting = [
        asyncio.ensure_future(manager.submit_alert(alert(severity=Severity.P1, title=f"w{i}")))
        for i in range(2)
    ]
    await asyncio.sleep(0)
    assert manager.pending_alerts == 2
    with pytest.raises(RateLimited, match="overloaded") as shed:
        await manager.submit_alert(alert(severity=Severity.P4))
    assert shed.value.scope == "overload"
    batch = asyncio.ensure_future(
        manager.submit_alerts([alert(id=f"b-{s.name}", severity=s, title=s.name) for s in Severity])
    )
    await asyncio.sleep(0)
    storage.gate.set()
    acks = {ack.alert_id: ack for ack in await batch}
    assert acks["b-P3"].status is AckStatus.RATE_LIMITED
    assert acks["b-P4"].status is AckStatus.RATE_LIMITED
    assert "overloaded" in acks["b-P4"].message
    assert {acks[f"b-{s}"].status for s in ("P0", "P1", "P2")} == {AckStatus.ACCEPTED}
    assert all(ack.status is AckStatus.ACCEPTED for ack in await asyncio.gather(*waiting))
    assert manager.pending_alerts == 0
