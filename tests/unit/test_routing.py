"""Routes choose an incident's escalation policy; silences hold its paging."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from incident_manager.domain.errors import ValidationError
from incident_manager.domain.model import Incident, IncidentType, Severity
from incident_manager.domain.paging.model import (
    EscalationPolicy,
    Level,
    Matcher,
    PagingConfig,
    Route,
    Silence,
    Target,
    TargetKind,
    WebhookChannel,
)
from incident_manager.domain.paging.routing import (
    PagingSubject,
    choose_route,
    matches,
    silenced_until,
    silences_holding,
)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def policy(policy_id: str) -> EscalationPolicy:
    return EscalationPolicy(
        id=policy_id,
        levels=(Level(after=timedelta(0), targets=(Target(TargetKind.CHANNEL, "hook"),)),),
    )


def config(*routes: Route) -> PagingConfig:
    return PagingConfig(
        channels=(WebhookChannel(id="hook", url="http://127.0.0.1:8099/hook"),),
        escalation_policies=(policy("critical"), policy("security"), policy("default")),
        routes=routes,
    )


SAMPLE = config(
    Route("critical", Matcher(severities=frozenset({Severity.P0, Severity.P1}))),
    Route(
        "security",
        Matcher(sources=frozenset({"llm-shield"}), types=frozenset({IncidentType.SECURITY})),
    ),
    Route("default"),
)


def subject(
    severity: Severity = Severity.P2,
    type: IncidentType = IncidentType.PERFORMANCE,
    source: str = "llm-sentinel",
    **labels: str,
) -> PagingSubject:
    return PagingSubject(source=source, type=type, severity=severity, labels=labels)


def test_the_first_matching_route_wins() -> None:
    chosen = choose_route(SAMPLE, subject(Severity.P1, IncidentType.SECURITY, "llm-shield"))
    assert chosen is not None
    assert (chosen.index, chosen.policy.id) == (0, "critical")


def test_every_field_of_a_match_must_match() -> None:
    chosen = choose_route(SAMPLE, subject(Severity.P3, IncidentType.SECURITY, "llm-shield"))
    assert chosen is not None and chosen.policy.id == "security"
    other_source = choose_route(SAMPLE, subject(Severity.P3, IncidentType.SECURITY, "edge-agent"))
    assert other_source is not None and other_source.policy.id == "default"


def test_a_route_without_match_is_the_fallback() -> None:
    chosen = choose_route(SAMPLE, subject(Severity.P4))
    assert chosen is not None
    assert (chosen.index, chosen.route.is_fallback, chosen.policy.id) == (2, True, "default")


def test_without_a_fallback_an_incident_that_matches_nothing_is_not_paged() -> None:
    strict = config(Route("critical", Matcher(severities=frozenset({Severity.P0}))))
    assert not strict.has_fallback_route
    assert choose_route(strict, subject(Severity.P2)) is None


def test_a_severity_rise_can_move_an_incident_to_another_route() -> None:
    before = choose_route(SAMPLE, subject(Severity.P2))
    after = choose_route(SAMPLE, subject(Severity.P1))
    assert before is not None and after is not None
    assert (before.policy.id, after.policy.id) == ("default", "critical")


def test_labels_match_exact_values_and_must_be_present() -> None:
    eu = Matcher(labels={"region": "eu-west-1", "tier": "gold"})
    assert matches(eu, subject(region="eu-west-1", tier="gold", extra="x"))
    assert not matches(eu, subject(region="eu-west-1"))
    assert not matches(eu, subject(region="eu-west-10", tier="gold"))


def test_label_patterns_must_match_the_whole_value() -> None:
    gpt = Matcher(labels_regex={"model": re.compile(r"gpt-4.*")})
    assert matches(gpt, subject(model="gpt-4o"))
    assert not matches(gpt, subject(model="my-gpt-4o"))
    assert not matches(gpt, subject())


def test_an_empty_matcher_matches_everything() -> None:
    assert Matcher().is_empty
    assert matches(Matcher(), subject())
    assert Route("default", Matcher()).is_fallback


def test_the_subject_of_an_incident_is_its_current_source_type_severity_and_labels() -> None:
    incident = Incident.open(
        title="p99 latency",
        description="",
        severity=Severity.P1,
        type=IncidentType.PERFORMANCE,
        source="llm-sentinel",
        affected_resources=[],
        labels={"region": "eu-west-1"},
        assignees=[],
        fingerprint="f",
        actor="llm-sentinel",
        now=NOW,
    )
    assert PagingSubject.of(incident) == subject(Severity.P1, region="eu-west-1")


# Silences


def silence(
    silence_id: str = "sil-1",
    start: datetime = NOW,
    end: datetime = NOW + timedelta(hours=2),
    matcher: Matcher | None = None,
) -> Silence:
    return Silence(
        id=silence_id,
        matcher=matcher or Matcher(sources=frozenset({"llm-sentinel"})),
        start=start,
        end=end,
        created_by="carol",
        comment="maintenance",
    )


def test_a_silence_holds_matching_incidents_from_its_start_until_its_end() -> None:
    window = silence()
    assert silences_holding([window], subject(), NOW - timedelta(microseconds=1)) == ()
    assert silences_holding([window], subject(), NOW) == (window,)
    assert silences_holding([window], subject(), window.end - timedelta(microseconds=1))
    assert silences_holding([window], subject(), window.end) == ()


def test_a_silence_holds_only_what_its_matchers_match() -> None:
    shield_p0 = silence(
        matcher=Matcher(
            sources=frozenset({"llm-shield"}),
            severities=frozenset({Severity.P0}),
            labels={"app": "chat"},
        )
    )
    assert silences_holding([shield_p0], subject(Severity.P0, source="llm-shield", app="chat"), NOW)
    assert not silences_holding([shield_p0], subject(Severity.P1, source="llm-shield"), NOW)
    assert not silences_holding([shield_p0], subject(Severity.P0, app="chat"), NOW)


def test_every_silence_that_holds_is_named_in_the_order_given() -> None:
    first, second = silence("a"), silence("b", end=NOW + timedelta(hours=5))
    other = silence("c", matcher=Matcher(sources=frozenset({"llm-shield"})))
    assert silences_holding([second, other, first], subject(), NOW) == (second, first)


def test_paging_waits_until_the_last_of_a_chain_of_silences_ends() -> None:
    chain = [
        silence("late", start=NOW + timedelta(hours=3), end=NOW + timedelta(hours=4)),
        silence("first", start=NOW - timedelta(hours=1), end=NOW + timedelta(hours=1)),
        silence("touching", start=NOW + timedelta(hours=1), end=NOW + timedelta(hours=3)),
    ]
    assert silenced_until(chain, subject(), NOW) == NOW + timedelta(hours=4)
    assert silenced_until(chain, subject(), NOW + timedelta(hours=4)) is None
    assert silenced_until(chain, subject(source="llm-shield"), NOW) is None


def test_an_expired_silence_holds_nothing_from_then_on() -> None:
    window = silence()
    expired = window.expired(NOW + timedelta(minutes=30))
    assert expired.end == NOW + timedelta(minutes=30)
    assert silences_holding([expired], subject(), NOW + timedelta(minutes=30)) == ()
    not_begun = silence(start=NOW + timedelta(hours=1)).expired(NOW)
    assert not_begun.end == not_begun.start
    assert silences_holding([not_begun], subject(), not_begun.start) == ()


def test_a_silence_needs_a_matcher_and_an_end_not_before_its_start() -> None:
    with pytest.raises(ValidationError, match="at least one matcher"):
        silence(matcher=Matcher())
    with pytest.raises(ValidationError, match="end: must not be before start"):
        silence(end=NOW - timedelta(seconds=1))
    with pytest.raises(ValidationError, match="time zone"):
        silence(start=datetime(2026, 3, 2), end=datetime(2026, 3, 3))
