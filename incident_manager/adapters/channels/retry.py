"""When to try a delivery again, and when to stop.

The schedule (`DEFAULT_POLICY`): at most **8 attempts**, and none started more than **1 hour**
after the first. After attempt *n* fails with RETRY, the next one waits a random time in the
upper half of an exponential ceiling, `ceiling(n) = min(15 min, 10 s * 3^(n-1))`:

| after attempt | ceiling | wait drawn from |
| --- | --- | --- |
| 1 | 10 s | 5-10 s |
| 2 | 30 s | 15-30 s |
| 3 | 90 s | 45-90 s |
| 4 | 4.5 min | 2.25-4.5 min |
| 5 | 13.5 min | 6.75-13.5 min |
| 6 | 15 min | 7.5-15 min |
| 7 | 15 min | 7.5-15 min |

so the eighth attempt comes 25-50 minutes after the first (plus the attempts' own time), and a
delivery still failing then is FAILED. Why this shape: a page is worth little after an hour
(the escalation has moved on by then), the first retries should be quick because most
failures are a blip, and the jitter spreads a storm's retries so a receiver that comes back is
not hit by all of them at once. The jitter is AWS's "equal jitter" rather than "full jitter"
(which draws from 0 to the ceiling): with full jitter, unlucky draws could spend all eight
attempts within a minute of a receiver's restart; here each wait is at least half its ceiling.
The random source is passed in, so tests (and a replica's seeded RNG) are reproducible.

`Retry-After` (seconds or an HTTP date) is a lower bound: the wait is the larger of it and the
jittered backoff, and it is capped at 15 minutes, so a receiver can slow us down but cannot
park a page for a day. A wait that would start the next attempt past the 1 hour limit ends
the delivery instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from incident_manager.adapters.channels.base import AttemptResult, Outcome


@dataclass(frozen=True)
class RetryPolicy:
    """A bounded retry schedule; see the module's docstring for the default's numbers."""

    max_attempts: int = 8
    """Attempts in all, the first included."""
    max_age: float = 3600.0
    """Seconds after the first attempt past which no attempt starts."""
    base_delay: float = 10.0
    """The ceiling of the first wait, in seconds."""
    multiplier: float = 3.0
    max_delay: float = 900.0
    """No wait is longer, whatever the backoff or `Retry-After` says."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_age < 0:
            raise ValueError("a retry policy needs at least one attempt and a non-negative age")
        if not 0 < self.base_delay <= self.max_delay or self.multiplier < 1:
            raise ValueError("a retry policy needs 0 < base_delay <= max_delay, multiplier >= 1")


DEFAULT_POLICY = RetryPolicy()


def backoff(
    attempt: int,
    retry_after: float | None,
    rng: random.Random,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> float:
    """Seconds to wait after failed attempt number `attempt` (from 1) before the next one.

    Equal jitter on an exponential ceiling, at least `retry_after` when the receiver gave one,
    never more than `policy.max_delay`.
    """
    if attempt < 1:
        raise ValueError("attempts count from 1")
    # min() before the power would overflow for absurd attempt numbers: cap the exponent.
    exponent = min(attempt - 1, 64)
    ceiling = min(policy.max_delay, policy.base_delay * policy.multiplier**exponent)
    delay = rng.uniform(ceiling / 2, ceiling)
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return min(delay, policy.max_delay)


def next_retry(
    result: AttemptResult,
    *,
    attempt: int,
    age: float,
    rng: random.Random,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> float | None:
    """Seconds until the next attempt, or None when there is none.

    `attempt` is the number of the attempt that produced `result`, `age` the seconds since
    the delivery's first attempt started. None means: SENT and FAILED are final, and a RETRY
    that has used up the schedule is now a final failure (record it as FAILED, with the
    result's detail).
    """
    if result.outcome is not Outcome.RETRY or attempt >= policy.max_attempts:
        return None
    delay = backoff(attempt, result.retry_after, rng, policy)
    if age + delay > policy.max_age:
        return None
    return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """The seconds a `Retry-After` header asks for (RFC 9110: delay-seconds or an HTTP
    date), or None when it is absent or unreadable. A date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; parsedate_to_datetime leaves "-0000" naive.
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())
