"""What a new user reads when the server cannot start: one clear message, never a usage dump,
a grpc C-core line, or a message spliced into a JSON log line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PREFIX = "incident-manager: "


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without INCIDENT_MANAGER_* or GRPC_VERBOSITY leaking in."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("INCIDENT_MANAGER_") and k != "GRPC_VERBOSITY"
    }
    return {**kept, "INCIDENT_MANAGER_METRICS_LISTEN": "off", **variables}


def run_server(*args: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """`python -m incident_manager ARGS`, expected to stop by itself."""
    return subprocess.run(
        [sys.executable, "-m", "incident_manager", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=environment(**variables),
        stdin=subprocess.DEVNULL,
    )


def plain_lines(stderr: str) -> list[str]:
    """The lines for people; every other line must be one whole JSON log record."""
    plain = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            json.loads(line)  # a plain message spliced in would break it
        else:
            assert line.startswith(PREFIX), f"neither JSON nor our message: {line!r}\n{stderr}"
            plain.append(line)
    return plain


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 that something else is listening on."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        yield squatter.getsockname()[1]


def test_a_taken_grpc_port_prints_our_message_alone_without_grpc_core_lines(
    tmp_path: Path, taken_port: int
) -> None:
    result = run_server("--listen", f"127.0.0.1:{taken_port}", "--database", "x.db", cwd=tmp_path)

    assert result.returncode == 2
    assert "add_port.cc" not in result.stderr, result.stderr
    [message] = plain_lines(result.stderr)
    assert f"cannot listen on 127.0.0.1:{taken_port}" in message
    assert "--listen" in message


def test_a_taken_metrics_port_stops_the_server_with_exit_code_2_naming_its_flag(
    tmp_path: Path, taken_port: int
) -> None:
    result = run_server(
        "--listen",
        "127.0.0.1:0",
        "--database",
        "x.db",
        cwd=tmp_path,
        INCIDENT_MANAGER_METRICS_LISTEN=f"127.0.0.1:{taken_port}",
    )

    assert result.returncode == 2
    [message] = plain_lines(result.stderr)
    assert f"cannot listen on 127.0.0.1:{taken_port} for metrics" in message
    assert "--metrics-listen off" in message


def test_the_message_never_lands_inside_a_log_line(tmp_path: Path) -> None:
    # The plain print raced the log writer thread in about half the runs;
    # a few runs catch a race that wins that often.
    for _ in range(5):
        result = run_server("--listen", "127.0.0.1:0", "--database", str(tmp_path), cwd=tmp_path)
        assert result.returncode == 2
        [message] = plain_lines(result.stderr)
        errors = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
        assert [e["message"] for e in errors if e["level"] == "ERROR"] == [
            message.removeprefix(PREFIX)
        ]


def test_a_directory_given_as_the_database_says_so_and_names_a_file_to_use(
    tmp_path: Path,
) -> None:
    result = run_server("--listen", "127.0.0.1:0", "--database", str(tmp_path), cwd=tmp_path)

    assert result.returncode == 2
    [message] = plain_lines(result.stderr)
    assert f"cannot open the database {str(tmp_path)!r}: it is a directory" in message
    assert str(tmp_path / "incident-manager.db") in message
    assert "nothing was changed" not in message, "that is what a client is told"


def test_a_database_under_a_file_says_which_part_of_the_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a directory\n")
    database = tmp_path / "notes.txt" / "data" / "incidents.db"

    result = run_server("--listen", "127.0.0.1:0", "--database", str(database), cwd=tmp_path)

    assert result.returncode == 2
    [message] = plain_lines(result.stderr)
    assert f"{str(tmp_path / 'notes.txt')!r} is a file, not a directory" in message
    assert "--database" in message


def test_a_mistyped_flag_prints_the_error_and_the_nearest_flag_not_the_usage(
    tmp_path: Path,
) -> None:
    result = run_server("--dedup-windw", "5m", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "incident-manager: error: unrecognized arguments: --dedup-windw 5m",
        "incident-manager: did you mean --dedup-window? `incident-manager --help` lists every flag",
    ]


def test_a_bad_value_names_its_flag_once(tmp_path: Path) -> None:
    result = run_server("--dedup-window", "banana", cwd=tmp_path)

    assert result.returncode == 2
    error, hint = result.stderr.splitlines()
    assert error.count("--dedup-window") == 1, error
    assert "'banana' is not a duration" in error
    assert "--help" in hint


def test_help_shows_durations_as_they_are_written(tmp_path: Path) -> None:
    result = run_server("--help", cwd=tmp_path)

    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "INCIDENT_MANAGER_DEDUP_WINDOW; default 15m)" in text
    assert "INCIDENT_MANAGER_SHUTDOWN_GRACE; default 10s)" in text
    assert "0:15:00" not in text and "0:00:10" not in text
