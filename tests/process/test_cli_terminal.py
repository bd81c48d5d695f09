"""What a person sees: `imctl incidents` and `imctl watch` in a real 80-column terminal
(a pseudo-terminal, so imctl finds a tty, its width and colours as it would in a shell)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from pathlib import Path

from tests.support.imctl import PYTHON, imctl_environment, run_imctl
from tests.support.processes import StartProcess

ROOT = Path(__file__).resolve().parents[2]
PAGING = str(ROOT / "examples" / "paging.yaml")
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LONG_TITLE = "p99 latency above 2s on gpt-4o for tenant acme in eu-west-1 since the deploy"


class Terminal:
    """A program running in an 80x24 pseudo-terminal, and what it has written to it."""

    def __init__(self, args: list[str], environment: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: size its terminal, then become imctl
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            os.execve(PYTHON, [PYTHON, "-m", "incident_manager.cli", *args], environment)
        self.raw = b""

    def read_until(self, text: str, timeout: float = 20.0) -> str:
        """Read until the screen shows `text` (escapes removed); the screen so far."""
        deadline = time.monotonic() + timeout
        while text not in self.screen():
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never appeared:\n{self.screen()}"
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    self.raw += os.read(self.fd, 65536)
                except OSError:  # the program exited and the terminal closed
                    assert text in self.screen(), f"{text!r} never appeared:\n{self.screen()}"
        return self.screen()

    def screen(self) -> str:
        """What was written, without colour escapes, lines as the terminal shows them."""
        return ESCAPES.sub("", self.raw.decode(errors="replace")).replace("\r\n", "\n")

    def press(self, keys: bytes) -> None:
        """Type `keys` (b"\\x03" is Ctrl-C)."""
        os.write(self.fd, keys)

    def exit_code(self, timeout: float = 10.0) -> int:
        """Wait for the program to end; its exit code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.raw += os.read(self.fd, 65536)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"still running:\n{self.screen()}")


def terminal_environment(config: Path, address: str) -> dict[str, str]:
    environment = imctl_environment(
        config, IMCTL_SERVER=address, IMCTL_USER="alice", TERM="xterm-256color"
    )
    # The terminal's own size must decide, as in a shell.
    for variable in ("COLUMNS", "LINES", "NO_COLOR"):
        environment.pop(variable, None)
    return environment


def test_incidents_fits_80_columns_with_the_title_cut_and_severity_in_colour(
    start_process: StartProcess, tmp_path: Path
) -> None:
    server = start_process(tmp_path / "db", "--paging-config", PAGING)
    environment = terminal_environment(tmp_path / "config", server.address)
    sent = []
    for title, severity in ((LONG_TITLE, "P1"), ("prompt injection", "P0")):
        result = run_imctl(
            "alert",
            "send",
            "--source",
            "llm-sentinel",
            "--title",
            title,
            "--severity",
            severity,
            "-o",
            "json",
            environment={**environment, "COLUMNS": "200"},
        )
        sent.append(json.loads(result.stdout)["incidentId"])
    run_imctl("ack", sent[0], environment=environment)

    terminal = Terminal(["incidents"], environment)
    screen = terminal.read_until("prompt injection")
    assert terminal.exit_code() == 0
    lines = [line for line in screen.splitlines() if line.strip()]
    print("\n".join(lines))  # the captured screen, shown with -s or on failure
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["ID", "SEV", "STATE", "TITLE", "SOURCE", "ALERTS", "AGE", "WHO"]
    p0, p1 = lines[1], lines[2]
    assert sent[1][:12] in p0 and "P0" in p0 and "detected" in p0
    assert sent[0][:12] in p1 and "p99 latency above" in p1 and "…" in p1 and LONG_TITLE not in p1
    assert "✓alice" in p1, "who acknowledged it"
    assert b"\x1b[" in terminal.raw, "severity is coloured on a terminal"


def test_watch_in_a_terminal_prints_one_line_per_event_and_ctrl_c_exits_0(
    start_process: StartProcess, tmp_path: Path
) -> None:
    server = start_process(tmp_path / "db", "--paging-config", PAGING)
    environment = terminal_environment(tmp_path / "config", server.address)
    terminal = Terminal(["watch"], environment)
    time.sleep(1.0)  # let it subscribe; events before that are replayed anyway
    result = run_imctl(
        "alert",
        "send",
        "--source",
        "llm-shield",
        "--title",
        "prompt injection",
        "--severity",
        "P0",
        "-o",
        "json",
        environment={**environment, "COLUMNS": "200"},
    )
    incident_id = json.loads(result.stdout)["incidentId"]
    screen = terminal.read_until("escalated")
    print(screen)
    created = next(line for line in screen.splitlines() if "created" in line)
    assert incident_id[:12] in created and "P0" in created and "prompt injection" in created
    assert re.match(r"\d\d:\d\d:\d\d ", created), created
    events = [line for line in screen.splitlines() if incident_id[:12] in line]
    assert all(len(line) <= 80 for line in events), events
    terminal.press(b"\x03")
    assert terminal.exit_code() == 0
    assert "Traceback" not in terminal.screen()
