"""The server as operators run it: a real OS process, configured by flags or environment,
stopped by signals, killed with `kill -9`, restarted on the same database file.

These tests are synchronous: each server runs in its own process, so a
blocking gRPC channel in the test is the simplest faithful client.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from tests.support import alert, free_port, installed_tool, new_incident
from tests.support.processes import (
    CALL_TIMEOUT,
    NOT_SERVING,
    PYTHON,
    SERVING,
    Launch,
    ServerProcess,
    server_environment,
)


def serve(launch: Launch, database: Path, *extra: str) -> ServerProcess:
    """A server on a free port of 127.0.0.1 and `database`, once it is SERVING."""
    address = f"127.0.0.1:{free_port()}"
    return launch(["--listen", address, "--database", str(database), *extra], address=address)


def test_help_names_the_environment_variables_for_listen_and_database() -> None:
    script = installed_tool("incident-manager")
    commands = [[PYTHON, "-m", "incident_manager", "--help"]]
    if script is not None:
        commands.append([str(script), "--help"])
    for command in commands:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=20, env=server_environment()
        )
        assert result.returncode == 0, result.stderr
        assert "INCIDENT_MANAGER_LISTEN" in result.stdout
        assert "INCIDENT_MANAGER_DATABASE" in result.stdout
    if script is None:
        pytest.skip("the incident-manager console script is not installed; checked -m only")


def test_the_server_takes_its_address_and_database_from_environment_variables(
    launch: Launch, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    database = tmp_path / "from-env" / "incidents.db"
    server = launch(
        [],
        address=address,
        environment=server_environment(
            INCIDENT_MANAGER_LISTEN=address, INCIDENT_MANAGER_DATABASE=str(database)
        ),
    )

    ack = (
        server.client()
        .ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(alert=alert()), timeout=CALL_TIMEOUT
        )
        .ack
    )

    assert ack.status == alert_pb2.ACK_STATUS_ACCEPTED
    assert database.exists()
    assert not (tmp_path / "data").exists(), "the default database path was used"


def test_a_bad_environment_variable_stops_the_server_with_a_message_naming_it(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "incident_manager", "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=tmp_path,
        env=server_environment(INCIDENT_MANAGER_DEDUP_WINDOW="soon"),
    )

    assert result.returncode != 0
    assert "INCIDENT_MANAGER_DEDUP_WINDOW" in result.stderr
    assert "soon" in result.stderr


def test_a_bad_tokens_file_stops_the_server_with_exit_code_2_and_the_line_to_fix(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# ops team\nimt_a-token-pasted-by-mistake oncall responder\n")
    result = subprocess.run(
        [PYTHON, "-m", "incident_manager", "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=tmp_path,
        env=server_environment(INCIDENT_MANAGER_TOKENS_FILE=str(tokens)),
    )
    assert result.returncode == 2
    assert f"{tokens}:2" in result.stderr
    assert "never tokens" in result.stderr


def test_a_server_process_serves_prometheus_metrics(launch: Launch, tmp_path: Path) -> None:
    metrics_port = free_port()
    server = serve(launch, tmp_path / "metrics.db", "--metrics-listen", f"127.0.0.1:{metrics_port}")
    server.client().ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=alert(source="metrics-probe")),
        timeout=CALL_TIMEOUT,
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="SubmitAlert",'
        'grpc_service="incident_manager.v1.AlertIngestionService",grpc_type="unary"} 1.0'
    ) in text
    assert 'incident_manager_alerts_total{source="metrics-probe",status="ACCEPTED"} 1.0' in text


def test_a_second_server_on_a_port_in_use_exits_instead_of_sharing_it(
    launch: Launch, tmp_path: Path
) -> None:
    first = serve(launch, tmp_path / "first.db")
    port = first.address.rsplit(":", 1)[1]

    second = launch(
        ["--listen", first.address, "--database", str(tmp_path / "second.db")],
        address=first.address,
        wait=False,
    )
    returncode = second.wait_for_exit(timeout=10)

    stderr = second.stderr()
    assert returncode != 0
    assert port in stderr
    assert "in use" in stderr or "already using" in stderr, stderr
    # The first server still owns the port and answers.
    health = first.client().health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
    assert health.status == SERVING


def test_every_acked_alert_survives_kill_9(launch: Launch, tmp_path: Path) -> None:
    database = tmp_path / "durable.db"
    server = serve(launch, database)
    client = server.client()
    fingerprints = 20
    alerts = [
        alert(
            id=f"durable-{n}",
            title=f"Hallucination rate above 5% on model {n % fingerprints}",
            affected_resources=[f"model/m{n % fingerprints}"],
        )
        for n in range(200)
    ]
    # Retries of alerts already acked must be counted once.
    retries = alerts[::10]

    def submit(one: alert_pb2.Alert) -> alert_pb2.AlertAck:
        request = ingestion_pb2.SubmitAlertRequest(alert=one)
        return client.ingestion.SubmitAlert(request, timeout=CALL_TIMEOUT).ack

    with ThreadPoolExecutor(max_workers=8) as pool:
        acks = list(pool.map(submit, alerts))
        retry_acks = list(pool.map(submit, retries))
    server.signal(signal.SIGKILL)
    assert server.wait_for_exit(timeout=10) == -signal.SIGKILL

    acked_alerts: dict[str, set[str]] = defaultdict(set)
    first_ack: dict[str, alert_pb2.AlertAck] = {}
    for sent, ack in zip(alerts, acks, strict=True):
        assert ack.alert_id == sent.id
        assert ack.status in (alert_pb2.ACK_STATUS_ACCEPTED, alert_pb2.ACK_STATUS_DUPLICATE)
        acked_alerts[ack.incident_id].add(sent.id)
        first_ack[sent.id] = ack
    for sent, ack in zip(retries, retry_acks, strict=True):
        # A retry gets the answer the first submission got.
        assert ack.status == first_ack[sent.id].status
        assert ack.incident_id == first_ack[sent.id].incident_id
    assert len(acked_alerts) == fingerprints
    assert sum(ack.status == alert_pb2.ACK_STATUS_ACCEPTED for ack in acks) == fingerprints

    restarted = serve(launch, database)
    client = restarted.client()

    stored = client.list_all_incidents(page_size=7)
    assert sorted(incident.id for incident in stored) == sorted(acked_alerts)
    for incident_id, alert_ids in acked_alerts.items():
        assert client.get_incident(incident_id).alert_count == len(alert_ids)

    resent = alerts[42]
    incident_id = first_ack[resent.id].incident_id
    count_before = client.get_incident(incident_id).alert_count
    ack = client.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=resent), timeout=CALL_TIMEOUT
    ).ack
    assert ack.status == first_ack[resent.id].status
    assert ack.incident_id == incident_id
    assert "retry" in ack.message
    assert client.get_incident(incident_id).alert_count == count_before


def _drain(stream: Iterator[object], into: queue.Queue[object]) -> None:
    """Put every message of a server stream, then the error that ended it, into `into`."""
    try:
        for message in stream:
            into.put(message)
        into.put(None)
    except grpc.RpcError as error:
        into.put(error)


def _next(messages: queue.Queue[object], what: str, timeout: float = 10.0) -> object:
    try:
        return messages.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {what} within {timeout}s") from None


def test_sigterm_drains_health_and_event_streams_then_exits_cleanly(
    launch: Launch, tmp_path: Path
) -> None:
    grace = 2.0
    server = serve(launch, tmp_path / "sigterm.db", "--shutdown-grace", f"{grace:g}s")
    client = server.client()
    created = client.incidents.CreateIncident(
        service_pb2.CreateIncidentRequest(incident=new_incident()), timeout=CALL_TIMEOUT
    ).incident

    health_updates: queue.Queue[object] = queue.Queue()
    watch = client.health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
    threading.Thread(target=_drain, args=(watch, health_updates), daemon=True).start()
    events: queue.Queue[object] = queue.Queue()
    stream = client.incidents.StreamIncidents(
        service_pb2.StreamIncidentsRequest(after_sequence=0), timeout=60
    )
    threading.Thread(target=_drain, args=(stream, events), daemon=True).start()
    try:
        first_health = _next(health_updates, "health update")
        assert isinstance(first_health, health_pb2.HealthCheckResponse)
        assert first_health.status == SERVING
        # The replayed CREATED event proves the stream is connected.
        replayed = _next(events, "replayed event")
        assert isinstance(replayed, service_pb2.StreamIncidentsResponse)
        assert replayed.event.incident_id == created.id
        last_sequence = replayed.event.sequence

        signalled = time.monotonic()
        server.signal(signal.SIGTERM)

        update = _next(health_updates, "health update after SIGTERM")
        assert isinstance(update, health_pb2.HealthCheckResponse), update
        assert update.status == NOT_SERVING
        ended = _next(events, "end of StreamIncidents after SIGTERM")
        assert isinstance(ended, grpc.RpcError), f"expected the stream to end, got {ended}"
        assert ended.code() == grpc.StatusCode.UNAVAILABLE
        assert f"after_sequence={last_sequence}" in (ended.details() or "")

        returncode = server.wait_for_exit(timeout=grace + 8)
        assert returncode == 0, server.stderr()
        assert time.monotonic() - signalled < grace + 8
    finally:
        watch.cancel()
        stream.cancel()


def test_a_restarted_server_keeps_incidents_with_their_timeline(
    launch: Launch, tmp_path: Path
) -> None:
    database = tmp_path / "restart.db"
    server = serve(launch, database, "--shutdown-grace", "2s")
    client = server.client()
    created = client.incidents.CreateIncident(
        service_pb2.CreateIncidentRequest(incident=new_incident(), actor="alice"),
        timeout=CALL_TIMEOUT,
    ).incident
    client.incidents.AddNote(
        service_pb2.AddNoteRequest(
            incident_id=created.id, author="bob", content="Rate-limited the tenant."
        ),
        timeout=CALL_TIMEOUT,
    )
    client.incidents.UpdateIncident(
        service_pb2.UpdateIncidentRequest(
            incident=incident_pb2.Incident(
                id=created.id, state=incident_pb2.INCIDENT_STATE_INVESTIGATING
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
            actor="bob",
        ),
        timeout=CALL_TIMEOUT,
    )
    before = client.get_incident(created.id)
    server.signal(signal.SIGTERM)
    assert server.wait_for_exit(timeout=10) == 0, server.stderr()

    after = serve(launch, database).client().get_incident(created.id)

    assert after == before
    assert after.state == incident_pb2.INCIDENT_STATE_INVESTIGATING
    assert [event.type for event in after.timeline] == [
        incident_pb2.EVENT_TYPE_CREATED,
        incident_pb2.EVENT_TYPE_NOTE_ADDED,
        incident_pb2.EVENT_TYPE_STATE_CHANGED,
    ]
    assert after.timeline[0].actor == "alice"
    assert after.timeline_size == 3
    assert [note.content for note in after.notes] == ["Rate-limited the tenant."]
