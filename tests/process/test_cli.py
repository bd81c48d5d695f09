"""imctl against a real server process on a temporary SQLite database with the sample
paging configuration: every command, its table and JSON output (content, not spacing),
each failure's message and exit code, contexts and environment precedence."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from generated.incident_manager.v1 import incident_pb2, paging_service_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from tests.support.docs import README, code_blocks
from tests.support.imctl import Result, imctl_environment, run_imctl
from tests.support.ports import free_port
from tests.support.processes import PYTHON, ServerProcess, StartProcess

ROOT = Path(__file__).resolve().parents[2]
PAGING = str(ROOT / "examples" / "paging.yaml")

Imctl = Callable[..., Result]


@pytest.fixture
def server(start_process: StartProcess, tmp_path: Path) -> ServerProcess:
    """A server paging with examples/paging.yaml (its deliveries fail and are retried)."""
    return start_process(tmp_path / "incidents.db", "--paging-config", PAGING)


@pytest.fixture
def imctl(server: ServerProcess, tmp_path: Path) -> Imctl:
    """Run imctl against `server`, as user alice, with its own (empty) config directory."""

    def run(*args: str, stdin: str | None = None, **variables: str) -> Result:
        environment = imctl_environment(
            tmp_path / "config", IMCTL_SERVER=server.address, IMCTL_USER="alice", **variables
        )
        return run_imctl(*args, environment=environment, stdin=stdin)

    return run


def ok(result: Result) -> Result:
    assert result.code == 0, str(result)
    assert "Traceback" not in result.stderr, str(result)
    return result


def refused(result: Result, code: int, *words: str) -> str:
    """The one-line message of a failed run, checked for its exit code and `words`."""
    assert result.code == code, str(result)
    assert "Traceback" not in result.stderr, str(result)
    lines = result.stderr.strip().splitlines()
    message = lines[-1]
    for word in words:
        assert word in message, str(result)
    return message


def send(imctl: Imctl, title: str, severity: str, source: str = "llm-sentinel") -> str:
    """Send an alert with `imctl alert send`; the id of the incident it opened."""
    result = ok(
        imctl(
            "alert",
            "send",
            "--source",
            source,
            "--title",
            title,
            "--severity",
            severity,
            "-o",
            "json",
        )
    )
    ack = json.loads(result.stdout)
    assert ack["status"] == "ACK_STATUS_ACCEPTED", ack
    incident_id: str = ack["incidentId"]
    return incident_id


def test_incidents_lists_open_ones_most_severe_first_and_json_is_the_proto_mapping(
    imctl: Imctl, server: ServerProcess
) -> None:
    low = send(imctl, "agent offline", "P3", source="edge-agent")
    high = send(imctl, "prompt injection", "P0", source="llm-shield")
    done = send(imctl, "disk full", "P2")
    ok(imctl("resolve", done, "--root-cause", "log rotation was off"))

    table = ok(imctl("incidents")).stdout
    lines = table.splitlines()
    assert lines[0].split()[:7] == ["ID", "SEV", "STATE", "TITLE", "SOURCE", "ALERTS", "AGE"]
    assert "ASSIGNEES" in lines[0] and "ACK BY" in lines[0]
    rows = [line for line in lines[1:] if line.strip()]
    assert len(rows) == 2, table
    assert high[:12] in rows[0] and "P0" in rows[0] and "prompt injection" in rows[0]
    assert low[:12] in rows[1] and "edge-agent" in rows[1] and "detected" in rows[1]
    assert done[:12] not in table

    everything = ok(imctl("ls", "--all")).stdout
    assert done[:12] in everything and "resolved" in everything
    only_p0 = ok(imctl("ls", "--severity", "p0,P1")).stdout
    assert high[:12] in only_p0 and low[:12] not in only_p0

    answer = json_format.Parse(
        ok(imctl("incidents", "--all", "-o", "json")).stdout, service_pb2.ListIncidentsResponse()
    )
    assert {i.id for i in answer.incidents} == {low, high, done}
    assert answer.incidents[0].severity == incident_pb2.SEVERITY_P0
    as_yaml = yaml.safe_load(ok(imctl("ls", "-o", "yaml")).stdout)
    assert [i["id"] for i in as_yaml["incidents"]] == [high, low]
    assert server.client().get_incident(high).state == incident_pb2.INCIDENT_STATE_DETECTED


def test_incidents_follows_page_tokens_up_to_the_limit(imctl: Imctl) -> None:
    for number in range(5):
        send(imctl, f"replica {number} down", "P2")
    answer = json.loads(ok(imctl("ls", "--limit", "3", "-o", "json")).stdout)
    assert len(answer["incidents"]) == 3 and answer["nextPageToken"]
    table = ok(imctl("ls", "--limit", "3")).stdout
    assert "3 of 5" in table


def test_show_takes_a_unique_id_prefix_and_shows_timeline_notes_and_deliveries(
    imctl: Imctl,
) -> None:
    incident_id = send(imctl, "p99 latency above 2s on gpt-4o", "P1")
    ok(imctl("note", incident_id, "Rolled", "back", "the", "template"))
    ok(imctl("note", incident_id, "-", stdin="Paged the model team\n"))

    shown = ok(imctl("show", incident_id[4:12])).stdout
    assert incident_id in shown
    assert "p99 latency above 2s on gpt-4o" in shown
    assert "Timeline" in shown and "created" in shown and "escalated" in shown
    assert "ago" in shown and "UTC" not in shown and "+0000" in shown
    assert "alice: Rolled back the template" in shown
    assert "alice: Paged the model team" in shown
    assert "Deliveries" in shown and "channel ops-hook" in shown and "level 1/1" in shown

    as_json = json_format.Parse(
        ok(imctl("show", incident_id, "-o", "json")).stdout, incident_pb2.Incident()
    )
    assert as_json.id == incident_id
    assert [n.content for n in as_json.notes] == [
        "Rolled back the template",
        "Paged the model team",
    ]


def test_an_ambiguous_or_unknown_prefix_is_refused_with_the_reason(imctl: Imctl) -> None:
    send(imctl, "one", "P2")
    send(imctl, "two", "P2")
    refused(imctl("show", "inc_"), 2, "is the start of 2 incident ids")
    refused(imctl("show", "inc_zzzz"), 1, "not found (NOT_FOUND)")


def test_ack_assign_set_and_resolve_change_the_incident_as_the_server_sees_it(
    imctl: Imctl, server: ServerProcess
) -> None:
    first = send(imctl, "prompt injection", "P0", source="llm-shield")
    second = send(imctl, "agent offline", "P3", source="edge-agent")
    acked = ok(imctl("ack", first, second)).stdout
    assert f"acknowledged {first} by alice" in acked and second in acked
    ok(imctl("assign", first, "bob", "carol"))
    ok(imctl("assign", first, "carol", "--remove"))
    ok(imctl("set", first, "--state", "investigating", "--severity", "P1"))
    client = server.client()
    incident = client.get_incident(first)
    assert incident.acknowledged_by == "alice"
    assert list(incident.assignees) == ["bob"]
    assert incident.state == incident_pb2.INCIDENT_STATE_INVESTIGATING
    assert incident.severity == incident_pb2.SEVERITY_P1

    table = ok(imctl("ls")).stdout
    row = next(line for line in table.splitlines() if first[:12] in line)
    assert "investigating" in row and "bob" in row and "alice" in row

    resolved = ok(imctl("resolve", first, "--root-cause", "a bad prompt", "--notes", "rolled back"))
    assert "resolved" in resolved.stdout
    incident = client.get_incident(first)
    assert incident.resolution.root_cause == "a bad prompt"
    assert incident.resolution.method == incident_pb2.RESOLUTION_METHOD_MANUAL
    assert incident.resolution.resolved_by == "alice"
    refused(
        imctl("resolve", first, "--root-cause", "again"),
        1,
        "not possible now",
        "FAILED_PRECONDITION",
    )


def test_set_with_a_stale_etag_says_someone_else_changed_it(imctl: Imctl) -> None:
    incident_id = send(imctl, "answers in the wrong language", "P2")
    read = json.loads(ok(imctl("show", incident_id, "-o", "json")).stdout)
    ok(imctl("assign", incident_id, "bob"))  # someone else acts meanwhile
    message = refused(
        imctl("set", incident_id, "--severity", "P1", "--etag", read["etag"]),
        1,
        "changed by someone else (ABORTED)",
        "run the command again",
    )
    assert message.count("\n") == 0
    changed = json.loads(ok(imctl("show", incident_id, "-o", "json")).stdout)
    assert changed["severity"] == "SEVERITY_P2", "the stale change was not applied"


def test_usage_mistakes_exit_2_with_a_message(imctl: Imctl) -> None:
    refused(imctl("ls", "--severity", "P9"), 2, "--severity 'P9': choose one of P0, P1, P2, P3, P4")
    refused(imctl("silence", "add", "--comment", "x", "--for", "1h"), 2, "at least one of")
    refused(imctl("silence", "add", "--source", "a", "--comment", "x", "--for", "soon"), 2, "--for")
    assert imctl("resolve", "inc_1").code == 2  # click: --root-cause is missing
    assert imctl("frobnicate").code == 2
    refused(imctl("set", "inc_1"), 2, "say what to change")


def test_an_unreachable_server_exits_3_naming_it(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = run_imctl("ls", environment=imctl_environment(tmp_path, IMCTL_SERVER=address))
    refused(result, 3, f"cannot reach the server at {address}", "connection refused")


def test_tokens_and_roles_are_refused_in_words(start_process: StartProcess, tmp_path: Path) -> None:
    tokens = {}
    lines = []
    for principal, role in (("ci-bot", "ingest"), ("carol", "responder")):
        made = subprocess.run(
            [PYTHON, "-m", "incident_manager.tokens", "create", principal, role],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        fields = dict(line.split(": ", 1) for line in made.splitlines())
        tokens[principal] = fields["token"]
        lines.append(fields["tokens file line"])
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("\n".join(lines) + "\n")
    server = start_process(
        tmp_path / "db", "--tokens-file", str(tokens_file), "--paging-config", PAGING
    )
    environment = imctl_environment(tmp_path / "config", IMCTL_SERVER=server.address)

    refused(
        run_imctl("ls", environment=environment),
        1,
        "not authenticated (UNAUTHENTICATED)",
        "--token",
    )
    token_file = tmp_path / "carol.token"
    token_file.write_text(tokens["carol"] + "\n")
    sent = run_imctl(
        "alert",
        "send",
        "--source",
        "s",
        "--title",
        "t",
        "--severity",
        "P2",
        "-o",
        "json",
        "--token",
        tokens["ci-bot"],
        environment=environment,
    )
    incident_id = json.loads(ok(sent).stdout)["incidentId"]
    message = refused(
        run_imctl("ack", incident_id, "--token", tokens["ci-bot"], environment=environment),
        1,
        f"{server.address} refused: not allowed (PERMISSION_DENIED)",
        "ci-bot (ingest)",
        "responder",
    )
    assert "AcknowledgeIncident" in message
    acked = run_imctl("ack", incident_id, "--token-file", str(token_file), environment=environment)
    assert "by carol" in ok(acked).stdout, "with a token the server names the actor"
    refused(
        run_imctl("ls", "--token-file", str(tmp_path / "missing"), environment=environment),
        2,
        "cannot read the token file",
    )


def test_silences_can_be_added_listed_and_expired(imctl: Imctl) -> None:
    added = json.loads(
        ok(
            imctl(
                "silence",
                "add",
                "--source",
                "llm-shield",
                "--matcher",
                "region=eu",
                "--severity",
                "P0",
                "--for",
                "1h",
                "--comment",
                "known noisy detector",
                "-o",
                "json",
            )
        ).stdout
    )
    silence = json_format.ParseDict(added, paging_service_pb2.Silence())
    assert silence.state == paging_service_pb2.SILENCE_STATE_ACTIVE
    assert dict(silence.matchers.labels) == {"region": "eu"}
    assert silence.created_by == "alice"
    listed = ok(imctl("silence", "ls")).stdout
    assert (
        silence.id in listed and "known noisy detector" in listed and "source=llm-shield" in listed
    )
    expired = ok(imctl("silence", "expire", silence.id)).stdout
    assert f"silence {silence.id} expired" in expired
    assert silence.id not in ok(imctl("silence", "ls")).stdout
    assert "ended by alice" in ok(imctl("silence", "ls", "--all")).stdout
    refused(imctl("silence", "expire", silence.id), 1, "FAILED_PRECONDITION")


def test_oncall_override_and_route_test_answer_from_the_paging_configuration(imctl: Imctl) -> None:
    # A Tuesday at 10:00 in Berlin is within the primary layer's hours.
    at = "2026-03-03T10:00+01:00"
    before = json.loads(ok(imctl("oncall", "primary", "--at", at, "-o", "json")).stdout)
    assert before["scheduleId"] == "primary" and before["userId"] in ("alice", "bob")
    assert before["layer"] == 1
    text = ok(imctl("oncall", "primary", "--at", at)).stdout
    assert "primary:" in text and before["userId"] in text and "layer 1" in text

    made = ok(
        imctl(
            "override",
            "add",
            "--schedule",
            "primary",
            "--user",
            "bob",
            "--start",
            "2026-03-03T09:00+01:00",
            "--for",
            "8h",
            "--reason",
            "alice is out",
            "-o",
            "json",
        )
    )
    override_id = json.loads(made.stdout)["id"]
    covered = json.loads(ok(imctl("oncall", "primary", "--at", at, "-o", "json")).stdout)
    assert covered["userId"] == "bob" and covered["overrideId"] == override_id
    assert f"override {override_id}" in ok(imctl("oncall", "primary", "--at", at)).stdout
    refused(imctl("oncall", "nosuch"), 1, "NOT_FOUND")
    refused(imctl("oncall"), 2, "name a schedule")
    assert "primary" in ok(imctl("oncall", IMCTL_SCHEDULE="primary")).stdout

    plan = ok(
        imctl("route", "test", "--source", "llm-sentinel", "--severity", "P1", "--at", at)
    ).stdout
    assert "policy critical" in plan and "acknowledge within 30m" in plan
    assert "level 1, round 1" in plan and "level 2, round 1" in plan and "user bob" in plan
    fallback = json.loads(
        ok(
            imctl(
                "route", "test", "--source", "x", "--severity", "P4", "--label", "k=v", "-o", "json"
            )
        ).stdout
    )
    assert fallback["policyId"] == "default" and fallback["route"] == 3


def test_contexts_are_kept_in_the_config_file_and_flags_beat_environment_beat_context(
    server: ServerProcess, tmp_path: Path
) -> None:
    config_home = tmp_path / "xdg"
    dead = f"127.0.0.1:{free_port()}"
    plain = imctl_environment(config_home, IMCTL_USER="alice")

    ok(run_imctl("config", "set-context", "local", "--server", server.address, environment=plain))
    ok(
        run_imctl(
            "config", "set-context", "prod", "--server", dead, "--user", "bob", environment=plain
        )
    )
    written = tomllib.loads((config_home / "imctl" / "config.toml").read_text())
    assert written["current-context"] == "local"
    assert written["contexts"]["prod"] == {"server": dead, "user": "bob"}
    assert (config_home / "imctl" / "config.toml").stat().st_mode & 0o077 == 0

    ok(run_imctl("ls", environment=plain))  # the current context: local
    ok(run_imctl("config", "use-context", "prod", environment=plain))
    assert ok(run_imctl("config", "current-context", environment=plain)).stdout.strip() == "prod"
    assert "* prod" in ok(run_imctl("config", "get-contexts", environment=plain)).stdout
    refused(run_imctl("ls", environment=plain), 3, dead)
    # The environment beats the context ...
    ok(run_imctl("ls", environment={**plain, "IMCTL_SERVER": server.address}))
    # ... and a flag, before or after the command, beats the environment.
    with_dead_env = {**plain, "IMCTL_SERVER": dead}
    ok(run_imctl("ls", "--server", server.address, environment=with_dead_env))
    ok(run_imctl("--server", server.address, "ls", environment=with_dead_env))
    ok(run_imctl("--context", "local", "ls", environment=plain))
    ok(run_imctl("ls", environment={**plain, "IMCTL_CONTEXT": "local"}))
    refused(
        run_imctl("--context", "nosuch", "ls", environment=plain), 2, "no context named 'nosuch'"
    )
    # The context's user acts unless the environment names another.
    sent = run_imctl(
        "alert",
        "send",
        "--source",
        "s",
        "--title",
        "t",
        "--severity",
        "P2",
        "-o",
        "json",
        "--server",
        server.address,
        environment=plain,
    )
    incident_id = json.loads(ok(sent).stdout)["incidentId"]
    prod_as_local = {**plain, "IMCTL_SERVER": server.address}
    del prod_as_local["IMCTL_USER"]
    assert "by bob" in ok(run_imctl("ack", incident_id, environment=prod_as_local)).stdout
    (config_home / "imctl" / "config.toml").write_text("current-context = [")
    refused(run_imctl("ls", environment=plain), 2, "cannot read")


def test_completion_scripts_and_incident_ids_come_from_the_cli_library(imctl: Imctl) -> None:
    for shell in ("bash", "zsh", "fish"):
        assert "_IMCTL_COMPLETE" in ok(imctl("completion", shell)).stdout
    incident_id = send(imctl, "prompt injection", "P0")
    completed = imctl(_IMCTL_COMPLETE="bash_complete", COMP_WORDS="imctl show inc_", COMP_CWORD="2")
    assert incident_id in ok(completed).stdout


IMCTL_BLOCKS = [block for block in code_blocks(README, "sh") if "imctl " in block]


def test_every_readme_imctl_example_succeeds(
    imctl: Imctl, server: ServerProcess, tmp_path: Path
) -> None:
    assert IMCTL_BLOCKS, "the README's On call section has imctl examples"
    incident_id = send(imctl, "Answers in the wrong language for tenant acme", "P1")
    environment = imctl_environment(
        tmp_path / "config",
        IMCTL_USER="alice",
        INCIDENT=incident_id,
        PATH=f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}",
    )
    for block in IMCTL_BLOCKS:
        script = "set -euo pipefail\n" + block.replace("localhost:9000", server.address)
        done = subprocess.run(
            ["bash", "-c", script], env=environment, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"README example failed:\n{block}\n{done.stderr}"
        assert "Traceback" not in done.stderr
    incident = server.client().get_incident(incident_id)
    assert incident.acknowledged_by == "alice"
    assert incident.state == incident_pb2.INCIDENT_STATE_RESOLVED
