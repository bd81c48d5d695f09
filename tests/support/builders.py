"""Builders for requests, so tests say only what matters to them."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import sys
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from generated.incident_manager.v1 import alert_pb2, incident_pb2

_ids = itertools.count(1)


def alert(**fields: Any) -> alert_pb2.Alert:
    """A valid alert; any field can be overridden."""
    values: dict[str, Any] = {
        "id": f"alert-{next(_ids)}",
        "source": "llm-sentinel",
        "title": "p99 latency above 2s on gpt-4o",
        "severity": incident_pb2.SEVERITY_P2,
        "type": incident_pb2.INCIDENT_TYPE_PERFORMANCE,
        "affected_resources": ["model/gpt-4o", "endpoint/chat"],
        "labels": {"region": "eu-west-1"},
    }
    values.update(fields)
    return alert_pb2.Alert(**values)


def new_incident(**fields: Any) -> incident_pb2.Incident:
    values: dict[str, Any] = {
        "title": "Prompt injection attempts from one tenant",
        "severity": incident_pb2.SEVERITY_P1,
        "type": incident_pb2.INCIDENT_TYPE_SECURITY,
        "source": "llm-shield",
        "affected_resources": ["tenant/acme"],
    }
    values.update(fields)
    return incident_pb2.Incident(**values)


def status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status the server attached to an error."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    return status


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """field -> description from the BadRequest detail."""
    for detail in status_details(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return {v.field: v.description for v in bad_request.field_violations}
    raise AssertionError("no BadRequest detail")


def error_reason(error: grpc.aio.AioRpcError) -> str:
    for detail in status_details(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    raise AssertionError("no ErrorInfo detail")


def installed_tool(name: str) -> Path | None:
    """A command installed into this virtualenv (next to python), else one on PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.exists():
        return beside_python
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


async def run_shell_example(block: str, address: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run a documented ```sh block against `address` (it is written for localhost:9000).

    Async, so the test's own in-process server keeps serving meanwhile.
    """
    script = "set -euo pipefail\n" + block.replace("localhost:9000", address)
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()
