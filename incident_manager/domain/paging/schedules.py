"""Who is on call for a schedule at a moment, since when and until when.

Turns and restrictions are wall-clock times in the schedule's zone. A local
time becomes an instant by one rule (`local_to_utc`), used for hand-offs and
restriction boundaries alike:

- a time that exists once is that instant;
- a time that exists twice (the hour repeated when clocks go back) is its
  first occurrence;
- a time that does not exist (the hour skipped when clocks go forward) is the
  moment the clocks jump, the end of the gap: a 02:30 hand-off on the day
  Berlin skips from 02:00 to 03:00 happens at 03:00 local time.

Turn k of a layer starts at the local time `handoff + k * rotation`, so a
daily 09:00 hand-off is at 09:00 local time on both sides of a change, and the
turn across the change lasts 23 or 25 hours.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from incident_manager.domain.paging.model import Layer, Override, Schedule

MICROSECOND = timedelta(microseconds=1)
_DAY = timedelta(days=1)
_MAX_STEPS = 1000
"""Every step of the sweeps below lands on a real change, so this is never reached;
it bounds the loops should a zone's rules ever defeat that reasoning."""


@dataclass(frozen=True)
class OnCall:
    """Who is on call for a schedule at a moment, and for how long that answer holds."""

    schedule_id: str
    user_id: str | None
    """None: nobody (no layer covers this moment)."""
    since: datetime | None
    """When this answer began; None if it always held."""
    until: datetime | None
    """The next moment the answer changes (another user, layer or override); None if never."""
    layer: int | None = None
    """Index of the layer that decided (0 is the first in the file), if a layer did."""
    override_id: str | None = None
    """The override that decided, if one did."""

    @property
    def source(self) -> str:
        """`override X`, `layers[N]` or `nobody`: what decided the answer."""
        if self.override_id is not None:
            return f"override {self.override_id}"
        if self.layer is not None:
            return f"layers[{self.layer}]"
        return "nobody"


@functools.lru_cache(maxsize=16384)
def local_to_utc(local: datetime, zone: ZoneInfo) -> datetime:
    """The instant (in UTC) of a naive wall-clock time in `zone`, by the module's rule."""
    if local.tzinfo is not None:
        raise ValueError("local_to_utc takes a naive wall-clock time")
    first = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == local:
        return first  # exists; fold=0 is the first of two occurrences
    # Skipped by a jump of the clocks: the two readings of the offset bracket
    # the jump; find its instant, the first with the later offset.
    second = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = min(first, second), max(first, second)
    after = high.astimezone(zone).utcoffset()
    lo, hi = 0, (high - low) // MICROSECOND
    while lo < hi:
        mid = (lo + hi) // 2
        if (low + mid * MICROSECOND).astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid + 1
    return low + lo * MICROSECOND


def local_time(moment: datetime, zone: ZoneInfo) -> datetime:
    """The naive wall-clock time in `zone` at an aware moment."""
    return moment.astimezone(zone).replace(tzinfo=None)


