"""`imctl watch` keeps following across a server restart: every stored event is printed
once, none is missed, and it says that it lost the connection and resumed."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO

from tests.support.imctl import PYTHON, imctl_environment, run_imctl
from tests.support.polling import eventually
from tests.support.processes import Launch, ServerProcess, StartProcess

ROOT = Path(__file__).resolve().parents[2]
PAGING = str(ROOT / "examples" / "paging.yaml")


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The stream's lines as they come, read by a thread so the test can wait with a timeout."""
    found: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            found.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return found


def stored_sequences(server: ServerProcess) -> set[int]:
    """Every event sequence the server holds, from every incident's timeline."""
    client = server.client()
    return {
        event.sequence
        for incident in client.list_all_incidents()
        for event in client.get_incident(incident.id).timeline
    }


def test_watch_resumes_after_a_server_restart_without_missing_or_repeating_an_event(
    start_process: StartProcess, launch: Launch, tmp_path: Path
) -> None:
    database = tmp_path / "incidents.db"
    server = start_process(database, "--paging-config", PAGING)
    environment = imctl_environment(
        tmp_path / "config", IMCTL_SERVER=server.address, IMCTL_USER="alice"
    )

    def imctl(*args: str) -> str:
        result = run_imctl(*args, environment=environment)
        assert result.code == 0, str(result)
        return result.stdout

    before = json.loads(
        imctl(
            "alert", "send", "--source", "s", "--title", "before", "--severity", "P1", "-o", "json"
        )
    )["incidentId"]
    watcher = subprocess.Popen(
        [PYTHON, "-m", "incident_manager.cli", "watch", "-o", "json", "--after", "0"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None and watcher.stderr is not None
        out, err = lines_of(watcher.stdout), lines_of(watcher.stderr)
        events: list[dict[str, object]] = []

        def printed() -> list[dict[str, object]]:
            events.extend(json.loads(line) for line in iter_queue(out))
            return events

        eventually(
            lambda: any(e["incidentId"] == before for e in printed()),
            timeout=15,
            what="watch to print the first incident's events",
        )

        server.signal(signal.SIGKILL)
        server.wait_for_exit(10)
        args = ["--listen", server.address, "--database", str(database), "--log-level", "WARNING"]
        restarted = launch([*args, "--paging-config", PAGING], address=server.address)

        after = json.loads(
            imctl(
                "alert",
                "send",
                "--source",
                "s",
                "--title",
                "after",
                "--severity",
                "P0",
                "-o",
                "json",
            )
        )["incidentId"]
        imctl("ack", before)

        def caught_up() -> bool:
            stored = stored_sequences(restarted)
            return stored <= {int(str(e["sequence"])) for e in printed()}

        eventually(caught_up, timeout=30, what=lambda: f"watch to print every event: {events}")
        sequences = [int(str(e["sequence"])) for e in events]
        assert len(sequences) == len(set(sequences)), f"an event was printed twice: {sequences}"
        assert sequences == sorted(sequences)
        assert {before, after} <= {e["incidentId"] for e in events}
        acks = [e for e in events if e["event"]["type"] == "EVENT_TYPE_ACKNOWLEDGED"]  # type: ignore[index]
        assert [a["incidentId"] for a in acks] == [before]

        said: list[str] = []

        def resumed() -> bool:
            said.extend(iter_queue(err))
            return any("resumed after event" in line for line in said)

        eventually(resumed, timeout=10, what=lambda: f"watch to say it resumed: {said}")
        assert any("connection lost" in line for line in said), said
    finally:
        watcher.send_signal(signal.SIGINT)
        code = watcher.wait(timeout=10)
    assert code == 0, "Ctrl-C ends watch with exit code 0"


def iter_queue(found: queue.Queue[str]) -> list[str]:
    """Whatever the queue holds now."""
    taken: list[str] = []
    while True:
        try:
            taken.append(found.get_nowait())
        except queue.Empty:
            return taken
