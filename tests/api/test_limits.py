"""Limits through a real server: each refuses the excess with a status that says
which setting applied, and never starves health checks or other callers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as pb2_grpc
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.domain.ratelimit import RateLimit
from incident_manager.entrypoints.metrics import collect
from incident_manager.service.ports import EventListener, Storage, UnitOfWork
from tests.support import (
    FakeClock,
    Running,
    StartServer,
    alert,
    error_info,
    eventually,
    next_message,
    status_details,
)

T = TypeVar("T")
SERVING = health_pb2.HealthCheckResponse.SERVING


async def holds(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition` holds, checking every 10 ms for up to 5 s."""

    async def check() -> bool:
        return condition()

    await eventually(check, timeout=5, interval=0.01, what=what)


async def subscribers(server: Running, count: int) -> None:
    await holds(lambda: server.server.manager.hub.subscriber_count == count, f"{count} subscribers")


async def still_serving(server: Running) -> None:
    """Health says SERVING and a unary call is answered: the limit starved nobody."""
    checked = await server.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert checked.status == SERVING
    submitted = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=alert()), timeout=5
    )
    assert submitted.ack.status in (alert_pb2.ACK_STATUS_ACCEPTED, alert_pb2.ACK_STATUS_DUPLICATE)


# -- streams ----------------------------------------------------------------------


async def test_a_subscriber_over_max_subscribers_is_refused_and_admitted_once_one_leaves(
    start_server: StartServer,
) -> None:
    server = await start_server(max_subscribers=2)
    first = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest())
    second = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest())
    await subscribers(server, 2)

    third = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(third.read(), 5)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-subscribers" in (refused.value.details() or "")
    await still_serving(server)

    first.cancel()
    await subscribers(server, 1)
    fourth = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest())
    await subscribers(server, 2)
    submitted = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=alert(title="after the limit"))
    )
    for call in (second, fourth):
        seen = [(await next_message(call)).event.incident_id]
        if seen[0] != submitted.ack.incident_id:  # the second also saw still_serving's alert
            seen.append((await next_message(call)).event.incident_id)
        assert seen[-1] == submitted.ack.incident_id
        call.cancel()


async def test_an_ingest_stream_over_max_ingest_streams_is_refused_until_one_closes(
    start_server: StartServer,
) -> None:
    server = await start_server(max_ingest_streams=1)
    first = server.ingestion.StreamAlerts()
    await first.write(ingestion_pb2.StreamAlertsRequest(alert=alert(id="on-the-open-stream")))
    acked = await next_message(first)
    assert acked.ack.status == alert_pb2.ACK_STATUS_ACCEPTED

    second = server.ingestion.StreamAlerts()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(second.read(), 5)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-ingest-streams" in (refused.value.details() or "")
    await still_serving(server)

    await first.done_writing()
    assert await first.code() == grpc.StatusCode.OK

    async def one_alert() -> AsyncIterator[ingestion_pb2.StreamAlertsRequest]:
        yield ingestion_pb2.StreamAlertsRequest(alert=alert(id="on-the-next-stream"))

    async def acks_on_a_new_stream() -> list[alert_pb2.AlertAck] | None:
        try:
            return [r.ack async for r in server.ingestion.StreamAlerts(one_alert())]
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            return None

    # The slot is given back as the first stream's handler ends, just after its status.
    acks = await eventually(
        acks_on_a_new_stream, timeout=5, what="the closed stream gave its slot back"
    )
    assert [a.alert_id for a in acks] == ["on-the-next-stream"]
    assert acks[0].status == alert_pb2.ACK_STATUS_DUPLICATE


# -- unary calls, through a database the test can hold up ---------------------------


class HeldStorage(Storage):
    """SQLite storage whose writes wait while the test holds them, as a slow disk would."""

    def __init__(self, inner: Storage) -> None:
        super().__init__()
        self.inner = inner
        self.released = asyncio.Event()
        self.released.set()
        self.waiting = 0

    def hold(self) -> None:
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def add_listener(self, listener: EventListener) -> None:
        self.inner.add_listener(listener)

    async def write(self, work: Callable[[UnitOfWork], T]) -> T:
        self.waiting += 1
        try:
            await self.released.wait()
        finally:
            self.waiting -= 1
        return await self.inner.write(work)

    async def read(self, work: Callable[[UnitOfWork], T]) -> T:
        return await self.inner.read(work)

    async def close(self) -> None:
        await self.inner.close()


