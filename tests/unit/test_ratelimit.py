"""Token buckets per source and for the whole server; overload sheds the least severe first."""

from __future__ import annotations

from incident_manager.domain.model import Severity
from incident_manager.domain.ratelimit import (
    AlertRateLimiter,
    OverloadShedder,
    RateLimit,
    Throttled,
)
from tests.support import FakeClock


def test_a_source_may_burst_then_is_limited_until_tokens_refill(clock: FakeClock) -> None:
    limiter = AlertRateLimiter(RateLimit(per_second=2, burst=3), clock)
    assert [limiter.admit("noisy", Severity.P1) for _ in range(3)] == [None, None, None]
    assert limiter.admit("noisy", Severity.P1) == Throttled("source", 0.5)
    clock.advance(seconds=0.5)
    assert limiter.admit("noisy", Severity.P1) is None


def test_sources_have_their_own_buckets(clock: FakeClock) -> None:
    limiter = AlertRateLimiter(RateLimit(per_second=1, burst=1), clock)
    assert limiter.admit("a", Severity.P1) is None
    assert limiter.admit("a", Severity.P1) is not None
    assert limiter.admit("b", Severity.P1) is None


def test_p0_alerts_are_never_limited_and_take_no_tokens(clock: FakeClock) -> None:
    limiter = AlertRateLimiter(
        RateLimit(per_second=1, burst=1), clock, server_wide=RateLimit(per_second=1, burst=1)
    )
    assert all(limiter.admit("a", Severity.P0) is None for _ in range(50))
    assert limiter.admit("a", Severity.P1) is None


def test_without_a_limit_everything_is_admitted(clock: FakeClock) -> None:
    limiter = AlertRateLimiter(None, clock)
    assert all(limiter.admit("a", Severity.P4) is None for _ in range(1000))


def test_a_flood_sheds_the_least_severe_alerts_first(clock: FakeClock) -> None:
    limiter = AlertRateLimiter(RateLimit(per_second=10, burst=100), clock)
    admitted = dict.fromkeys(Severity, 0)
    # One second of a flood: 100 alerts of each severity, interleaved.
    for _ in range(100):
        for severity in Severity:
            admitted[severity] += limiter.admit("flood", severity) is None
    assert admitted[Severity.P0] == 100
    assert admitted[Severity.P1] > admitted[Severity.P2] > admitted[Severity.P3]
    assert admitted[Severity.P3] > admitted[Severity.P4]
    # Two seconds later 20 tokens are back: enough for P1, not for P4, which
    # must leave half the burst.
    clock.advance(seconds=2)
    assert limiter.admit("flood", Severity.P4) is not None
    assert limiter.admit("flood", Severity.P1) is None


def test_the_server_wide_limit_applies_over_all_sources_and_says_so(clock: FakeClock) -> None:
    limiter = AlertRateLimiter(
        RateLimit(per_second=100, burst=100), clock, server_wide=RateLimit(per_second=1, burst=3)
    )
    assert [limiter.admit(f"s{i}", Severity.P1) for i in range(3)] == [None] * 3
    refused = limiter.admit("s9", Severity.P1)
    assert refused is not None and refused.scope == "server"
    # A refusal by the server-wide limit costs the source nothing.
    clock.advance(seconds=1)
    assert limiter.admit("s9", Severity.P1) is None


def test_overload_sheds_p4_first_and_p0_never() -> None:
    shedder = OverloadShedder(max_pending=100)
    shed_at = {
        severity: next(p for p in range(0, 1000) if shedder.admit(severity, p) is not None)
        for severity in (Severity.P1, Severity.P2, Severity.P3, Severity.P4)
    }
    assert shed_at == {Severity.P1: 100, Severity.P2: 75, Severity.P3: 50, Severity.P4: 25}
    assert shedder.admit(Severity.P0, 10**9) is None
    refused = shedder.admit(Severity.P4, 25)
    assert refused is not None and refused.scope == "overload"
