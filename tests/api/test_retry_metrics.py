"""incident_manager_alerts_total counts alerts, not calls: exact retries are counted apart."""

from __future__ import annotations

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_pb2
from tests.api.test_metrics import METRICS, scrape, series
from tests.support import StartServer, alert


async def test_a_retried_alert_is_counted_as_a_retry_not_again_as_accepted_or_duplicate(
    start_server: StartServer,
) -> None:
    server = await start_server(**METRICS)
    first = alert(id="sentinel-1")
    duplicate = alert(id="sentinel-2")  # same fingerprint: merged into the first's incident
    for sent in (first, duplicate, first, duplicate):
        await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=sent))
    batch = await server.ingestion.BatchSubmitAlerts(
        ingestion_pb2.BatchSubmitAlertsRequest(alerts=[first, duplicate])
    )
    # The sender still gets the first answer again.
    assert [a.status for a in batch.acks] == [
        alert_pb2.ACK_STATUS_ACCEPTED,
        alert_pb2.ACK_STATUS_DUPLICATE,
    ]

    samples = await scrape(server)

    def alerts(status: str) -> float | None:
        return samples.get(
            series("incident_manager_alerts_total", source="llm-sentinel", status=status)
        )

    assert (alerts("ACCEPTED"), alerts("DUPLICATE"), alerts("RETRY")) == (1, 1, 4)
    assert samples["incident_manager_duplicates_merged_total"] == 1


async def test_a_resolve_signal_sent_twice_counts_one_clearing_and_one_retry(
    start_server: StartServer,
) -> None:
    server = await start_server(**METRICS)
    fired = alert(id="shield-7", source="llm-shield")
    await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=fired))
    cleared = alert_pb2.Alert(
        id="shield-7", source="llm-shield", status=alert_pb2.ALERT_STATUS_RESOLVED
    )
    for _ in range(2):
        await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=cleared))

    samples = await scrape(server)

    assert (
        samples.get(series("incident_manager_alerts_total", source="llm-shield", status="CLEARED"))
        == 1
    )
    assert (
        samples.get(series("incident_manager_alerts_total", source="llm-shield", status="RETRY"))
        == 1
    )
