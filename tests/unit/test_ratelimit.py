"""Per-source token buckets."""

from __future__ import annotations

from incident_manager.domain.model import Severity
from incident_manager.domain.ratelimit import RateLimit, SourceRateLimiter
from tests.conftest import FakeClock


def test_a_source_may_burst_then_is_limited_until_tokens_refill(clock: FakeClock) -> None:
    limiter = SourceRateLimiter(RateLimit(per_second=2, burst=3), clock)
    assert [limiter.admit("noisy", Severity.P3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.admit("noisy", Severity.P3)
    assert wait == 0.5
    clock.advance(seconds=0.5)
    assert limiter.admit("noisy", Severity.P3) == 0.0


def test_sources_have_their_own_buckets(clock: FakeClock) -> None:
    limiter = SourceRateLimiter(RateLimit(per_second=1, burst=1), clock)
    assert limiter.admit("a", Severity.P2) == 0.0
    assert limiter.admit("a", Severity.P2) > 0
    assert limiter.admit("b", Severity.P2) == 0.0


def test_p0_alerts_are_never_limited_and_take_no_tokens(clock: FakeClock) -> None:
    limiter = SourceRateLimiter(RateLimit(per_second=1, burst=1), clock)
    assert all(limiter.admit("a", Severity.P0) == 0.0 for _ in range(50))
    assert limiter.admit("a", Severity.P1) == 0.0


def test_without_a_limit_everything_is_admitted(clock: FakeClock) -> None:
    limiter = SourceRateLimiter(None, clock)
    assert all(limiter.admit("a", Severity.P4) == 0.0 for _ in range(1000))
