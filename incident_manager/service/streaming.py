"""Live fan-out of committed events to StreamIncidents subscribers.

Each subscriber has its own bounded buffer, filled on the event loop as
commits land. Publishing never waits for a subscriber: when new events come
while a subscriber still has a full buffer of unread ones, it is marked as
overflowed and gets nothing more, so one slow reader can neither grow the
server's memory nor delay anyone else. The stream does not end: once the
subscriber has read what it holds, it catches up from storage, where every
event it missed is, and then follows live events again
(`IncidentManager.follow_events`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from incident_manager.domain.model import IncidentEvent
from incident_manager.domain.query import IncidentFilter

DEFAULT_BUFFER = 1000


class Subscription:
    """One subscriber's buffer of matching live events.

    The limit is checked once per published write, not per event: a
    subscriber with fewer than `capacity` unread events takes all the events
    of the write. A 1,000-alert batch lands as 1,000 events at once, before
    any subscriber can read one; counting them one by one would send every
    subscriber, even those that keep up, back to storage to catch up. So at
    most `capacity - 1` events plus those of one write are buffered.
    """

    def __init__(self, event_filter: IncidentFilter, capacity: int) -> None:
        self.filter = event_filter
        self.capacity = capacity
        self.overflowed = False
        self.closed = False
        self._buffer: deque[IncidentEvent] = deque()
        self._wakeup = asyncio.Event()

    def offer(self, events: Sequence[IncidentEvent]) -> None:
        """Take the matching events of one write, unless `capacity` are still unread."""
        if self.overflowed or self.closed:
            return
        matching = [event for event in events if self.filter.matches_event(event)]
        if not matching:
            return
        if len(self._buffer) >= self.capacity:
            self.overflowed = True
        else:
            self._buffer.extend(matching)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    def forget_overflow(self) -> None:
        """Drop the buffer after an overflow; the caller re-reads what it missed from storage."""
        self._buffer.clear()
        self.overflowed = False

    async def next(self) -> IncidentEvent | None:
        """The next buffered event; None once the buffer is drained after an overflow or close."""
        while not self._buffer:
            if self.closed or self.overflowed:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._buffer.popleft()


class EventHub:
    """Hands each committed event to every subscriber whose filter matches."""

    def __init__(self, buffer_size: int = DEFAULT_BUFFER) -> None:
        self.buffer_size = buffer_size
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, event_filter: IncidentFilter) -> Subscription:
        subscription = Subscription(event_filter, self.buffer_size)
        if self._closed:
            subscription.close()
        else:
            self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, events: list[IncidentEvent]) -> None:
        for subscription in self._subscriptions:
            subscription.offer(events)

    def close(self) -> None:
        """End every stream (the server is stopping); later subscribers end at once."""
        self._closed = True
        for subscription in self._subscriptions:
            subscription.close()
