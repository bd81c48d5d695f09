"""The TypeScript client in examples/typescript runs against a real server and sees every step.

Needs Node 20+ and npm (skipped, saying so, without them). Installs the pinned
packages with `npm ci` (not again while node_modules matches the lock file),
generates the stubs from protos/ with `npx buf generate`, type-checks the
client with tsc, then runs it with tsx.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from tests.support import Running

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "typescript"
# Inside node_modules, so that removing node_modules also forgets the install.
INSTALL_STAMP = EXAMPLE / "node_modules" / ".installed-from.sha256"
MINIMUM_NODE = 20


async def run(*argv: str, within: float) -> tuple[int, str, str]:
    """Run a command in examples/typescript without blocking the server's event loop."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=EXAMPLE,
        env={**os.environ, "NO_COLOR": "1", "npm_config_update_notifier": "false"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"`{' '.join(argv)}` did not finish within {within:.0f} s") from None
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def require_node() -> None:
    missing = [tool for tool in ("node", "npm", "npx") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"TypeScript client example: {', '.join(missing)} not on PATH "
            f"(needs Node {MINIMUM_NODE}+ with npm)"
        )
    code, out, err = await run("node", "--version", within=30)
    assert code == 0, err
    major = int(out.strip().lstrip("v").split(".")[0])
    if major < MINIMUM_NODE:
        pytest.skip(f"TypeScript client example: needs Node {MINIMUM_NODE}+, found {out.strip()}")


@asynccontextmanager
async def example_lock() -> AsyncIterator[None]:
    """One test run at a time prepares examples/typescript: `npm ci` and
    `buf generate` replace folders another run may be using."""
    key = hashlib.sha256(str(EXAMPLE).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"incident-manager-typescript-{key}.lock"
    with path.open("w") as lock:
        # flock blocks; waiting in a thread keeps the server's loop running.
        await asyncio.to_thread(fcntl.flock, lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def installed_from() -> str:
    """What node_modules must have been installed from: package.json and its lock."""
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        file = EXAMPLE / name
        digest.update(file.read_bytes() if file.exists() else b"")
    return digest.hexdigest()


async def install_packages() -> None:
    """`npm ci` from the lock file, unless node_modules already matches it."""
    wanted = installed_from()
    if INSTALL_STAMP.exists() and INSTALL_STAMP.read_text() == wanted:
        return
    lock_file = (EXAMPLE / "package-lock.json").exists()
    argv = ("npm", "ci" if lock_file else "install", "--no-audit", "--no-fund")
    code, _, err = await run(*argv, within=240)
    assert code == 0, f"`{' '.join(argv)}` failed:\n{err}"
    INSTALL_STAMP.write_text(installed_from())


async def prepare_client() -> None:
    """Install the packages, generate the stubs, and type-check the client."""
    await install_packages()
    code, _, err = await run("npx", "buf", "generate", within=60)
    assert code == 0, f"`npx buf generate` failed:\n{err}"
    code, out, err = await run("npx", "tsc", "--noEmit", within=60)
    assert code == 0, f"src/client.ts does not type-check against the stubs:\n{out}{err}"


@pytest.mark.timeout(300)  # a first `npm ci` downloads every package
async def test_the_typescript_client_submits_updates_resolves_and_follows_the_stream(
    server: Running,
) -> None:
    await require_node()
    async with example_lock():
        await prepare_client()
        code, out, err = await run(
            "npx", "tsx", "src/client.ts", "--target", server.address, within=60
        )
    assert code == 0, f"the client failed:\n{err}"
    saw = json.loads(out.strip().splitlines()[-1])

    incident_id = saw["incidentId"]
    assert saw["acks"]["submitted"] == ["ACK_STATUS_ACCEPTED", "ACK_STATUS_DUPLICATE"]
    assert saw["acks"]["streamed"] == ["ACK_STATUS_DUPLICATE"] * 3
    assert saw["acks"]["incidentIds"] == [incident_id]  # every alert merged into one incident
    assert saw["listed"]["count"] == saw["listed"]["totalSize"] == 1
    assert saw["updatedState"] == "INCIDENT_STATE_INVESTIGATING"
    assert saw["finalState"] == "INCIDENT_STATE_RESOLVED"
    assert saw["resolutionMethod"] == "RESOLUTION_METHOD_MANUAL"
    assert {
        "EVENT_TYPE_CREATED",
        "EVENT_TYPE_ALERT_MERGED",
        "EVENT_TYPE_STATE_CHANGED",
        "EVENT_TYPE_RESOLVED",
    } <= set(saw["eventTypes"])
    assert saw["eventSequencesIncrease"]

    stored = (await server.incidents.GetIncident(pb2.GetIncidentRequest(id=incident_id))).incident
    assert stored.state == incident_pb2.INCIDENT_STATE_RESOLVED
    assert stored.resolution.method == incident_pb2.RESOLUTION_METHOD_MANUAL
    assert stored.alert_count == 5
    assert list(stored.assignees) == ["bob"]
    # The live stream saw exactly the incident's timeline, in order.
    assert saw["eventTypes"] == [incident_pb2.EventType.Name(e.type) for e in stored.timeline]