async def open_incidents(server: Running) -> int:
    listed = await server.incidents.ListIncidents(pb2.ListIncidentsRequest())
    return listed.total_size


async def test_calls_over_max_concurrent_calls_are_refused_per_method_without_blocking_others(
    start_server: StartServer, db_path: Path
) -> None:
    storage = HeldStorage(SqliteStorage(db_path))
    server = await start_server(storage=storage, max_concurrent_calls=1)
    storage.hold()
    slow = asyncio.ensure_future(
        server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert(id="slow")))
    )
    try:
        await holds(lambda: storage.waiting == 1, "the first call reached the database")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await server.ingestion.SubmitAlert(
                ingestion_pb2.SubmitAlertRequest(alert=alert(id="refused")), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-concurrent-calls" in (refused.value.details() or "")
        # The limit is per method: reading and health checks go on meanwhile.
        assert await open_incidents(server) == 0
        checked = await server.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert checked.status == SERVING
    finally:
        storage.release()
    assert (await slow).ack.status == alert_pb2.ACK_STATUS_ACCEPTED
    again = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=alert(id="after")), timeout=5
    )
    assert again.ack.status == alert_pb2.ACK_STATUS_DUPLICATE


async def test_a_call_past_its_deadline_is_abandoned_stores_nothing_and_frees_its_slot(
    start_server: StartServer, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="incident_manager.rpc")
    storage = HeldStorage(SqliteStorage(db_path))
    server = await start_server(storage=storage, max_concurrent_calls=1)
    storage.hold()
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await server.ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(alert=alert(id="late")), timeout=0.3
        )
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server cancelled the work it started: nothing waits for the disk any more.
    await holds(lambda: storage.waiting == 0, "the abandoned write was cancelled")
    storage.release()
    assert await open_incidents(server) == 0
    after = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=alert(id="in-time")), timeout=5
    )
    assert after.ack.status == alert_pb2.ACK_STATUS_ACCEPTED
    assert await open_incidents(server) == 1
    # The log says why the call failed as the client saw it, not just "cancelled".
    submits = [
        vars(r)["grpc_code"]
        for r in caplog.records
        if r.name == "incident_manager.rpc" and vars(r)["method"].endswith("/SubmitAlert")
    ]
    assert submits == ["DEADLINE_EXCEEDED", "OK"]


async def test_a_subscriber_deadline_ends_its_stream_and_its_subscription(
    start_server: StartServer,
) -> None:
    server = await start_server()
    gauge = "incident_manager_stream_subscribers"
    call = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest(), timeout=0.5)
    await subscribers(server, 1)
    assert collect(server.server.metrics.registry)[gauge] == 1
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async for _ in call:
            pass
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await subscribers(server, 0)
    samples = collect(server.server.metrics.registry)
    assert samples[gauge] == 0
    handled = (
        'grpc_server_handled_total{grpc_code="DeadlineExceeded",grpc_method="StreamIncidents",'
        'grpc_service="incident_manager.v1.IncidentService",grpc_type="server_stream"}'
    )
    await holds(
        lambda: collect(server.server.metrics.registry).get(handled) == 1,
        "the ended stream counted as DeadlineExceeded",
    )


# -- message size -------------------------------------------------------------------


async def test_a_batch_over_max_message_bytes_is_refused_and_the_server_carries_on(
    start_server: StartServer,
) -> None:
    server = await start_server(max_message_bytes=64 * 1024)
    oversized = ingestion_pb2.BatchSubmitAlertsRequest(
        alerts=[alert(title=f"big {n}", description="x" * 8000) for n in range(10)]
    )
    assert oversized.ByteSize() > 64 * 1024
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.ingestion.BatchSubmitAlerts(oversized, timeout=5)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await open_incidents(server) == 0, "nothing of the refused batch was stored"

    fits = ingestion_pb2.BatchSubmitAlertsRequest(
        alerts=[alert(title=f"big {n}", description="x" * 8000) for n in range(5)]
    )
    assert fits.ByteSize() < 64 * 1024
    stored = await server.ingestion.BatchSubmitAlerts(fits, timeout=5)
    assert [a.status for a in stored.acks] == [alert_pb2.ACK_STATUS_ACCEPTED] * 5
    assert await open_incidents(server) == 5


