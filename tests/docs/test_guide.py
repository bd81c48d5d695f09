"""docs/GRPC_GUIDE.md agrees with the server: a grpcurl example for every RPC,
only ```sh blocks that tests/process/test_guide_examples.py runs, Python blocks
that compile, and the gzip and message-size behaviour it describes.

Blocks in other languages are not run; Python blocks must at least compile.
"""

from __future__ import annotations

import re

import grpc
import pytest
from grpc_status import rpc_status

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import alert_pb2
from tests.support import Running, alert
from tests.support.docs import GUIDE, code_blocks

SH_BLOCKS = code_blocks(GUIDE, "sh")
GRPCURL_BLOCKS = [block for block in SH_BLOCKS if "grpcurl" in block]
PYTHON_BLOCKS = code_blocks(GUIDE, "python")


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
    assert rpc_status.from_call(raised.value) is None
