"""The documents whose examples the tests check (tests/docs) and run (tests/process)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "GRPC_GUIDE.md"


def code_blocks(document: Path, language: str) -> list[str]:
    """The bodies of a Markdown document's ```language blocks, in order."""
    blocks = re.findall(
        r"^```(\w*)\n(.*?)^```", document.read_text(), flags=re.DOTALL | re.MULTILINE
    )
    return [body for found, body in blocks if found == language]


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