# -- compression ----------------------------------------------------------------------


class CountingRelay:
    """A TCP relay between a client and a server that counts the bytes the server sends."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.from_server = 0
        self._listener: asyncio.Server | None = None

    async def start(self) -> str:
        self._listener = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._listener.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.server_port)

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, counted: bool
        ) -> None:
            try:
                while data := await source.read(65536):
                    if counted:
                        self.from_server += len(data)
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(client_in, server_out, False), pipe(server_in, client_out, True))


DESCRIPTION = "Toxicity classifier flagged 4% of completions on model m1. " * 130


async def bytes_to_read_one_incident(server: Running) -> int:
    """Bytes the server sends for one GetIncident of an incident with a long description."""
    submitted = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=alert(description=DESCRIPTION))
    )
    relay = CountingRelay(int(server.address.rpartition(":")[2]))
    address = await relay.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb2_grpc.IncidentServiceStub(channel)
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            before = relay.from_server
            got = await stub.GetIncident(pb2.GetIncidentRequest(id=submitted.ack.incident_id))
            assert got.incident.description == DESCRIPTION
            return relay.from_server - before
    finally:
        await relay.stop()


async def test_a_server_set_to_gzip_compresses_what_it_sends(
    start_server: StartServer, tmp_path: Path
) -> None:
    assert len(DESCRIPTION) > 7000
    plain = await bytes_to_read_one_incident(await start_server(path=tmp_path / "plain.db"))
    gzipped = await bytes_to_read_one_incident(
        await start_server(path=tmp_path / "gzip.db", compression="gzip")
    )
    assert plain > len(DESCRIPTION)
    assert gzipped < len(DESCRIPTION) / 4, f"{gzipped} bytes for {len(DESCRIPTION)} of text"


async def test_gzip_compressed_streams_from_clients_are_understood(server: Running) -> None:
    async with grpc.aio.insecure_channel(
        server.address, compression=grpc.Compression.Gzip
    ) as channel:
        ingestion = ingestion_grpc.AlertIngestionServiceStub(channel)

        async def alerts() -> AsyncIterator[ingestion_pb2.StreamAlertsRequest]:
            for n in range(3):
                yield ingestion_pb2.StreamAlertsRequest(
                    alert=alert(title=f"gzip {n}", description=DESCRIPTION)
                )

        acks = [r.ack async for r in ingestion.StreamAlerts(alerts())]
        assert [a.status for a in acks] == [alert_pb2.ACK_STATUS_ACCEPTED] * 3
        got = await pb2_grpc.IncidentServiceStub(channel).GetIncident(
            pb2.GetIncidentRequest(id=acks[0].incident_id)
        )
    assert got.incident.description == DESCRIPTION


# -- keepalive ----------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_client_pinging_too_often_is_sent_away_while_others_carry_on(
    server: Running,
) -> None:
    assert server.server.settings.min_client_ping_interval.total_seconds() == 10
    pinging = grpc.aio.insecure_channel(
        server.address,
        options=[
            ("grpc.keepalive_time_ms", 100),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    async with pinging:
        stream = pb2_grpc.IncidentServiceStub(pinging).StreamIncidents(pb2.StreamIncidentsRequest())
        await subscribers(server, 1)
        # grpc strikes a ping that comes sooner than allowed, and sends GOAWAY
        # ("too_many_pings") after the third strike; with 100 ms pings that
        # takes about five seconds here.
        with pytest.raises(grpc.aio.AioRpcError) as sent_away:
            await asyncio.wait_for(stream.read(), 30)
    assert sent_away.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "too many pings" in (sent_away.value.details() or "").lower()
    await subscribers(server, 0)
    await still_serving(server)


# -- rate limits ----------------------------------------------------------------------


def flood(source: str, severity: int, count: int) -> list[alert_pb2.Alert]:
    return [
        alert(source=source, severity=severity, title=f"{source} flood {severity}.{n}")
        for n in range(count)
    ]


async def acks_of(server: Running, alerts: list[alert_pb2.Alert]) -> list[alert_pb2.AlertAck]:
    """The acks of one BatchSubmitAlerts call."""
    response = await server.ingestion.BatchSubmitAlerts(
        ingestion_pb2.BatchSubmitAlertsRequest(alerts=alerts)
    )
    return list(response.acks)


async def test_a_flooding_source_is_rate_limited_but_its_p0_alerts_never_are(
    start_server: StartServer, clock: FakeClock
) -> None:
    # The clock stands still, so no token comes back during the test.
    server = await start_server(clock=clock, rate_limit=RateLimit(1, 2))
    acks = await acks_of(server, flood("noisy-exporter", incident_pb2.SEVERITY_P3, 6))
    statuses = [a.status for a in acks]
    admitted = statuses.count(alert_pb2.ACK_STATUS_ACCEPTED)
    assert 1 <= admitted <= 2, "at most the burst, less any reserve kept for P0-P2"
    assert statuses == [alert_pb2.ACK_STATUS_ACCEPTED] * admitted + [
        alert_pb2.ACK_STATUS_RATE_LIMITED
    ] * (6 - admitted)
    for ack in acks[admitted:]:
        assert "source 'noisy-exporter' is over its rate limit" in ack.message
        assert "retry in" in ack.message

    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await server.ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(
                alert=alert(source="noisy-exporter", severity=incident_pb2.SEVERITY_P3)
            )
        )
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(limited.value).reason == "RATE_LIMITED"
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status_details(limited.value).details)
    assert retry.retry_delay.ToTimedelta().total_seconds() > 0

    critical = await acks_of(server, flood("noisy-exporter", incident_pb2.SEVERITY_P0, 20))
    assert [a.status for a in critical] == [alert_pb2.ACK_STATUS_ACCEPTED] * 20
    # Another source has its own bucket.
    other = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(
            alert=alert(source="quiet-exporter", severity=incident_pb2.SEVERITY_P3)
        )
    )
    assert other.ack.status == alert_pb2.ACK_STATUS_ACCEPTED


async def test_the_server_wide_limit_sheds_the_least_severe_alerts_of_all_sources_first(
    start_server: StartServer, clock: FakeClock
) -> None:
    server = await start_server(clock=clock, global_rate_limit=RateLimit(1, 4))
    low = await acks_of(
        server,
        [
            *flood("exporter-a", incident_pb2.SEVERITY_P4, 3),
            *flood("exporter-b", incident_pb2.SEVERITY_P4, 3),
        ],
    )
    accepted = [a for a in low if a.status == alert_pb2.ACK_STATUS_ACCEPTED]
    shed = [a for a in low if a.status == alert_pb2.ACK_STATUS_RATE_LIMITED]
    # P4 must leave half the burst for more severe alerts: 2 of the 4 tokens.
    assert (len(accepted), len(shed)) == (2, 4)
    for ack in shed:
        assert "the server is over its rate limit for all sources together" in ack.message
        assert "least severe alerts are shed first" in ack.message

    # The two tokens left go to more severe alerts, whatever their source.
    urgent = await acks_of(
        server,
        [
            alert(source="exporter-a", severity=incident_pb2.SEVERITY_P1, title="a is down"),
            alert(source="exporter-b", severity=incident_pb2.SEVERITY_P1, title="b is down"),
            alert(source="exporter-c", severity=incident_pb2.SEVERITY_P4, title="c is chatty"),
        ],
    )
    assert [a.status for a in urgent] == [
        alert_pb2.ACK_STATUS_ACCEPTED,
        alert_pb2.ACK_STATUS_ACCEPTED,
        alert_pb2.ACK_STATUS_RATE_LIMITED,
    ]
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await server.ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(
                alert=alert(source="exporter-d", severity=incident_pb2.SEVERITY_P1)
            )
        )
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "all sources together" in (limited.value.details() or "")
    p0 = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(
            alert=alert(source="exporter-d", severity=incident_pb2.SEVERITY_P0)
        )
    )
    assert p0.ack.status == alert_pb2.ACK_STATUS_ACCEPTED
