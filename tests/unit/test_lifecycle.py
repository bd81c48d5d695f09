"""The incident lifecycle and its timeline, on the domain objects alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from incident_manager.domain.errors import InvalidTransition
from incident_manager.domain.model import (
    Alert,
    EventType,
    Incident,
    IncidentState,
    IncidentType,
    ResolutionMethod,
    Severity,
)

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ACTIVE = [
    IncidentState.DETECTED,
    IncidentState.TRIAGED,
    IncidentState.INVESTIGATING,
    IncidentState.REMEDIATING,
]


def opened(severity: Severity = Severity.P2) -> Incident:
    incident = Incident.open(
        title="Toxicity filter rejecting 40% of answers",
        description="",
        severity=severity,
        type=IncidentType.APPLICATION,
        source="llm-shield",
        affected_resources=["model/llama-3"],
        labels={},
        assignees=[],
        fingerprint="f" * 64,
        actor="llm-shield",
        now=NOW,
        alert_count=1,
    )
    incident.pending_events.clear()
    return incident


def in_state(state: IncidentState) -> Incident:
    incident = opened()
    incident.state = state
    return incident


def resolve(incident: Incident, at: datetime = NOW) -> None:
    incident.resolve(
        method=ResolutionMethod.MANUAL,
        root_cause="bad deploy",
        notes="",
        resolved_by="alice",
        now=at,
    )


def test_opening_an_incident_records_a_created_event_with_its_actor() -> None:
    incident = Incident.open(
        title="t",
        description="",
        severity=Severity.P3,
        type=IncidentType.DATA,
        source="drift-detector",
        affected_resources=[],
        labels={},
        assignees=[],
        fingerprint="x",
        actor="drift-detector",
        now=NOW,
    )
    assert incident.state is IncidentState.DETECTED
    [created] = incident.pending_events
    assert created.event.type is EventType.CREATED
    assert created.event.actor == "drift-detector"
    assert incident.timeline_size == 1


@pytest.mark.parametrize("start", ACTIVE)
@pytest.mark.parametrize("target", ACTIVE)
def test_active_incidents_move_forward_and_may_skip_steps(
    start: IncidentState, target: IncidentState
) -> None:
    incident = in_state(start)
    if target.value > start.value:
        incident.update(actor="bob", now=NOW, state=target)
        assert incident.state is target
        assert incident.pending_events[-1].event.type is EventType.STATE_CHANGED
        assert incident.pending_events[-1].event.details == {"from": start.name, "to": target.name}
    elif target.value < start.value:
        with pytest.raises(InvalidTransition, match=f"from {start.name} to {target.name}"):
            incident.update(actor="bob", now=NOW, state=target)
    else:
        incident.update(actor="bob", now=NOW, state=target)
        assert incident.pending_events == [], "setting the same state changes nothing"


@pytest.mark.parametrize("start", ACTIVE)
def test_any_active_state_may_resolve(start: IncidentState) -> None:
    incident = in_state(start)
    resolve(incident, at=NOW + timedelta(minutes=42))
    assert incident.state is IncidentState.RESOLVED
    assert incident.resolution is not None
    assert incident.resolution.time_to_resolve == timedelta(minutes=42)
    assert incident.pending_events[-1].event.type is EventType.RESOLVED


@pytest.mark.parametrize("start", ACTIVE)
def test_an_active_incident_cannot_be_closed_without_resolving_it(start: IncidentState) -> None:
    with pytest.raises(InvalidTransition, match="resolve it first"):
        in_state(start).update(actor="bob", now=NOW, state=IncidentState.CLOSED)


@pytest.mark.parametrize("target", ACTIVE)
def test_a_resolved_incident_reopens_to_any_active_state_and_drops_its_resolution(
    target: IncidentState,
) -> None:
    incident = opened()
    resolve(incident)
    incident.update(actor="carol", now=NOW, state=target)
    assert incident.state is target
    assert incident.resolution is None


def test_a_resolved_incident_can_be_closed_and_then_nothing_changes_it() -> None:
    incident = opened()
    resolve(incident)
    incident.update(actor="carol", now=NOW, state=IncidentState.CLOSED)
    assert incident.state is IncidentState.CLOSED
    for state in IncidentState:
        with pytest.raises(InvalidTransition, match="closed incidents cannot be changed"):
            incident.update(actor="carol", now=NOW, state=state)
    with pytest.raises(InvalidTransition, match="closed incidents cannot be changed"):
        incident.update(actor="carol", now=NOW, title="renamed")
    with pytest.raises(InvalidTransition):
        resolve(incident)


def test_resolving_twice_is_refused_naming_both_states() -> None:
    incident = opened()
    resolve(incident)
    with pytest.raises(InvalidTransition) as refused:
        resolve(incident)
    assert refused.value.metadata == {
        "incident_id": incident.id,
        "from": "RESOLVED",
        "to": "RESOLVED",
    }


def test_a_merged_alert_counts_and_raises_severity_to_the_most_severe_seen() -> None:
    incident = opened(Severity.P3)
    critical = Alert(
        id="a-9", source="llm-sentinel", title="x", severity=Severity.P0, type=IncidentType.DATA
    )
    incident.merge_alert(critical, "dedup_key=k", NOW)
    assert incident.alert_count == 2
    assert incident.severity is Severity.P0
    merged, raised = incident.pending_events
    assert merged.event.type is EventType.ALERT_MERGED
    assert merged.event.details == {
        "alert_id": "a-9",
        "source": "llm-sentinel",
        "matched_on": "dedup_key=k",
    }
    assert raised.event.type is EventType.SEVERITY_CHANGED
    assert raised.event.details == {"from": "P3", "to": "P0"}


def test_alerts_merged_together_are_counted_exactly_and_listed_in_one_event() -> None:
    incident = opened(Severity.P3)
    merged = [
        (
            Alert(id=f"a-{n}", source="s", title="x", severity=Severity.P3, type=IncidentType.DATA),
            "f",
        )
        for n in range(7)
    ]
    incident.merge_alerts(merged, NOW + timedelta(minutes=1))
    assert incident.alert_count == 8
    assert incident.last_alert_time == NOW + timedelta(minutes=1)
    (event,) = incident.pending_events
    assert event.event.type is EventType.ALERT_MERGED
    assert event.alert_count == 8
    assert event.event.details["count"] == "7"
    assert event.event.details["matched_on"] == "f"
    assert json.loads(event.event.details["alerts"]) == [
        {"alert_id": f"a-{n}", "source": "s", "matched_on": "f"} for n in range(7)
    ]
    assert event.event.message.startswith("7 alerts merged (matched on f): 'a-0', 'a-1'")
    assert event.event.message.endswith("and 2 more")


def test_alerts_merged_together_raise_severity_once_to_the_most_severe() -> None:
    incident = opened(Severity.P3)
    severities = [Severity.P2, Severity.P0, Severity.P1, Severity.P0]
    incident.merge_alerts(
        [
            (Alert(id=f"a-{n}", source="s", title="x", severity=sev, type=IncidentType.DATA), "f")
            for n, sev in enumerate(severities)
        ],
        NOW,
    )
    assert incident.severity is Severity.P0
    merged, raised = incident.pending_events
    assert merged.event.type is EventType.ALERT_MERGED
    assert raised.event.details == {"from": "P3", "to": "P0"}
    assert "alert 'a-1'" in raised.event.message


def test_one_alert_merged_through_merge_alerts_reads_as_merge_alert_records_it() -> None:
    one, other = opened(), opened()
    alert = Alert(id="a-1", source="s", title="x", severity=Severity.P4, type=IncidentType.DATA)
    one.merge_alerts([(alert, "f")], NOW)
    other.merge_alert(alert, "f", NOW)
    assert [e.event for e in one.pending_events] == [e.event for e in other.pending_events]
    before = list(one.pending_events)
    one.merge_alerts([], NOW)
    assert one.pending_events == before


def test_a_less_severe_merged_alert_leaves_severity_alone() -> None:
    incident = opened(Severity.P1)
    minor = Alert(id="a", source="s", title="x", severity=Severity.P4, type=IncidentType.DATA)
    incident.merge_alert(minor, "fields", NOW)
    assert incident.severity is Severity.P1
    assert [e.event.type for e in incident.pending_events] == [EventType.ALERT_MERGED]


def test_the_last_alert_time_is_the_opening_then_each_merge_but_never_goes_back() -> None:
    incident = opened()
    assert incident.last_alert_time == NOW == incident.create_time
    assert (incident.acknowledged_by, incident.acknowledge_time) == ("", None)
    minor = Alert(id="a", source="s", title="x", severity=Severity.P4, type=IncidentType.DATA)
    incident.merge_alert(minor, "fields", NOW + timedelta(minutes=20))
    assert incident.last_alert_time == NOW + timedelta(minutes=20)
    incident.merge_alert(minor, "fields", NOW + timedelta(minutes=5))  # the clock stepped back
    assert incident.last_alert_time == NOW + timedelta(minutes=20)
    assert incident.alert_count == 3
    incident.update(actor="ana", now=NOW + timedelta(hours=1), title="renamed")
    assert incident.last_alert_time == NOW + timedelta(minutes=20)  # people's changes don't count


def test_every_change_records_an_event_and_one_operation_bumps_the_version_once() -> None:
    incident = opened()
    version = incident.version
    incident.update(
        actor="dave",
        now=NOW,
        title="new title",
        severity=Severity.P0,
        assignees=["dave", "sre-team"],
        state=IncidentState.TRIAGED,
    )
    assert [e.event.type for e in incident.pending_events] == [
        EventType.UPDATED,
        EventType.SEVERITY_CHANGED,
        EventType.ASSIGNMENT_CHANGED,
        EventType.STATE_CHANGED,
    ]
    assert all(e.event.actor == "dave" for e in incident.pending_events)
    assert incident.version == version + 1
    assert incident.etag == f'W/"{version + 1}"'


def test_each_event_carries_the_incident_as_it_was_right_after_it() -> None:
    incident = opened(Severity.P3)
    incident.update(actor="erin", now=NOW, severity=Severity.P1, assignees=["erin"])
    severity_event, assignment_event = incident.pending_events
    assert severity_event.severity is Severity.P1
    assert severity_event.assignees == ()
    assert assignment_event.assignees == ("erin",)


def test_a_note_is_recorded_with_its_author() -> None:
    incident = opened()
    note = incident.add_note(author="frank", content="rolled back to v41", now=NOW)
    assert incident.pending_notes == [note]
    [event] = incident.pending_events
    assert event.event.type is EventType.NOTE_ADDED
    assert event.event.details == {"note_id": note.id}
