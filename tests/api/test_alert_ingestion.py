"""AlertIngestionService through a real server: unary, bidirectional stream, health."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as pb2
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from tests.support import FakeClock, Running, StartServer, alert, field_violations


async def submit(server: Running, **fields: object) -> alert_pb2.AlertAck:
    response = await server.ingestion.SubmitAlert(pb2.SubmitAlertRequest(alert=alert(**fields)))
    return response.ack


async def test_duplicates_merge_into_one_incident_with_an_exact_count(server: Running) -> None:
    first = await submit(server, id="a-1")
    second = await submit(server, id="a-2", severity=incident_pb2.SEVERITY_P0)
    assert first.status == alert_pb2.ACK_STATUS_ACCEPTED
    assert second.status == alert_pb2.ACK_STATUS_DUPLICATE
    assert second.incident_id == first.incident_id
    assert "source,type,title,affected_resources" in second.message
    incident = (
        await server.incidents.GetIncident(service_pb2.GetIncidentRequest(id=first.incident_id))
    ).incident
    assert incident.alert_count == 2
    assert incident.severity == incident_pb2.SEVERITY_P0
    merged = [e for e in incident.timeline if e.type == incident_pb2.EVENT_TYPE_ALERT_MERGED]
    assert [e.details["alert_id"] for e in merged] == ["a-2"]


async def test_a_retried_alert_is_acknowledged_again_and_counted_once(server: Running) -> None:
    first = await submit(server, id="retry-me")
    again = await submit(server, id="retry-me")
    assert (again.status, again.incident_id) == (first.status, first.incident_id)
    incident = (
        await server.incidents.GetIncident(service_pb2.GetIncidentRequest(id=first.incident_id))
    ).incident
    assert incident.alert_count == 1


async def test_the_same_alert_id_from_another_source_is_a_different_alert(
    server: Running,
) -> None:
    first = await submit(server, id="shared-id", source="llm-shield")
    second = await submit(server, id="shared-id", source="llm-sentinel")
    assert second.incident_id != first.incident_id


async def test_a_dedup_key_merges_alerts_with_different_titles(server: Running) -> None:
    first = await submit(server, title="jailbreak attempt", dedup_key="tenant-9")
    second = await submit(server, title="another jailbreak attempt", dedup_key="tenant-9")
    assert second.status == alert_pb2.ACK_STATUS_DUPLICATE
    assert second.incident_id == first.incident_id
    assert "dedup_key=tenant-9" in second.message


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"id": ""}, "alert.id"),
        ({"source": ""}, "alert.source"),
        ({"title": "x" * 257}, "alert.title"),
        ({"severity": incident_pb2.SEVERITY_UNSPECIFIED}, "alert.severity"),
        ({"type": 99}, "alert.type"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "alert.labels"),
        ({"affected_resources": [""]}, "alert.affected_resources[0]"),
        ({"dedup_key": ""}, "alert.dedup_key"),
    ],
)
async def test_an_invalid_alert_is_refused_naming_the_field(
    server: Running, fields: dict[str, object], violation: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(server, **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation in field_violations(refused.value)
    page = await server.incidents.ListIncidents(service_pb2.ListIncidentsRequest())
    assert page.total_size == 0


async def test_a_timestamp_out_of_range_is_invalid_not_internal(server: Running) -> None:
    bad = alert()
    bad.fire_time.seconds = 10**12
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.ingestion.SubmitAlert(pb2.SubmitAlertRequest(alert=bad))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "alert.fire_time" in field_violations(refused.value)


async def test_a_thousand_alerts_on_one_stream_get_one_ack_each_in_order(
    server: Running,
) -> None:
    titles = [f"fault {i % 50}" for i in range(1000)]  # 50 fingerprints, 950 duplicates
    ids = [f"stream-{i}" for i in range(1000)]

    async def requests() -> AsyncIterator[pb2.StreamAlertsRequest]:
        for alert_id, title in zip(ids, titles, strict=True):
            yield pb2.StreamAlertsRequest(alert=alert(id=alert_id, title=title))
        # One alert retried and one invalid, mid-stream the stream goes on.
        yield pb2.StreamAlertsRequest(alert=alert(id="stream-7", title=titles[7]))
        yield pb2.StreamAlertsRequest(alert=alert(id="broken", title=""))

    acks = [response.ack async for response in server.ingestion.StreamAlerts(requests())]
    assert [a.alert_id for a in acks] == [*ids, "stream-7", "broken"]
    statuses = Counter(a.status for a in acks[:1000])
    assert statuses == {alert_pb2.ACK_STATUS_ACCEPTED: 50, alert_pb2.ACK_STATUS_DUPLICATE: 950}
    assert acks[1000].incident_id == acks[7].incident_id
    assert acks[1001].status == alert_pb2.ACK_STATUS_REJECTED
    assert "alert.title" in acks[1001].message

    page = await server.incidents.ListIncidents(service_pb2.ListIncidentsRequest(page_size=100))
    assert page.total_size == 50
    assert {i.alert_count for i in page.incidents} == {20}


async def test_health_check_reports_serving_version_and_uptime(server: Running) -> None:
    response = await server.ingestion.HealthCheck(pb2.HealthCheckRequest())
    assert response.status == pb2.SERVING_STATUS_SERVING
    assert response.version
    assert response.uptime.ToTimedelta().total_seconds() >= 0


async def test_an_alert_with_several_problems_gets_them_all_in_one_answer(
    server: Running,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(server, id="", title="", severity=0, type=0)
    assert set(field_violations(refused.value)) == {
        "alert.id",
        "alert.title",
        "alert.severity",
        "alert.type",
    }


async def test_a_resolve_signal_needs_only_id_and_source_and_resolves_the_incident(
    server: Running,
) -> None:
    opened = await submit(server, id="clears-later")
    signal = alert_pb2.Alert(
        id="clears-later", source="llm-sentinel", status=alert_pb2.ALERT_STATUS_RESOLVED
    )
    response = await server.ingestion.SubmitAlert(pb2.SubmitAlertRequest(alert=signal))
    assert response.ack.status == alert_pb2.ACK_STATUS_CLEARED
    assert response.ack.incident_id == opened.incident_id
    incident = (
        await server.incidents.GetIncident(service_pb2.GetIncidentRequest(id=opened.incident_id))
    ).incident
    assert incident.state == incident_pb2.INCIDENT_STATE_RESOLVED
    assert incident.resolution.method == incident_pb2.RESOLUTION_METHOD_AUTOMATED
    assert incident.timeline[-1].details["alert_id"] == "clears-later"


WINDOW = timedelta(minutes=15)


async def incident_of(server: Running, incident_id: str) -> incident_pb2.Incident:
    response = await server.incidents.GetIncident(service_pb2.GetIncidentRequest(id=incident_id))
    return response.incident


async def test_an_alert_firing_every_ten_minutes_for_two_hours_stays_one_incident(
    start_server: StartServer, clock: FakeClock
) -> None:
    server = await start_server(clock=clock, dedup_window=WINDOW)
    acks = []
    for tick in range(13):  # at 0, 10, ..., 120 minutes: the window slides with each alert
        acks.append(await submit(server, id=f"tick-{tick}"))
        clock.advance(minutes=10)
    assert [a.status for a in acks] == [alert_pb2.ACK_STATUS_ACCEPTED] + [
        alert_pb2.ACK_STATUS_DUPLICATE
    ] * 12
    assert {a.incident_id for a in acks} == {acks[0].incident_id}
    assert "13 alerts so far" in acks[-1].message
    incident = await incident_of(server, acks[0].incident_id)
    assert incident.alert_count == 13
    merged = [e for e in incident.timeline if e.type == incident_pb2.EVENT_TYPE_ALERT_MERGED]
    assert len(merged) == 12
    page = await server.incidents.ListIncidents(service_pb2.ListIncidentsRequest())
    assert page.total_size == 1


async def test_an_alert_after_a_quiet_gap_longer_than_the_window_opens_a_new_incident(
    start_server: StartServer, clock: FakeClock
) -> None:
    server = await start_server(clock=clock, dedup_window=WINDOW)
    first = await submit(server, id="a-1")
    clock.advance(minutes=10)
    await submit(server, id="a-2")
    clock.advance(minutes=15, seconds=1)  # the window counts from a-2, not from the opening
    later = await submit(server, id="a-3")
    assert later.status == alert_pb2.ACK_STATUS_ACCEPTED
    assert later.incident_id != first.incident_id
    quiet = await incident_of(server, first.incident_id)
    assert (quiet.alert_count, quiet.state) == (2, incident_pb2.INCIDENT_STATE_DETECTED)
    clock.advance(minutes=14)
    assert (await submit(server, id="a-4")).incident_id == later.incident_id


async def test_an_alert_after_its_incident_resolved_opens_a_new_incident_even_in_the_window(
    start_server: StartServer, clock: FakeClock
) -> None:
    server = await start_server(clock=clock, dedup_window=WINDOW)
    first = await submit(server, id="a-1")
    clock.advance(minutes=1)
    await server.incidents.ResolveIncident(
        service_pb2.ResolveIncidentRequest(
            id=first.incident_id,
            resolved_by="ana",
            method=incident_pb2.RESOLUTION_METHOD_MANUAL,
        )
    )
    clock.advance(minutes=1)
    again = await submit(server, id="a-2")
    assert again.status == alert_pb2.ACK_STATUS_ACCEPTED
    assert again.incident_id != first.incident_id


async def test_a_restarted_server_keeps_merging_a_problem_that_keeps_firing(
    start_server: StartServer, clock: FakeClock
) -> None:
    before = await start_server(clock=clock, dedup_window=WINDOW)
    acks = []
    for tick in range(7):  # an hour, so the incident opened long before the window
        acks.append(await submit(before, id=f"tick-{tick}"))
        clock.advance(minutes=10)
    await before.close()
    after = await start_server(clock=clock, dedup_window=WINDOW)
    more = [await submit(after, id=f"tick-{tick}") for tick in range(7, 9)]
    assert {a.incident_id for a in acks + more} == {acks[0].incident_id}
    assert (await incident_of(after, acks[0].incident_id)).alert_count == 9
