"""BatchSubmitAlerts, and dedup under concurrent submissions from many clients."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as pb2
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from tests.support import FakeClock, Running, StartServer, alert


async def all_incidents(server: Running) -> list[incident_pb2.Incident]:
    incidents: list[incident_pb2.Incident] = []
    request = service_pb2.ListIncidentsRequest(page_size=100)
    while True:
        page = await server.incidents.ListIncidents(request)
        incidents += page.incidents
        if not page.next_page_token:
            return incidents
        request.page_token = page.next_page_token


async def test_a_batch_gets_one_ack_per_alert_in_order_and_rejects_only_bad_ones(
    server: Running,
) -> None:
    alerts = [alert(id=f"b-{i}", title=f"fault {i % 10}") for i in range(500)]
    alerts[3] = alert(id="b-3", title="")  # invalid: no title
    alerts[7] = alert(id="b-7", severity=incident_pb2.SEVERITY_UNSPECIFIED)  # invalid enum
    alerts.append(alert(id="b-10", title="fault 0"))  # a retry of b-10 within the batch
    response = await server.ingestion.BatchSubmitAlerts(pb2.BatchSubmitAlertsRequest(alerts=alerts))
    acks = response.acks
    assert [a.alert_id for a in acks] == [a.id for a in alerts]
    assert acks[3].status == alert_pb2.ACK_STATUS_REJECTED
    assert "alerts[3].title" in acks[3].message
    assert acks[7].status == alert_pb2.ACK_STATUS_REJECTED
    assert "alerts[7].severity" in acks[7].message
    assert acks[-1].incident_id == acks[10].incident_id
    statuses = Counter(a.status for a in acks)
    assert statuses[alert_pb2.ACK_STATUS_ACCEPTED] == 10
    # 498 stored alerts: 10 opened incidents, 488 merged; the retry repeats a DUPLICATE.
    assert statuses[alert_pb2.ACK_STATUS_DUPLICATE] == 489
    incidents = await all_incidents(server)
    assert sum(i.alert_count for i in incidents) == 498


@pytest.mark.parametrize(("count", "message"), [(0, "at least one"), (1001, "at most 1000")])
async def test_an_empty_or_oversized_batch_is_invalid(
    server: Running, count: int, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.ingestion.BatchSubmitAlerts(
            pb2.BatchSubmitAlertsRequest(alerts=[alert() for _ in range(count)])
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (refused.value.details() or "")


async def test_many_clients_sending_the_same_alerts_at_once_make_one_incident_each(
    server: Running,
) -> None:
    # 20 clients each send the same 60 alerts (6 fingerprints x 10 ids), in
    # different orders and through every ingestion RPC at once.
    alerts = [alert(id=f"same-{i}", title=f"storm {i % 6}") for i in range(60)]

    async def unary(offset: int) -> list[alert_pb2.AlertAck]:
        ordered = alerts[offset:] + alerts[:offset]
        return [
            (await server.ingestion.SubmitAlert(pb2.SubmitAlertRequest(alert=a))).ack
            for a in ordered
        ]

    async def batch(offset: int) -> list[alert_pb2.AlertAck]:
        ordered = alerts[offset:] + alerts[:offset]
        response = await server.ingestion.BatchSubmitAlerts(
            pb2.BatchSubmitAlertsRequest(alerts=ordered)
        )
        return list(response.acks)

    async def stream(offset: int) -> list[alert_pb2.AlertAck]:
        ordered = alerts[offset:] + alerts[:offset]

        async def requests() -> AsyncIterator[pb2.StreamAlertsRequest]:
            for a in ordered:
                yield pb2.StreamAlertsRequest(alert=a)

        return [r.ack async for r in server.ingestion.StreamAlerts(requests())]

    senders = [unary, batch, stream]
    results = await asyncio.gather(*(senders[i % 3](i * 7 % 60) for i in range(20)))
    incident_of: dict[str, set[str]] = {}
    for acks in results:
        for ack in acks:
            assert ack.status in (alert_pb2.ACK_STATUS_ACCEPTED, alert_pb2.ACK_STATUS_DUPLICATE)
            incident_of.setdefault(ack.alert_id, set()).add(ack.incident_id)
    assert all(len(ids) == 1 for ids in incident_of.values()), "every client got the same answer"
    incidents = await all_incidents(server)
    assert len(incidents) == 6
    assert sorted(i.alert_count for i in incidents) == [10] * 6


async def test_batches_firing_every_ten_minutes_for_two_hours_stay_one_incident(
    start_server: StartServer, clock: FakeClock
) -> None:
    server = await start_server(clock=clock, dedup_window=timedelta(minutes=15))
    acks: list[alert_pb2.AlertAck] = []
    for tick in range(13):  # at 0, 10, ..., 120 minutes: the window slides with each batch
        batch = [alert(id=f"tick-{tick}-{n}") for n in range(3)]
        response = await server.ingestion.BatchSubmitAlerts(
            pb2.BatchSubmitAlertsRequest(alerts=batch)
        )
        acks += response.acks
        clock.advance(minutes=10)
    assert [a.status for a in acks] == [alert_pb2.ACK_STATUS_ACCEPTED] + [
        alert_pb2.ACK_STATUS_DUPLICATE
    ] * 38
    assert {a.incident_id for a in acks} == {acks[0].incident_id}
    [incident] = await all_incidents(server)
    assert incident.alert_count == 39


async def test_a_batch_that_resolves_an_incident_opens_a_new_one_for_its_later_alerts(
    server: Running,
) -> None:
    resolved = alert_pb2.ALERT_STATUS_RESOLVED
    response = await server.ingestion.BatchSubmitAlerts(
        pb2.BatchSubmitAlertsRequest(
            alerts=[
                alert(id="a-1"),
                alert_pb2.Alert(id="a-1", source="llm-sentinel", status=resolved),
                alert(id="a-2"),
                alert(id="a-3"),
            ]
        )
    )
    acks = response.acks
    assert [a.status for a in acks] == [
        alert_pb2.ACK_STATUS_ACCEPTED,
        alert_pb2.ACK_STATUS_CLEARED,
        alert_pb2.ACK_STATUS_ACCEPTED,
        alert_pb2.ACK_STATUS_DUPLICATE,
    ]
    assert acks[2].incident_id != acks[0].incident_id
    assert acks[3].incident_id == acks[2].incident_id
    by_id = {i.id: i for i in await all_incidents(server)}
    assert by_id[acks[0].incident_id].state == incident_pb2.INCIDENT_STATE_RESOLVED
    assert (by_id[acks[0].incident_id].alert_count, by_id[acks[2].incident_id].alert_count) == (
        1,
        2,
    )
