"""The paging file of a running server process: SIGHUP applies a good one at once and
refuses a broken one, naming the file, the line and the key path, with the old one
kept in force; a server started with a broken one exits 2 with the same kind of message.

Pages go to real webhook receivers: whichever receiver gets the next page shows which
configuration is in force.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_pb2
from tests.support import alert, eventually, free_port
from tests.support.hooks import (
    SECRET,
    SECRET_ENV,
    TimedReceiver,
    notifications,
    paging_file,
    receiver_thread,
)
from tests.support.processes import (
    CALL_TIMEOUT,
    SERVING,
    Client,
    Launch,
    ServerProcess,
    StartProcess,
    server_environment,
)

REFUSED = "SIGHUP: the paging configuration was NOT reloaded; the previous one stays in force"
APPLIED = "SIGHUP: paging configuration reloaded"


@pytest.fixture
def receivers() -> Iterator[tuple[TimedReceiver, TimedReceiver]]:
    """Two receivers: the first file's, and the one a reload moves the pages to."""
    with receiver_thread() as first, receiver_thread() as second:
        yield first, second


def line_of(text: str, fragment: str) -> int:
    """The number (from 1) of the first line of `text` that holds `fragment`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if fragment in line)


def log_messages(server: ServerProcess, starting: str) -> list[str]:
    """The messages of the server's JSON log lines that start with `starting`."""
    messages = []
    for line in server.stderr().splitlines():
        if line.startswith("{"):
            message = str(json.loads(line).get("message", ""))
            if message.startswith(starting):
                messages.append(message)
    return messages


def fire(client: Client, name: str) -> str:
    """Fire an alert about a new problem; returns the id of the incident it opened."""
    ack = client.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(
            alert=alert(id=f"reload-{name}", title=f"reload test: {name}")
        ),
        timeout=CALL_TIMEOUT,
    ).ack
    assert ack.status == alert_pb2.ACK_STATUS_ACCEPTED, ack
    return ack.incident_id


def pages_of(receiver: TimedReceiver) -> list[str]:
    """The incidents the receiver was paged about, in order."""
    return [hit.incident_id for hit in receiver.seen()]


def assert_serving(server: ServerProcess, client: Client) -> None:
    assert server.popen.poll() is None, server.stderr()
    answer = client.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
    assert answer.status == SERVING
    assert "Traceback" not in server.stderr()


@pytest.mark.timeout(60)
def test_sighup_refuses_a_broken_file_keeping_the_old_one_and_applies_a_good_one(
    start_process: StartProcess,
    tmp_path: Path,
    receivers: tuple[TimedReceiver, TimedReceiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = receivers
    monkeypatch.setenv(SECRET_ENV, SECRET)  # the server process inherits it
    config = tmp_path / "paging.yaml"
    good = paging_file([("first", first.url_for("first"))])
    config.write_text(good)
    # INFO, to see the reload applied; later flags win over start_process's WARNING.
    server = start_process(
        tmp_path / "im.db", "--paging-config", str(config), "--log-level", "INFO"
    )
    client = server.client()
    before = fire(client, "before")
    eventually(lambda: pages_of(first) == [before], what="the first receiver paged")

    broken = good.replace("after: 0s", "after: soon")
    config.write_text(broken)
    server.signal(signal.SIGHUP)
    (refusal,) = eventually(
        lambda: log_messages(server, REFUSED), what=lambda: f"the refusal in:\n{server.stderr()}"
    )
    assert (
        f"{config}:{line_of(broken, 'after: soon')}: escalation_policies[0].levels[0].after: "
        "'soon' is not a duration" in refusal
    ), refusal
    assert_serving(server, client)
    # The old configuration is still in force: the next page goes to the first receiver.
    kept = fire(client, "while-broken")
    eventually(lambda: pages_of(first) == [before, kept], what="the first receiver paged again")

    config.write_text(
        paging_file(
            [("first", first.url_for("first")), ("second", second.url_for("second"))],
            policy_channel="second",
        )
    )
    server.signal(signal.SIGHUP)
    (applied,) = eventually(
        lambda: log_messages(server, APPLIED), what=lambda: f"the reload in:\n{server.stderr()}"
    )
    after = fire(client, "after")
    eventually(lambda: pages_of(second) == [after], what="the second receiver paged")
    assert pages_of(first) == [before, kept]
    (row,) = notifications(client.channel, after)
    assert (row.channel_id, row.attempts) == ("second", 1)
    assert all(hit.signed for hit in [*first.seen(), *second.seen()])
    assert_serving(server, client)
    assert len(log_messages(server, REFUSED)) == 1
    print(f"refused: {refusal!r}; then {applied!r}")


def test_a_server_started_with_a_broken_paging_file_exits_2_naming_each_mistake(
    launch: Launch, tmp_path: Path
) -> None:
    config = tmp_path / "paging.yaml"
    broken = (
        paging_file([("hook", "http://127.0.0.1:9/hook")])
        .replace("notify: [{channel: hook}]", "notify: [{channel: pager}]")
        .replace("policy: page-once", "policy: page-twice")
    )
    config.write_text(broken)
    address = f"127.0.0.1:{free_port()}"
    server = launch(
        [
            "--listen",
            address,
            "--database",
            str(tmp_path / "im.db"),
            "--paging-config",
            str(config),
        ],
        address=address,
        environment=server_environment(**{SECRET_ENV: SECRET}),
        wait=False,
    )
    assert server.wait_for_exit(timeout=30) == 2
    stderr = server.stderr()
    assert "Traceback" not in stderr
    # Besides its JSON log line, the server says it in plain words: what, then each mistake.
    said = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert said == [
        "incident-manager: the paging configuration cannot be used (--paging-config):",
        f"{config}:{line_of(broken, 'channel: pager')}: "
        "escalation_policies[0].levels[0].notify[0].channel: no channel has the id 'pager';"
        " expected one of hook",
        f"{config}:{line_of(broken, 'policy: page-twice')}: routes[0].policy: "
        "no escalation policy has the id 'page-twice' (did you mean 'page-once'?);"
        " expected one of page-once",
    ], stderr
