"""Per-source rate limiting: a token bucket for each alert source.

A P0 alert is never limited: the one alert that matters most must not be
lost to a noisy neighbour. Buckets are kept for a bounded number of sources;
the least recently seen are forgotten first (which only makes them lenient).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from incident_manager.domain.model import Clock, Severity

MAX_TRACKED_SOURCES = 10_000


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    """Sustained alerts per second per source."""
    burst: int
    """Alerts a quiet source may send at once."""


@dataclass
class _Bucket:
    tokens: float
    updated: datetime


class SourceRateLimiter:
    def __init__(self, limit: RateLimit | None, clock: Clock) -> None:
        self.limit = limit
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def admit(self, source: str, severity: Severity) -> float:
        """0 if the alert may go ahead, else the seconds until its source may send again."""
        limit = self.limit
        if limit is None or severity is Severity.P0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = _Bucket(float(limit.burst), now)
        elapsed = max((now - bucket.updated).total_seconds(), 0.0)
        bucket.tokens = min(float(limit.burst), bucket.tokens + elapsed * limit.per_second)
        bucket.updated = now
        self._buckets[source] = bucket
        if len(self._buckets) > MAX_TRACKED_SOURCES:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / limit.per_second
