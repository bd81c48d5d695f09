"""Paging use cases run as a server would run them, for the tests of the paging service and
its worker: an incident opened (its escalation written in the same unit of work) and the
escalation steps due at a moment."""

from __future__ import annotations

from datetime import datetime

from incident_manager.domain.model import Incident, IncidentType, Severity
from incident_manager.domain.paging.model import PagingConfig
from incident_manager.service import paging
from incident_manager.service.ports import Storage, UnitOfWork


def new_incident(
    *,
    now: datetime,
    title: str = "GPU node down",
    severity: Severity = Severity.P1,
    type: IncidentType = IncidentType.INFRASTRUCTURE,
    source: str = "edge-agent",
    fingerprint: str = "fp",
) -> Incident:
    """An incident an alert just opened (not stored yet)."""
    return Incident.open(
        title=title,
        description="",
        severity=severity,
        type=type,
        source=source,
        affected_resources=[],
        labels={},
        assignees=[],
        fingerprint=fingerprint,
        actor=source,
        now=now,
        alert_count=1,
    )


async def open_paged(
    storage: Storage, config: PagingConfig, incident: Incident, now: datetime
) -> str:
    """Store the incident and start its paging in one unit of work; its id."""

    def work(uow: UnitOfWork) -> str:
        with uow:
            uow.incidents.add(incident)
            paging.follow_incident(uow.paging, config, incident, None, now)
            uow.commit()
        return incident.id

    return await storage.write(work)


async def run_steps(
    storage: Storage, config: PagingConfig, now: datetime, limit: int = 100
) -> paging.StepReport:
    """Run the escalation steps due at `now`, as one scheduler pass does."""

    def work(uow: UnitOfWork) -> paging.StepReport:
        with uow:
            report = paging.run_due_steps(uow.paging, uow.incidents, config, now, limit)
            uow.commit()
        return report

    return await storage.write(work)
