"""The domain's input rules hold whatever stores the data.

A NUL character is the rule one backend used to enforce alone: PostgreSQL
cannot hold one in text, SQLite can. These tests run the use cases on the
in-memory storage, which would store anything, so every refusal here is the
domain's, and every backend gives the same answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.domain.errors import ValidationError
from incident_manager.domain.integrations import (
    AnomalyEvent,
    AnomalyMetric,
    EdgeAgentEvent,
    EventKind,
    GovernanceEvent,
    ModuleEvent,
    SecurityEvent,
    ThreatCategory,
)
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    IncidentType,
    ResolutionMethod,
    Severity,
)
from incident_manager.domain.query import IncidentFilter, Ordering
from incident_manager.domain.validation import NUL_FREE, Checker
from incident_manager.service.commands import (
    AddNote,
    CreateIncident,
    IncidentChanges,
    ResolveIncident,
    UpdateIncident,
)
from incident_manager.service.manager import IncidentManager, ListRequest
from incident_manager.service.pagination import encode_page_token

NUL = "a\x00b"

ALERT = Alert(
    id="a-1",
    source="llm-sentinel",
    title="token usage 3x baseline",
    severity=Severity.P2,
    type=IncidentType.PERFORMANCE,
    description="since 09:00",
    labels={"region": "eu-west-1"},
    annotations={"baseline": "1200"},
    affected_resources=("model/gpt-4o",),
    runbook_url="https://runbooks.example.com/tokens",
    dedup_key="tokens/gpt-4o",
)
NEW_INCIDENT = CreateIncident(
    title="Answers in the wrong language",
    severity=Severity.P2,
    type=IncidentType.APPLICATION,
    source="support",
    description="tenant acme",
    affected_resources=("tenant/acme",),
    labels={"team": "ml"},
    assignees=("ana",),
    actor="ana",
    request_id="req-1",
)


@pytest.fixture
def manager() -> IncidentManager:
    return IncidentManager(MemoryStorage(), dedup_window=timedelta(minutes=15))


async def refused_fields(call: Awaitable[object]) -> dict[str, str]:
    """field -> description of every violation the call was refused with."""
    with pytest.raises(ValidationError) as refused:
        await call
    return {v.field: v.description for v in refused.value.violations}


async def assert_refused_for_a_nul(call: Awaitable[object], field: str) -> None:
    fields = await refused_fields(call)
    assert list(fields) == [field]
    assert fields[field].endswith(NUL_FREE)


def test_a_checker_refuses_a_nul_in_any_text_it_checks() -> None:
    checker = Checker("x.")
    checker.required("required", NUL, 10)
    checker.at_most("limited", "\x00", 10)
    checker.string_list("items", ["ok", NUL], 5, 10)
    checker.string_map("keys", {NUL: "v"})
    checker.string_map("values", {"k": NUL})
    assert checker.text("plain", NUL) is False
    assert checker.text("plain", "fine") is True
    assert [(v.field, v.description) for v in checker.violations] == [
        ("x.required", NUL_FREE),
        ("x.limited", NUL_FREE),
        ("x.items[1]", NUL_FREE),
        ("x.keys", f"keys {NUL_FREE}"),
        ("x.values[k]", f"values {NUL_FREE}"),
        ("x.plain", NUL_FREE),
    ]


ALERT_TEXTS = [
    ({"id": NUL}, "alert.id", NUL_FREE),
    ({"source": NUL}, "alert.source", NUL_FREE),
    ({"title": NUL}, "alert.title", NUL_FREE),
    ({"description": NUL}, "alert.description", NUL_FREE),
    ({"labels": {"region": NUL}}, "alert.labels[region]", f"values {NUL_FREE}"),
    ({"labels": {NUL: "x"}}, "alert.labels", f"keys {NUL_FREE}"),
    ({"annotations": {"baseline": NUL}}, "alert.annotations[baseline]", f"values {NUL_FREE}"),
    ({"affected_resources": ("model/gpt-4o", NUL)}, "alert.affected_resources[1]", NUL_FREE),
    ({"runbook_url": NUL}, "alert.runbook_url", NUL_FREE),
    ({"dedup_key": NUL}, "alert.dedup_key", NUL_FREE),
]


@pytest.mark.parametrize(
    ("change", "field", "description"), ALERT_TEXTS, ids=[row[1] for row in ALERT_TEXTS]
)
async def test_a_nul_in_any_text_of_an_alert_is_refused_naming_the_field(
    manager: IncidentManager, change: dict[str, Any], field: str, description: str
) -> None:
    bad = dataclasses.replace(ALERT, **change)
    assert await refused_fields(manager.submit_alert(bad)) == {field: description}
    page = await manager.list_incidents(ListRequest(IncidentFilter(), Ordering()))
    assert page.total_size == 0


async def test_a_nul_in_a_batch_rejects_that_alert_only(manager: IncidentManager) -> None:
    bad = dataclasses.replace(ALERT, id="a-2", title=NUL)
    good, rejected = await manager.submit_alerts([ALERT, bad])
    assert good.status is AckStatus.ACCEPTED
    assert rejected.status is AckStatus.REJECTED
    assert f"alerts[1].title: {NUL_FREE}" in rejected.message


CREATE_TEXTS = [
    ({"title": NUL}, "incident.title"),
    ({"source": NUL}, "incident.source"),
    ({"description": NUL}, "incident.description"),
    ({"affected_resources": (NUL,)}, "incident.affected_resources[0]"),
    ({"labels": {"team": NUL}}, "incident.labels[team]"),
    ({"assignees": ("ana", NUL)}, "incident.assignees[1]"),
    ({"actor": NUL}, "actor"),
    ({"request_id": NUL}, "incident.request_id"),
]


@pytest.mark.parametrize(("change", "field"), CREATE_TEXTS, ids=[f for _, f in CREATE_TEXTS])
async def test_a_nul_in_any_text_of_a_new_incident_is_refused_naming_the_field(
    manager: IncidentManager, change: dict[str, Any], field: str
) -> None:
    bad = dataclasses.replace(NEW_INCIDENT, **change)
    await assert_refused_for_a_nul(manager.create_incident(bad), field)


Change = Callable[[str, str], Awaitable[object]]
"""A change to the incident with the given id and etag."""


def _update(manager: IncidentManager, **fields: Any) -> Change:
    def change(incident_id: str, etag: str) -> Awaitable[object]:
        command = UpdateIncident(incident_id, IncidentChanges(), etag=etag)
        return manager.update_incident(dataclasses.replace(command, **fields))

    return change


def _update_changes(manager: IncidentManager, **changes: Any) -> Change:
    def change(incident_id: str, etag: str) -> Awaitable[object]:
        command = UpdateIncident(incident_id, IncidentChanges(**changes), etag=etag)
        return manager.update_incident(command)

    return change


def _resolve(manager: IncidentManager, **fields: Any) -> Change:
    def change(incident_id: str, etag: str) -> Awaitable[object]:
        command = ResolveIncident(incident_id, ResolutionMethod.MANUAL, "ana", etag=etag)
        return manager.resolve_incident(dataclasses.replace(command, **fields))

    return change


def _note(manager: IncidentManager, **fields: Any) -> Change:
    def change(incident_id: str, etag: str) -> Awaitable[object]:
        command = AddNote(incident_id, "ana", "looking", request_id="n-1")
        return manager.add_note(dataclasses.replace(command, **fields))

    return change


CHANGE_TEXTS: list[tuple[Callable[[IncidentManager], Change], str]] = [
    (lambda m: _update_changes(m, title=NUL), "incident.title"),
    (lambda m: _update_changes(m, description=NUL), "incident.description"),
    (lambda m: _update_changes(m, affected_resources=(NUL,)), "incident.affected_resources[0]"),
    (lambda m: _update_changes(m, labels={NUL: "x"}), "incident.labels"),
    (lambda m: _update_changes(m, assignees=(NUL,)), "incident.assignees[0]"),
    (lambda m: _update(m, actor=NUL), "actor"),
    (lambda m: _update(m, etag=NUL), "incident.etag"),
    (lambda m: _resolve(m, resolved_by=NUL), "resolved_by"),
    (lambda m: _resolve(m, root_cause=NUL), "root_cause"),
    (lambda m: _resolve(m, notes=NUL), "notes"),
    (lambda m: _resolve(m, etag=NUL), "etag"),
    (lambda m: _note(m, author=NUL), "author"),
    (lambda m: _note(m, content=NUL), "content"),
    (lambda m: _note(m, request_id=NUL), "request_id"),
]


@pytest.mark.parametrize(("make", "field"), CHANGE_TEXTS, ids=[f for _, f in CHANGE_TEXTS])
async def test_a_nul_in_any_text_of_a_change_is_refused_and_changes_nothing(
    manager: IncidentManager, make: Callable[[IncidentManager], Change], field: str
) -> None:
    incident = await manager.create_incident(NEW_INCIDENT)
    await assert_refused_for_a_nul(make(manager)(incident.id, incident.etag), field)
    after = await manager.get_incident(incident.id)
    assert after.etag == incident.etag
    assert after.notes_size == 0


async def test_a_nul_in_an_incident_id_is_refused_not_looked_up(manager: IncidentManager) -> None:
    await assert_refused_for_a_nul(manager.get_incident(NUL), "id")
    await assert_refused_for_a_nul(_update_changes(manager, title="new")(NUL, ""), "incident.id")
    await assert_refused_for_a_nul(_note(manager)(NUL, ""), "incident_id")


@pytest.mark.parametrize(
    ("incident_filter", "field"),
    [
        (IncidentFilter(sources=frozenset({"support", NUL})), "sources"),
        (IncidentFilter(assignee=NUL), "assignee"),
    ],
    ids=["sources", "assignee"],
)
async def test_a_nul_in_a_filter_is_refused_since_no_stored_text_holds_one(
    manager: IncidentManager, incident_filter: IncidentFilter, field: str
) -> None:
    listing = manager.list_incidents(ListRequest(incident_filter, Ordering()))
    await assert_refused_for_a_nul(listing, field)


async def test_a_page_token_naming_an_id_with_a_nul_is_not_one_this_server_issued(
    manager: IncidentManager,
) -> None:
    token = encode_page_token((1, NUL), IncidentFilter(), Ordering())
    listing = manager.list_incidents(ListRequest(IncidentFilter(), Ordering(), page_token=token))
    assert set(await refused_fields(listing)) == {"page_token"}


KIND_TEXTS = [
    (AnomalyEvent(NUL, AnomalyMetric.COST), "event.anomaly.model"),
    (AnomalyEvent("gpt-4o", AnomalyMetric.COST, endpoint=NUL), "event.anomaly.endpoint"),
    (SecurityEvent(ThreatCategory.OTHER, model=NUL), "event.security.model"),
    (SecurityEvent(ThreatCategory.OTHER, application=NUL), "event.security.application"),
    (SecurityEvent(ThreatCategory.OTHER, model="m", sample_ref=NUL), "event.security.sample_ref"),
    (EdgeAgentEvent(NUL), "event.edge_agent.agent_id"),
    (GovernanceEvent(NUL), "event.governance.policy_id"),
    (GovernanceEvent("p", framework=NUL), "event.governance.framework"),
    (GovernanceEvent("p", violation=NUL), "event.governance.violation"),
    (GovernanceEvent("p", model=NUL), "event.governance.model"),
    (GovernanceEvent("p", dataset=NUL), "event.governance.dataset"),
]


@pytest.mark.parametrize(("kind", "field"), KIND_TEXTS, ids=[f for _, f in KIND_TEXTS])
async def test_a_nul_in_any_text_of_a_module_event_is_refused_naming_the_field(
    manager: IncidentManager, kind: EventKind, field: str
) -> None:
    event = ModuleEvent("e-1", "mod", kind)
    await assert_refused_for_a_nul(manager.submit_module_event(event), field)


async def test_the_service_judges_a_module_event_once_it_has_converted(
    manager: IncidentManager,
) -> None:
    fields = await refused_fields(manager.submit_module_event(ModuleEvent("", "mod", None)))
    assert set(fields) == {"event.id", "event.kind"}
    good = ModuleEvent("e-1", "mod", GovernanceEvent("p-1"))
    bad = ModuleEvent("e-2", "mod", EdgeAgentEvent("edge-1", queue_depth=-1))
    stored, rejected = await manager.submit_module_events([good, bad])
    assert stored.status is AckStatus.ACCEPTED
    assert rejected.status is AckStatus.REJECTED
    assert "events[1].edge_agent.queue_depth: must not be negative" in rejected.message
