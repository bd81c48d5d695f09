"""Fixtures for tests that run the server as a real process."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Launch, ServerProcesses, StartProcess


@pytest.fixture
def server_processes(tmp_path: Path) -> Iterator[ServerProcesses]:
    """The server processes this test starts; any still running at the end is killed."""
    processes = ServerProcesses(tmp_path)
    try:
        yield processes
    finally:
        processes.kill_all()


@pytest.fixture
def launch(server_processes: ServerProcesses) -> Launch:
    """Start `python -m incident_manager` with the given arguments."""
    return server_processes.launch


@pytest.fixture
def start_process(server_processes: ServerProcesses) -> StartProcess:
    """Start a server process on a free port and a database; returns once it is SERVING."""
    return server_processes.start


@pytest.fixture
def rng() -> random.Random:
    """Random choices a failure can replay: the seed is printed with the test's output."""
    seed = random.randrange(2**32)
    print(f"random seed {seed}")  # shown with a failure, to replay the same choices
    return random.Random(seed)
