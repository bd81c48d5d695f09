"""StreamIncidents through a real server: live events, filters, resuming, slow readers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as pb2_grpc
from tests.support import Running, StartServer, alert, eventually


async def take(
    stream: AsyncIterable[pb2.StreamIncidentsResponse], count: int, wait: float = 10
) -> list[pb2.IncidentEvent]:
    async def read() -> list[pb2.IncidentEvent]:
        events = []
        async for response in stream:
            events.append(response.event)
            if len(events) == count:
                break
        return events

    return await asyncio.wait_for(read(), wait)


async def wait_subscribed(server: Running, count: int = 1) -> None:
    async def registered() -> bool:
        return server.server.manager.hub.subscriber_count >= count

    await eventually(registered, timeout=2, interval=0.01, what="the subscriber registered")


async def test_subscribers_see_every_event_of_concurrent_changes_in_order(
    server: Running,
) -> None:
    call = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest())
    await wait_subscribed(server)

    async def submit(i: int) -> None:
        await server.ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(alert=alert(title=f"fault {i % 5}"))
        )

    await asyncio.gather(*(submit(i) for i in range(40)))
    events = await take(call, 40)
    call.cancel()
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == 40
    kinds = [e.event.type for e in events]
    assert kinds.count(incident_pb2.EVENT_TYPE_CREATED) == 5
    assert kinds.count(incident_pb2.EVENT_TYPE_ALERT_MERGED) == 35


async def test_subscribers_see_one_merged_event_per_incident_of_a_batch(
    server: Running,
) -> None:
    call = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest())
    await wait_subscribed(server)
    batch = [alert(id=f"storm-{i}", title=f"fault {i % 3}") for i in range(30)]
    response = await server.ingestion.BatchSubmitAlerts(
        ingestion_pb2.BatchSubmitAlertsRequest(alerts=batch)
    )
    events = await take(call, 6)
    call.cancel()
    by_incident: dict[str, list[pb2.IncidentEvent]] = {}
    for event in events:
        by_incident.setdefault(event.incident_id, []).append(event)
    assert set(by_incident) == {ack.incident_id for ack in response.acks}
    for incident_id, (created, merged) in by_incident.items():
        assert created.event.type == incident_pb2.EVENT_TYPE_CREATED
        assert merged.event.type == incident_pb2.EVENT_TYPE_ALERT_MERGED
        assert (merged.alert_count, merged.event.details["count"]) == (10, "9")
        listed = [a["alert_id"] for a in json.loads(merged.event.details["alerts"])]
        assert listed == [
            ack.alert_id
            for ack in response.acks
            if ack.incident_id == incident_id and ack.status == alert_pb2.ACK_STATUS_DUPLICATE
        ]


async def test_filters_select_events_by_the_incident_they_belong_to(server: Running) -> None:
    security = server.incidents.StreamIncidents(
        pb2.StreamIncidentsRequest(types=[incident_pb2.INCIDENT_TYPE_SECURITY])
    )
    await wait_subscribed(server)
    await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert()))
    ack = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(
            alert=alert(title="prompt injection", type=incident_pb2.INCIDENT_TYPE_SECURITY)
        )
    )
    [event] = await take(security, 1)
    security.cancel()
    assert event.incident_id == ack.ack.incident_id
    assert event.type == incident_pb2.INCIDENT_TYPE_SECURITY
    assert event.title == "prompt injection"


async def test_one_incident_can_be_followed_by_its_id(server: Running) -> None:
    ack = (await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert()))).ack
    await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert(title="other")))
    call = server.incidents.StreamIncidents(
        pb2.StreamIncidentsRequest(incident_id=ack.incident_id, after_sequence=0)
    )
    [created] = await take(call, 1)
    await server.incidents.UpdateIncident(
        pb2.UpdateIncidentRequest(
            incident=incident_pb2.Incident(
                id=ack.incident_id, state=incident_pb2.INCIDENT_STATE_TRIAGED
            ),
            update_mask=FieldMask(paths=["state"]),
            actor="oncall",
        )
    )
    [changed] = await take(call, 1)
    call.cancel()
    assert created.event.type == incident_pb2.EVENT_TYPE_CREATED
    assert changed.event.type == incident_pb2.EVENT_TYPE_STATE_CHANGED
    assert changed.state == incident_pb2.INCIDENT_STATE_TRIAGED
    assert changed.event.actor == "oncall"


async def test_resuming_after_a_restart_loses_no_event(start_server: StartServer) -> None:
    first = await start_server()
    call = first.incidents.StreamIncidents(pb2.StreamIncidentsRequest(after_sequence=0))
    for i in range(10):
        await first.ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(alert=alert(title=f"t{i % 3}"))
        )
    seen = await take(call, 4)
    call.cancel()
    await first.close()

    second = await start_server()
    for i in range(5):
        await second.ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(alert=alert(title=f"after {i}"))
        )
    resumed = second.incidents.StreamIncidents(
        pb2.StreamIncidentsRequest(after_sequence=seen[-1].sequence)
    )
    rest = await take(resumed, 11)
    await second.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert(title="live")))
    [live] = await take(resumed, 1)
    resumed.cancel()
    sequences = [e.sequence for e in seen + rest + [live]]
    assert sequences == list(range(1, 17))
    assert live.title == "live"


async def test_a_subscriber_that_stops_reading_catches_up_on_the_same_stream(
    start_server: StartServer,
) -> None:
    server = await start_server(stream_buffer=3)
    total = 600
    # A subscriber that reads nothing: with BDP probing off its HTTP/2 window
    # stays at 64 KiB, so the server's sends back up into its 3-event buffer.
    async with grpc.aio.insecure_channel(
        server.address, options=[("grpc.http2.bdp_probe", 0)]
    ) as slow_channel:
        call = pb2_grpc.IncidentServiceStub(slow_channel).StreamIncidents(
            pb2.StreamIncidentsRequest()
        )
        await wait_subscribed(server)

        async def alerts() -> AsyncIterator[ingestion_pb2.StreamAlertsRequest]:
            for i in range(total):
                yield ingestion_pb2.StreamAlertsRequest(alert=alert(title=f"{i:04} " + "x" * 250))

        acks = [r async for r in server.ingestion.StreamAlerts(alerts())]
        assert len(acks) == total

        # Reading again, it gets every event, in order, without reconnecting.
        rest = await take(call, total)
        call.cancel()
    assert [e.sequence for e in rest] == list(range(1, total + 1))
    assert server.server.manager.catch_ups >= 1


async def test_bad_stream_filters_are_invalid(server: Running) -> None:
    call = server.incidents.StreamIncidents(
        pb2.StreamIncidentsRequest(severities=[incident_pb2.SEVERITY_UNSPECIFIED])
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await take(call, 1)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
