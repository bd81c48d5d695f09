"""Log lines are JSON objects on stderr, written by a background thread."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
from collections.abc import Iterator

import pytest

from incident_manager import logs


@pytest.fixture
def output() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def configured(output: io.StringIO) -> Iterator[logging.handlers.QueueListener]:
    """logs.configure() for one test; the logging module's global state is restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_flags = {
        name: getattr(logging, name)
        for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")
    }
    listener = logs.configure("INFO", output)
    yield listener
    listener.stop()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, value in saved_flags.items():
        setattr(logging, name, value)


def test_a_record_with_extras_and_a_traceback_is_one_json_line(
    configured: logging.handlers.QueueListener, output: io.StringIO
) -> None:
    log = logging.getLogger("incident_manager.rpc")
    try:
        raise ValueError("boom")
    except ValueError:
        log.error("call %s failed", "GetIncident", exc_info=True, extra={"incident_id": "inc_1"})
    log.debug("not at INFO")
    configured.stop()  # the writer thread writes everything queued
    lines = output.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "call GetIncident failed"
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "incident_manager.rpc"
    assert entry["incident_id"] == "inc_1"
    assert "ValueError: boom" in entry["exception"]


def test_a_plain_message_goes_through_the_log_writer_after_the_lines_before_it(
    configured: logging.handlers.QueueListener, output: io.StringIO
) -> None:
    log = logging.getLogger("incident_manager")
    log.error("cannot listen on 127.0.0.1:9000")
    logs.say("incident-manager: cannot listen on 127.0.0.1:9000")
    configured.stop()
    first, second = output.getvalue().splitlines()
    assert json.loads(first)["message"] == "cannot listen on 127.0.0.1:9000"
    assert second == "incident-manager: cannot listen on 127.0.0.1:9000"


def test_before_logs_are_configured_a_plain_message_is_printed_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "_writer", None)
    logs.say("incident-manager: error: unrecognized arguments: --lisen")
    assert capsys.readouterr().err == "incident-manager: error: unrecognized arguments: --lisen\n"
