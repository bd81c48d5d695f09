"""The live fan-out: when a StreamIncidents subscriber counts as too slow."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from incident_manager.domain.model import (
    EventType,
    IncidentEvent,
    IncidentState,
    IncidentType,
    Severity,
    TimelineEvent,
)
from incident_manager.domain.query import IncidentFilter
from incident_manager.service.streaming import EventHub, Subscription


def events(first: int, count: int) -> list[IncidentEvent]:
    """`count` merges into one incident, with sequences from `first` on."""
    return [
        IncidentEvent(
            incident_id="inc_1",
            event=TimelineEvent(
                type=EventType.ALERT_MERGED,
                actor="llm-shield",
                message="alert merged",
                create_time=datetime(2026, 1, 1, tzinfo=UTC),
                sequence=sequence,
            ),
            title="Jailbreak attempts on tenant acme",
            state=IncidentState.DETECTED,
            severity=Severity.P1,
            type=IncidentType.SECURITY,
            source="llm-shield",
            assignees=(),
            alert_count=sequence,
        )
        for sequence in range(first, first + count)
    ]


async def read(subscription: Subscription, count: int) -> list[int | None]:
    """The next `count` sequences a reader gets; None once the stream is to end."""
    return [
        None if event is None else event.sequence
        for event in [await subscription.next() for _ in range(count)]
    ]


async def test_a_reader_one_event_behind_takes_a_whole_batch_larger_than_its_buffer() -> None:
    # A 1,000-alert batch publishes its events at once: a subscriber that keeps
    # up must not be ended because one write brought more than its buffer.
    hub = EventHub(buffer_size=5)
    subscription = hub.subscribe(IncidentFilter())
    hub.publish(events(1, 1))
    hub.publish(events(2, 20))
    assert not subscription.overflowed
    assert await read(subscription, 21) == list(range(1, 22))


async def test_a_reader_still_a_full_buffer_behind_when_new_events_come_is_too_slow() -> None:
    hub = EventHub(buffer_size=5)
    subscription = hub.subscribe(IncidentFilter())
    hub.publish(events(1, 3))
    hub.publish(events(4, 2))
    assert not subscription.overflowed
    hub.publish(events(6, 1))
    assert subscription.overflowed
    # What it had is still delivered, then its stream is to end.
    assert await read(subscription, 6) == [1, 2, 3, 4, 5, None]


async def test_events_the_filter_rejects_do_not_count_against_the_buffer() -> None:
    hub = EventHub(buffer_size=2)
    subscription = hub.subscribe(IncidentFilter(severities=frozenset({Severity.P0})))
    for first in range(1, 100, 10):
        hub.publish(events(first, 10))
    assert not subscription.overflowed
    [urgent] = events(101, 1)
    hub.publish([replace(urgent, severity=Severity.P0)])
    assert await read(subscription, 1) == [101]
