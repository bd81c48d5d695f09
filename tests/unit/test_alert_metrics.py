"""incident_manager_alerts_total: one count per alert, by source and status, with bounded labels."""

from __future__ import annotations

import pytest

from incident_manager.domain.model import AckStatus, Alert, AlertAck, IncidentType, Severity
from incident_manager.entrypoints import metrics as metrics_module
from incident_manager.entrypoints.metrics import Metrics, collect


def alert_from(source: str) -> Alert:
    return Alert(
        id="a-1", source=source, title="latency", severity=Severity.P2, type=IncidentType.DATA
    )


def ack(status: AckStatus, *, retry: bool = False) -> AlertAck:
    return AlertAck("a-1", status, incident_id="inc_1", retry=retry)


def alerts_total(metrics: Metrics) -> dict[str, float]:
    return {
        key: value
        for key, value in collect(metrics.registry).items()
        if key.startswith("incident_manager_alerts_total{")
    }


def test_every_alert_is_counted_under_its_source_and_status_however_often_the_series_is_used() -> (
    None
):
    metrics = Metrics()
    for _ in range(3):
        metrics.alerts_acked([alert_from("sentinel")], [ack(AckStatus.ACCEPTED)])
    metrics.alerts_acked(
        [alert_from("sentinel"), alert_from("sentinel"), alert_from("shield")],
        [ack(AckStatus.DUPLICATE), ack(AckStatus.ACCEPTED, retry=True), ack(AckStatus.ACCEPTED)],
    )
    assert alerts_total(metrics) == {
        'incident_manager_alerts_total{source="sentinel",status="ACCEPTED"}': 3,
        'incident_manager_alerts_total{source="sentinel",status="DUPLICATE"}': 1,
        'incident_manager_alerts_total{source="sentinel",status="RETRY"}': 1,
        'incident_manager_alerts_total{source="shield",status="ACCEPTED"}': 1,
    }


def test_sources_past_the_label_limit_are_counted_as_other_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "MAX_SOURCE_LABELS", 2)
    metrics = Metrics()
    for source in ("one", "two", "three", "four", "three"):
        metrics.alerts_acked([alert_from(source)], [ack(AckStatus.ACCEPTED)])
    assert alerts_total(metrics) == {
        'incident_manager_alerts_total{source="one",status="ACCEPTED"}': 1,
        'incident_manager_alerts_total{source="two",status="ACCEPTED"}': 1,
        'incident_manager_alerts_total{source="other",status="ACCEPTED"}': 3,
    }
