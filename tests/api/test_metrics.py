"""What an on-call engineer sees of a running server: /metrics scraped over HTTP
as Prometheus would, and the one JSON log line each call leaves."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterable

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from incident_manager.entrypoints.metrics import collect
from incident_manager.entrypoints.server import ListenError
from incident_manager.logs import JsonFormatter
from tests.support import Running, StartServer, alert, eventually, next_message

INGESTION = "incident_manager.v1.AlertIngestionService"
INCIDENTS = "incident_manager.v1.IncidentService"
HEALTH = "grpc.health.v1.Health"
METRICS = {"metrics_listen": "127.0.0.1:0"}


class Scraped(Collector):
    """The text of one /metrics answer, parsed back into metric families."""

    def __init__(self, text: str) -> None:
        self.text = text

    def collect(self) -> Iterable[Metric]:
        return text_string_to_metric_families(self.text)


def fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        text: str = answer.read().decode()
        return text


async def scrape(running: Running) -> dict[str, float]:
    """Every sample the server's /metrics endpoint serves, keyed like `collect`."""
    assert running.server.metrics_port, "the server is not serving /metrics"
    text = await asyncio.to_thread(fetch, running.server.metrics_port)
    return collect(Scraped(text))


def series(name: str, **labels: str) -> str:
    """The key of one sample in what `scrape` returns."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def rpc(kind: str, service: str, method: str) -> dict[str, str]:
    """The labels go-grpc-prometheus gives one method (and `grpc_code` is spelled as Go
    spells codes: OK, NotFound, Canceled), so dashboards made for Go servers work."""
    return {"grpc_type": kind, "grpc_service": service, "grpc_method": method}


async def scrape_until(running: Running, key: str, value: float) -> dict[str, float]:
    """Scrape until `key` reaches `value` (work ending after the client moved on)."""
    samples: dict[str, float] = {}

    async def reached() -> dict[str, float] | None:
        nonlocal samples
        samples = await scrape(running)
        return samples if samples.get(key) == value else None

    return await eventually(
        reached, timeout=5, what=lambda: f"{key} stayed at {samples.get(key)}, expected {value}"
    )


async def test_every_call_type_is_counted_by_method_and_status_code_as_go_servers_do(
    start_server: StartServer,
) -> None:
    server = await start_server(**METRICS)
    first = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=alert(id="first"))
    )
    again = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=alert(id="again"))
    )
    assert first.ack.status == alert_pb2.ACK_STATUS_ACCEPTED
    assert again.ack.status == alert_pb2.ACK_STATUS_DUPLICATE
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await server.incidents.GetIncident(pb2.GetIncidentRequest(id="no-such-incident"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    checked = await server.health.Check(health_pb2.HealthCheckRequest())
    assert checked.status == health_pb2.HealthCheckResponse.SERVING

    # Watch writes with context.write instead of yielding: it must still work
    # through the interceptor, and its message must be counted.
    watch = server.health.Watch(health_pb2.HealthCheckRequest())
    watched = await asyncio.wait_for(watch.read(), 5)
    assert watched.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()

    async def three_alerts() -> AsyncIterator[ingestion_pb2.StreamAlertsRequest]:
        for n in range(3):
            yield ingestion_pb2.StreamAlertsRequest(
                alert=alert(source="llm-shield", title=f"jailbreak wave {n}")
            )

    acks = [r.ack async for r in server.ingestion.StreamAlerts(three_alerts())]
    assert [a.status for a in acks] == [alert_pb2.ACK_STATUS_ACCEPTED] * 3

    submit = rpc("unary", INGESTION, "SubmitAlert")
    get = rpc("unary", INCIDENTS, "GetIncident")
    check = rpc("unary", HEALTH, "Check")
    watched_rpc = rpc("server_stream", HEALTH, "Watch")
    stream = rpc("bidi_stream", INGESTION, "StreamAlerts")
    # The Watch ends on the server a moment after the client cancelled it.
    samples = await scrape_until(
        server, series("grpc_server_handled_total", grpc_code="Canceled", **watched_rpc), 1
    )
    expected = {
        series("grpc_server_started_total", **submit): 2,
        series("grpc_server_handled_total", grpc_code="OK", **submit): 2,
        series("grpc_server_handling_seconds_count", **submit): 2,
        series("grpc_server_msg_received_total", **submit): 2,
        series("grpc_server_msg_sent_total", **submit): 2,
        series("grpc_server_started_total", **get): 1,
        series("grpc_server_handled_total", grpc_code="NotFound", **get): 1,
        series("grpc_server_handling_seconds_count", **get): 1,
        series("grpc_server_msg_received_total", **get): 1,
        series("grpc_server_msg_sent_total", **get): 0,
        series("grpc_server_started_total", **check): 1,
        series("grpc_server_handled_total", grpc_code="OK", **check): 1,
        series("grpc_server_msg_sent_total", **check): 1,
        series("grpc_server_started_total", **watched_rpc): 1,
        series("grpc_server_handling_seconds_count", **watched_rpc): 1,
        series("grpc_server_msg_received_total", **watched_rpc): 1,
        series("grpc_server_msg_sent_total", **watched_rpc): 1,
        series("grpc_server_started_total", **stream): 1,
        series("grpc_server_handled_total", grpc_code="OK", **stream): 1,
        series("grpc_server_handling_seconds_count", **stream): 1,
        series("grpc_server_msg_received_total", **stream): 3,
        series("grpc_server_msg_sent_total", **stream): 3,
    }
    assert {key: samples.get(key) for key in expected} == expected
    handled = {k: v for k, v in samples.items() if k.startswith("grpc_server_handled_total")}
    assert sum(handled.values()) == 6, handled  # each of the six calls ended exactly once
    assert series("grpc_server_handled_total", grpc_code="OK", **get) not in samples


async def test_alerts_duplicates_storage_and_open_incidents_are_counted(
    start_server: StartServer,
) -> None:
    server = await start_server(**METRICS)
    for n in range(3):  # one incident, two duplicates merged into it
        await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert(id=f"{n}")))
    batch = await server.ingestion.BatchSubmitAlerts(
        ingestion_pb2.BatchSubmitAlertsRequest(
            alerts=[
                alert(
                    source="llm-shield", title="prompt injection", severity=incident_pb2.SEVERITY_P0
                ),
                alert(source="llm-shield", title=""),  # no title: rejected
            ]
        )
    )
    assert [a.status for a in batch.acks] == [
        alert_pb2.ACK_STATUS_ACCEPTED,
        alert_pb2.ACK_STATUS_REJECTED,
    ]
    await server.server.refresh_gauges()
    samples = await scrape(server)

    expected = {
        series("incident_manager_alerts_total", source="llm-sentinel", status="ACCEPTED"): 1,
        series("incident_manager_alerts_total", source="llm-sentinel", status="DUPLICATE"): 2,
        series("incident_manager_alerts_total", source="llm-shield", status="ACCEPTED"): 1,
        series("incident_manager_alerts_total", source="llm-shield", status="REJECTED"): 1,
        "incident_manager_duplicates_merged_total": 2,
        series("incident_manager_open_incidents", severity="P2", state="DETECTED"): 1,
        series("incident_manager_open_incidents", severity="P0", state="DETECTED"): 1,
        series("incident_manager_open_incidents", severity="P1", state="DETECTED"): 0,
        series("incident_manager_open_incidents", severity="P2", state="TRIAGED"): 0,
    }
    assert {key: samples.get(key) for key in expected} == expected
    assert samples["incident_manager_storage_write_seconds_count"] >= 4  # 3 submits, 1 batch
    assert samples["incident_manager_storage_write_seconds_sum"] > 0


async def test_the_subscriber_gauge_follows_streams_and_falls_when_a_client_cancels(
    start_server: StartServer,
) -> None:
    server = await start_server(**METRICS)
    gauge = "incident_manager_stream_subscribers"
    assert (await scrape(server))[gauge] == 0
    call = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest())
    await scrape_until(server, gauge, 1)
    await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert()))
    first = await next_message(call)
    assert first.event.event.type == incident_pb2.EVENT_TYPE_CREATED

    call.cancel()
    # Cancelling must stop the server's work for the stream, not only the client's.
    await scrape_until(server, gauge, 0)
    assert server.server.manager.hub.subscriber_count == 0
    stream = rpc("server_stream", INCIDENTS, "StreamIncidents")
    await scrape_until(
        server, series("grpc_server_handled_total", grpc_code="Canceled", **stream), 1
    )


# -- one log line per call ------------------------------------------------------


def rpc_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "incident_manager.rpc"]


async def test_each_call_leaves_one_log_line_with_method_code_duration_and_incident(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server()
    caplog.set_level(logging.INFO, logger="incident_manager.rpc")
    submitted = await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert()))
    [record] = rpc_records(caplog)
    line = vars(record)
    assert line["method"] == f"/{INGESTION}/SubmitAlert"
    assert line["grpc_code"] == "OK"
    assert 0 < line["duration_ms"] < 5000
    assert line["incident_id"] == submitted.ack.incident_id
    assert record.levelno == logging.INFO

    # The real formatter turns that record into one JSON object on one line.
    rendered = JsonFormatter().format(record)
    assert "\n" not in rendered
    entry = json.loads(rendered)
    assert entry["logger"] == "incident_manager.rpc"
    assert {k: entry[k] for k in ("method", "grpc_code", "incident_id")} == {
        "method": f"/{INGESTION}/SubmitAlert",
        "grpc_code": "OK",
        "incident_id": submitted.ack.incident_id,
    }
    assert entry["duration_ms"] == line["duration_ms"]

    caplog.clear()
    await server.health.Check(health_pb2.HealthCheckRequest())
    [checked] = rpc_records(caplog)
    assert checked.method == f"/{HEALTH}/Check"  # type: ignore[attr-defined]
    assert not hasattr(checked, "incident_id"), "a call about no incident names none"


async def test_with_rpc_log_errors_only_failed_calls_are_logged(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(rpc_log="errors")
    caplog.set_level(logging.INFO, logger="incident_manager.rpc")
    await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert()))
    await server.health.Check(health_pb2.HealthCheckRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await server.incidents.GetIncident(pb2.GetIncidentRequest(id="no-such-incident"))
    [record] = rpc_records(caplog)
    assert vars(record)["method"] == f"/{INCIDENTS}/GetIncident"
    assert vars(record)["grpc_code"] == "NOT_FOUND"
    assert vars(record)["incident_id"] == "no-such-incident"
    assert "does not exist" in vars(record)["error"]


async def test_with_rpc_log_off_no_call_is_logged(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(rpc_log="off")
    caplog.set_level(logging.DEBUG, logger="incident_manager.rpc")
    await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert()))
    with pytest.raises(grpc.aio.AioRpcError):
        await server.incidents.GetIncident(pb2.GetIncidentRequest(id="no-such-incident"))
    assert rpc_records(caplog) == []


# -- a server nobody can watch must not start quietly -------------------------------


async def test_a_taken_metrics_port_stops_the_start_as_a_taken_grpc_port_does(
    start_server: StartServer,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(ListenError) as raised:
            await start_server(metrics_listen=f"127.0.0.1:{taken}")
    assert f"127.0.0.1:{taken}" in str(raised.value)
    assert "--metrics-listen" in str(raised.value)
    assert "--metrics-listen off" in str(raised.value), "it says how to do without metrics"