class _LayerClock:
    """One layer's state over time: the user on turn while it covers, else None."""

    def __init__(self, layer: Layer, zone: ZoneInfo) -> None:
        self.layer = layer
        self.zone = zone
        self.users = layer.users
        self.start = self.turn_start(0)

    def turn_start(self, k: int) -> datetime:
        return local_to_utc(self.layer.handoff + k * self.layer.rotation, self.zone)

    def turn_at(self, t: datetime) -> int:
        """The last turn started at or before t (t must not be before the first)."""
        k = max(0, (local_time(t, self.zone) - self.layer.handoff) // self.layer.rotation)
        # The estimate is off by one at most, around folds and gaps.
        while k > 0 and self.turn_start(k) > t:
            k -= 1
        while self.turn_start(k + 1) <= t:
            k += 1
        return k

    def state(self, t: datetime) -> str | None:
        if t < self.start or not self.covered(t):
            return None
        return self.users[self.turn_at(t) % len(self.users)]

    def next_change(self, t: datetime) -> datetime | None:
        """The first moment after t at which the state may differ from the state at t."""
        if t < self.start:
            if self.covered(self.start):
                return self.start
            return self._next_boundary(self.start)
        if not self.covered(t):
            return self._next_boundary(t)
        found = [m for m in (self._next_boundary(t), self._next_user_change(t)) if m is not None]
        return min(found, default=None)

    def prev_change(self, t: datetime) -> datetime | None:
        """The start of the stretch, up to t, over which the state is the state at t."""
        if t < self.start:
            return None
        boundary = self._prev_boundary(t)
        if self.covered(t):
            return max(boundary or self.start, self.start, self._user_run_start(t))
        if boundary is not None and boundary > self.start:
            return boundary
        return None

    def _next_user_change(self, t: datetime) -> datetime | None:
        k = self.turn_at(t)
        n = len(self.users)
        me = self.users[k % n]
        for j in range(k + 1, k + n + 1):
            if self.users[j % n] != me:
                return self.turn_start(j)
        return None

    def _user_run_start(self, t: datetime) -> datetime:
        k = self.turn_at(t)
        n = len(self.users)
        me = self.users[k % n]
        if all(user == me for user in self.users):
            return self.start
        j = k
        while j > 0 and self.users[(j - 1) % n] == me:
            j -= 1
        return self.turn_start(j)

    # Restrictions repeat every week in local time, so a window of a little
    # more than a week around t holds the next and the previous boundary if
    # there is one at all. A span lasts at most a day, which fixes the margins.

    def covered(self, t: datetime) -> bool:
        if not self.layer.restrictions:
            return True
        day = local_time(t, self.zone).date()
        return any(s <= t < e for s, e in self._spans(day - 2 * _DAY, day))

    def _next_boundary(self, t: datetime) -> datetime | None:
        if not self.layer.restrictions:
            return None
        day = local_time(t, self.zone).date()
        horizon = self._midnight(day + 9 * _DAY)
        found = [
            m
            for span in self._spans(day - 2 * _DAY, day + 9 * _DAY)
            for m in span
            if t < m < horizon
        ]
        return min(found, default=None)

    def _prev_boundary(self, t: datetime) -> datetime | None:
        if not self.layer.restrictions:
            return None
        day = local_time(t, self.zone).date()
        horizon = self._midnight(day - 8 * _DAY)
        found = [
            m
            for span in self._spans(day - 10 * _DAY, day + _DAY)
            for m in span
            if horizon <= m <= t
        ]
        return max(found, default=None)

    def _midnight(self, day: date) -> datetime:
        return local_to_utc(datetime.combine(day, datetime.min.time()), self.zone)

    def _spans(self, first: date, last: date) -> list[tuple[datetime, datetime]]:
        """The covered spans starting on local days first..last, merged, as instants."""
        raw = []
        day = first
        while day <= last:
            for restriction in self.layer.restrictions:
                if day.weekday() in restriction.days:
                    begin = datetime.combine(day, restriction.start)
                    start = local_to_utc(begin, self.zone)
                    end = local_to_utc(begin + restriction.length, self.zone)
                    if start < end:  # a span inside a skipped hour is empty
                        raw.append((start, end))
            day += _DAY
        raw.sort()
        merged: list[tuple[datetime, datetime]] = []
        for start, end in raw:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged


_Answer = tuple[str | None, int | None, str | None]
"""(user, layer, override): what on_call reports, without the times."""


def _winning_override(overrides: Sequence[Override], t: datetime) -> Override | None:
    active = [o for o in overrides if o.covers(t)]
    return max(active, key=lambda o: (o.start, o.id), default=None)


def _answer(clocks: Sequence[_LayerClock], overrides: Sequence[Override], t: datetime) -> _Answer:
    override = _winning_override(overrides, t)
    if override is not None:
        return (override.user_id, None, override.id)
    for index in reversed(range(len(clocks))):
        user = clocks[index].state(t)
        if user is not None:
            return (user, index, None)
    return (None, None, None)


def on_call(schedule: Schedule, at: datetime, overrides: Sequence[Override] = ()) -> OnCall:
    """Who is on call for `schedule` at the aware moment `at`, given the stored overrides.

    An override in force wins over every layer; otherwise the last layer (in
    file order) that covers the moment decides. Overrides of other schedules
    are ignored. `since` and `until` are in UTC.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("on_call needs an aware moment")
    at = at.astimezone(UTC)
    mine = [o for o in overrides if o.schedule_id == schedule.id]
    clocks = [_LayerClock(layer, schedule.time_zone) for layer in schedule.layers]
    answer = _answer(clocks, mine, at)
    user, layer, override = answer
    return OnCall(
        schedule_id=schedule.id,
        user_id=user,
        since=_since(clocks, mine, at, answer),
        until=_until(clocks, mine, at, answer),
        layer=layer,
        override_id=override,
    )


def _deciders(clocks: Sequence[_LayerClock], answer: _Answer) -> Sequence[_LayerClock]:
    """The layers whose changes can change the answer: the winner and those above it.

    While an override wins, none can; while nobody covers, every layer can.
    """
    _, layer, override = answer
    if override is not None:
        return ()
    return clocks[layer or 0 :]


def _until(
    clocks: Sequence[_LayerClock], overrides: Sequence[Override], at: datetime, answer: _Answer
) -> datetime | None:
    current = at
    for _ in range(_MAX_STEPS):
        here = _answer(clocks, overrides, current)
        moments = [m for o in overrides for m in (o.start, o.end) if m > current]
        moments += [
            m for clock in _deciders(clocks, here) if (m := clock.next_change(current)) is not None
        ]
        if not moments:
            return None
        current = min(moments)
        if _answer(clocks, overrides, current) != answer:
            return current
    return None


def _since(
    clocks: Sequence[_LayerClock], overrides: Sequence[Override], at: datetime, answer: _Answer
) -> datetime | None:
    current = at
    for _ in range(_MAX_STEPS):
        here = _answer(clocks, overrides, current)
        moments = [m for o in overrides for m in (o.start, o.end) if m <= current]
        moments += [
            m for clock in _deciders(clocks, here) if (m := clock.prev_change(current)) is not None
        ]
        if not moments:
            return None
        began = max(moments)
        if _answer(clocks, overrides, began - MICROSECOND) != answer:
            return began
        current = began - MICROSECOND
    return None
