"""Rate limiting of new alerts: a token bucket per source, and one for the whole server.

Overload sheds the least severe alerts first. A P0 alert is never limited:
the one alert that matters most must not be lost to a noisy neighbour. The
other severities may only take a token while the bucket holds more than a
reserve kept for the more severe ones: P1 takes the last token, P2 leaves 10%
of the burst, P3 25%, P4 half (rounded down, so a tiny burst keeps no
reserve). Under a flood of mixed alerts, P4 and P3 therefore run dry first
while P1 and P2 still get through.

Buckets are kept for a bounded number of sources; the least recently seen
are forgotten first (which only makes them lenient).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from incident_manager.domain.model import Clock, Severity

MAX_TRACKED_SOURCES = 10_000
RESERVE = {Severity.P1: 0.0, Severity.P2: 0.10, Severity.P3: 0.25, Severity.P4: 0.50}
"""Share of the burst a severity must leave in the bucket for more severe alerts."""


@dataclass(frozen=True)
class RateLimit:
    per_second: float
    """Sustained alerts per second."""
    burst: int
    """Alerts a quiet sender may send at once."""


@dataclass(frozen=True)
class Throttled:
    """Why an alert was refused: which limit applied, and when to retry."""

    scope: str
    """`source` (the alert's own source's limit), `server` (all sources together) or
    `overload` (too many alerts wait to be stored; see OverloadShedder)."""
    retry_after: float


@dataclass
class _Bucket:
    tokens: float
    updated: datetime

    def take(self, limit: RateLimit, severity: Severity, now: datetime) -> float:
        """0 and a token taken, or the seconds until this severity could take one."""
        elapsed = max((now - self.updated).total_seconds(), 0.0)
        self.tokens = min(float(limit.burst), self.tokens + elapsed * limit.per_second)
        self.updated = now
        needed = 1.0 + math.floor(RESERVE.get(severity, 0.0) * limit.burst)
        if self.tokens >= needed:
            self.tokens -= 1.0
            return 0.0
        return (needed - self.tokens) / limit.per_second


class AlertRateLimiter:
    def __init__(
        self,
        per_source: RateLimit | None,
        clock: Clock,
        server_wide: RateLimit | None = None,
    ) -> None:
        self.per_source = per_source
        self.server_wide = server_wide
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._server = _Bucket(float(server_wide.burst), clock()) if server_wide else None

    def admit(self, source: str, severity: Severity) -> Throttled | None:
        """None if the alert may go ahead (a token is taken), else which limit applied."""
        if severity is Severity.P0:
            return None
        now = self.clock()
        if self.per_source is not None:
            bucket = self._buckets.pop(source, None)
            if bucket is None:
                bucket = _Bucket(float(self.per_source.burst), now)
            self._buckets[source] = bucket
            if len(self._buckets) > MAX_TRACKED_SOURCES:
                self._buckets.popitem(last=False)
            wait = bucket.take(self.per_source, severity, now)
            if wait > 0:
                return Throttled("source", wait)
        if self._server is not None and self.server_wide is not None:
            wait = self._server.take(self.server_wide, severity, now)
            if wait > 0:
                if self.per_source is not None:
                    # Not admitted after all: give the source its token back.
                    self._buckets[source].tokens += 1.0
                return Throttled("server", wait)
        return None


SHED_AT = {Severity.P1: 1.0, Severity.P2: 0.75, Severity.P3: 0.5, Severity.P4: 0.25}
"""Share of the pending-alerts limit at which each severity starts being shed."""
OVERLOAD_RETRY_AFTER = 1.0


@dataclass(frozen=True)
class OverloadShedder:
    """Refuses new alerts while too many wait to be stored, the least severe first.

    Rate limits bound what callers may send; this bounds what the server has
    accepted but not yet stored, so an overloaded server answers at once
    instead of slowly. P4 alerts are shed once a quarter of `max_pending`
    wait, P3 at half, P2 at three quarters, P1 at the limit, P0 never.
    """

    max_pending: int

    def admit(self, severity: Severity, pending: int) -> Throttled | None:
        share = SHED_AT.get(severity)
        if share is None or pending < share * self.max_pending:
            return None
        return Throttled("overload", OVERLOAD_RETRY_AFTER)
