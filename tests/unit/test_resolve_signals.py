"""Resolve signals: alerts that say their condition cleared, and per-source auto-resolve."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.domain.autoresolve import AutoResolvePolicies
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    AlertStatus,
    AutoResolve,
    EventType,
    IncidentState,
    IncidentType,
    ResolutionMethod,
    Severity,
)
from incident_manager.service.manager import IncidentManager
from tests.support import FakeClock


def firing(alert_id: str, source: str = "llm-sentinel") -> Alert:
    return Alert(
        id=alert_id,
        source=source,
        title="error rate above 5% on /chat",
        severity=Severity.P1,
        type=IncidentType.AVAILABILITY,
    )


def cleared(alert: Alert) -> Alert:
    return replace(alert, status=AlertStatus.RESOLVED)


def manager_with(clock: FakeClock, policies: str) -> IncidentManager:
    return IncidentManager(
        MemoryStorage(), clock=clock, auto_resolve=AutoResolvePolicies.parse(policies)
    )


async def test_with_policy_all_the_incident_resolves_when_its_last_open_alert_clears(
    clock: FakeClock,
) -> None:
    manager = manager_with(clock, "all")
    one, two = firing("a-1"), firing("a-2")
    opened = await manager.submit_alert(one)
    await manager.submit_alert(two)
    first = await manager.submit_alert(cleared(one))
    assert first.status is AckStatus.CLEARED
    assert "1 alerts still firing" in first.message
    assert (await manager.get_incident(opened.incident_id)).state is IncidentState.DETECTED
    clock.advance(minutes=7)
    second = await manager.submit_alert(cleared(two))
    assert "incident resolved" in second.message
    incident = await manager.get_incident(opened.incident_id)
    assert incident.state is IncidentState.RESOLVED
    assert incident.resolution is not None
    assert incident.resolution.method is ResolutionMethod.AUTOMATED
    assert incident.resolution.time_to_resolve == timedelta(minutes=7)
    resolved = incident.timeline[-1]
    assert resolved.type is EventType.RESOLVED
    assert resolved.details["alert_id"] == "a-2"
    assert resolved.details["policy"] == "all"


async def test_with_policy_first_any_cleared_alert_resolves(clock: FakeClock) -> None:
    manager = manager_with(clock, "all,llm-sentinel=first")
    opened = await manager.submit_alert(firing("a-1"))
    await manager.submit_alert(firing("a-2"))
    await manager.submit_alert(cleared(firing("a-1")))
    assert (await manager.get_incident(opened.incident_id)).state is IncidentState.RESOLVED


async def test_with_policy_last_only_the_newest_alert_clearing_resolves(
    clock: FakeClock,
) -> None:
    manager = manager_with(clock, "last")
    opened = await manager.submit_alert(firing("a-1"))
    clock.advance(seconds=1)
    await manager.submit_alert(firing("a-2"))
    await manager.submit_alert(cleared(firing("a-1")))
    assert (await manager.get_incident(opened.incident_id)).state is IncidentState.DETECTED
    await manager.submit_alert(cleared(firing("a-2")))
    assert (await manager.get_incident(opened.incident_id)).state is IncidentState.RESOLVED


async def test_with_policy_never_people_resolve_it(clock: FakeClock) -> None:
    manager = manager_with(clock, "*=never")
    opened = await manager.submit_alert(firing("a-1"))
    ack = await manager.submit_alert(cleared(firing("a-1")))
    assert ack.status is AckStatus.CLEARED
    assert (await manager.get_incident(opened.incident_id)).state is IncidentState.DETECTED


async def test_a_signal_for_an_unknown_alert_is_acknowledged_and_ignored(
    clock: FakeClock,
) -> None:
    manager = manager_with(clock, "all")
    ack = await manager.submit_alert(
        Alert(
            id="never-sent",
            source="llm-shield",
            title="",
            severity=Severity.P4,
            type=IncidentType.DATA,
            status=AlertStatus.RESOLVED,
        )
    )
    assert ack.status is AckStatus.IGNORED
    assert ack.incident_id == ""


async def test_a_repeated_signal_changes_nothing(clock: FakeClock) -> None:
    manager = manager_with(clock, "never")
    opened = await manager.submit_alert(firing("a-1"))
    await manager.submit_alert(cleared(firing("a-1")))
    again = await manager.submit_alert(cleared(firing("a-1")))
    assert again.status is AckStatus.CLEARED
    assert "already cleared" in again.message
    assert (await manager.get_incident(opened.incident_id)).timeline_size == 1


async def test_an_end_time_in_the_past_is_a_signal_and_one_in_the_future_is_not(
    clock: FakeClock,
) -> None:
    manager = manager_with(clock, "first")
    alert = firing("a-1")
    opened = await manager.submit_alert(replace(alert, end_time=clock.now + timedelta(hours=1)))
    assert opened.status is AckStatus.ACCEPTED
    ack = await manager.submit_alert(replace(alert, end_time=clock.now))
    assert ack.status is AckStatus.CLEARED
    assert (await manager.get_incident(opened.incident_id)).state is IncidentState.RESOLVED


async def test_a_batch_may_fire_and_clear_alerts_of_one_incident(clock: FakeClock) -> None:
    manager = manager_with(clock, "all")
    acks = await manager.submit_alerts(
        [firing("a-1"), firing("a-2"), cleared(firing("a-1")), cleared(firing("a-2"))]
    )
    assert [a.status for a in acks] == [
        AckStatus.ACCEPTED,
        AckStatus.DUPLICATE,
        AckStatus.CLEARED,
        AckStatus.CLEARED,
    ]
    incident = await manager.get_incident(acks[0].incident_id)
    assert incident.state is IncidentState.RESOLVED
    assert incident.alert_count == 2


@pytest.mark.parametrize(
    ("text", "source", "expected"),
    [
        ("all", "x", AutoResolve.ALL),
        ("llm-sentinel=first,*=never", "llm-sentinel", AutoResolve.FIRST),
        ("llm-sentinel=first,*=never", "other", AutoResolve.NEVER),
        ("edge-agent=LAST", "edge-agent", AutoResolve.LAST),
    ],
)
def test_policies_are_read_per_source_with_a_default(
    text: str, source: str, expected: AutoResolve
) -> None:
    assert AutoResolvePolicies.parse(text).for_source(source) is expected


def test_an_unknown_policy_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="first, last, all, never"):
        AutoResolvePolicies.parse("llm-sentinel=sometimes")
