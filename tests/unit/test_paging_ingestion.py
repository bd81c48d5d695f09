"""Paging follows every way an alert comes in: one at a time, or many in one batch
(BatchSubmitAlerts and the module events' batch both go through `submit_alerts`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.domain.model import AckStatus, Alert, AlertStatus, IncidentType, Severity
from incident_manager.domain.paging.ledger import Escalation, EscalationStatus
from incident_manager.paging.file import load_paging_config
from incident_manager.service.manager import IncidentManager
from incident_manager.service.pager import RulesHolder
from tests.support import FakeClock

CONFIG = load_paging_config(
    """
channels:
  - {id: ops-hook, type: webhook, url: "http://127.0.0.1:9/hook"}
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{channel: ops-hook}]
routes:
  - policy: default
""",
    "test.yaml",
)


def _alert(title: str, **fields: object) -> Alert:
    values: dict[str, object] = {
        "id": f"alert-{title}",
        "source": "llm-sentinel",
        "title": title,
        "severity": Severity.P2,
        "type": IncidentType.PERFORMANCE,
    }
    values.update(fields)
    return Alert(**values)  # type: ignore[arg-type]


def _manager(storage: MemoryStorage, clock: FakeClock) -> IncidentManager:
    return IncidentManager(
        storage, dedup_window=timedelta(minutes=15), clock=clock, paging=RulesHolder(CONFIG)
    )


async def _escalation(storage: MemoryStorage, incident_id: str) -> Escalation | None:
    return await storage.read(lambda uow: uow.paging.escalation(incident_id))


async def test_a_new_incident_is_paged_whether_its_alert_came_alone_or_in_a_batch() -> None:
    storage, clock = MemoryStorage(), FakeClock(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    manager = _manager(storage, clock)
    alone = await manager.submit_alert(_alert("alone"))
    batch = await manager.submit_alerts([_alert("first in a batch"), _alert("second in a batch")])
    assert [ack.status for ack in [alone, *batch]] == [AckStatus.ACCEPTED] * 3
    for ack in [alone, *batch]:
        escalation = await _escalation(storage, ack.incident_id)
        assert escalation is not None, f"{ack.alert_id} opened an incident nobody will page"
        assert escalation.status is EscalationStatus.ACTIVE
        assert escalation.due_at == clock()


async def test_a_resolve_signal_in_a_batch_stops_paging_its_incident() -> None:
    storage, clock = MemoryStorage(), FakeClock(datetime(2026, 3, 2, 10, 0, tzinfo=UTC))
    manager = _manager(storage, clock)
    opened = await manager.submit_alert(_alert("gpu down"))
    clock.advance(minutes=1)
    (resolved,) = await manager.submit_alerts(
        [_alert("gpu down", status=AlertStatus.RESOLVED, end_time=clock())]
    )
    assert resolved.status is AckStatus.CLEARED
    assert resolved.incident_id == opened.incident_id
    escalation = await _escalation(storage, opened.incident_id)
    assert escalation is not None
    assert escalation.status is EscalationStatus.STOPPED
