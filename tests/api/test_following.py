"""Channels follow an incident's life end to end: a real server wired by the bootstrap, on
SQLite, paging the local PagerDuty and Slack fakes (tests/support/services.py); and a
receiver that says 410 disables its channel until the next reload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc
from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from generated.incident_manager.v1 import paging_service_pb2_grpc as paging_grpc
from incident_manager.bootstrap import start_server
from incident_manager.config import Settings
from incident_manager.entrypoints.metrics import collect
from incident_manager.entrypoints.server import IncidentServer
from tests.support import alert, eventually
from tests.support.services import ROUTING_KEY, Fake, fake_pagerduty, fake_slack, text_answer

STATE = paging_pb2.NotificationState
DISABLED = 'incident_manager_channel_disabled{channel="ops-slack"}'


def paging_file(pagerduty_url: str) -> str:
    return f"""\
channels:
  - id: pd-main
    type: pagerduty
    routing_key_env: PD_ROUTING_KEY
    url: {pagerduty_url}
    timeout: 2s
  - id: ops-slack
    type: slack
    url_env: SLACK_OPS_URL
    timeout: 2s
    on: [paged, acknowledged, resolved]
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{{channel: pd-main}}, {{channel: ops-slack}}]
routes:
  - policy: default
"""


@dataclass
class Following:
    server: IncidentServer
    pagerduty: Fake
    slack: Fake
    incidents: service_grpc.IncidentServiceAsyncStub
    ingestion: ingestion_grpc.AlertIngestionServiceAsyncStub
    paging: paging_grpc.PagingServiceAsyncStub

    async def fire(self, title: str) -> str:
        answer = await self.ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(alert=alert(title=title))
        )
        return answer.ack.incident_id

    async def ledger(self, incident_id: str) -> list[paging_pb2.Notification]:
        answer = await self.paging.ListNotifications(
            paging_pb2.ListNotificationsRequest(incident_id=incident_id)
        )
        return list(answer.notifications)

    async def settled(self, incident_id: str, count: int) -> list[paging_pb2.Notification]:
        """The ledger once it has `count` entries, none still on its way."""

        async def probe() -> list[paging_pb2.Notification] | None:
            rows = await self.ledger(incident_id)
            done = len(rows) == count and all(
                r.state != STATE.NOTIFICATION_STATE_PENDING for r in rows
            )
            return rows if done else None

        return await eventually(probe, what=f"{count} finished deliveries of {incident_id}")

    def metric(self, name: str) -> float | None:
        return collect(self.server.metrics.registry).get(name)


@asynccontextmanager
async def following(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Following]:
    async with fake_pagerduty() as pagerduty, fake_slack() as slack:
        monkeypatch.setenv("PD_ROUTING_KEY", ROUTING_KEY)
        monkeypatch.setenv("SLACK_OPS_URL", slack.url)
        config = tmp_path / "paging.yaml"
        config.write_text(paging_file(pagerduty.url))
        server = await start_server(
            Settings(
                listen="127.0.0.1:0",
                metrics_listen="off",
                database=str(tmp_path / "im.db"),
                paging_config=str(config),
            )
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield Following(
                server,
                pagerduty,
                slack,
                service_grpc.IncidentServiceStub(channel),
                ingestion_grpc.AlertIngestionServiceStub(channel),
                paging_grpc.PagingServiceStub(channel),
            )
        finally:
            await channel.close()
            await server.stop(0)


def _actions(fake: Fake) -> list[tuple[str, str]]:
    return [(r["event_action"], r["dedup_key"]) for r in fake.requests]


def _titles(fake: Fake) -> list[Any]:
    return [r["attachments"][0]["blocks"][0]["text"]["text"] for r in fake.requests]


async def test_pagerduty_hears_trigger_acknowledge_and_resolve_with_one_dedup_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with following(tmp_path, monkeypatch) as f:
        incident_id = await f.fire("GPU node gpu-1 down")
        await f.settled(incident_id, 2)
        assert _actions(f.pagerduty) == [("trigger", incident_id)]

        await f.incidents.AcknowledgeIncident(
            service_pb2.AcknowledgeIncidentRequest(id=incident_id, actor="alice")
        )
        await f.settled(incident_id, 4)
        assert _actions(f.pagerduty) == [("trigger", incident_id), ("acknowledge", incident_id)]

        await f.incidents.ResolveIncident(
            service_pb2.ResolveIncidentRequest(
                id=incident_id,
                method=incident_pb2.RESOLUTION_METHOD_MANUAL,
                root_cause="bad driver",
                resolved_by="bob",
            )
        )
        rows = await f.settled(incident_id, 6)
        assert _actions(f.pagerduty) == [
            ("trigger", incident_id),
            ("acknowledge", incident_id),
            ("resolve", incident_id),
        ]
        assert f.pagerduty.problems == [] and f.slack.problems == []
        assert [(r.channel_id, r.reason, r.state) for r in rows] == [
            ("pd-main", "new incident", STATE.NOTIFICATION_STATE_SENT),
            ("ops-slack", "new incident", STATE.NOTIFICATION_STATE_SENT),
            ("pd-main", "acknowledged by alice", STATE.NOTIFICATION_STATE_SENT),
            ("ops-slack", "acknowledged by alice", STATE.NOTIFICATION_STATE_SENT),
            ("pd-main", "resolved by bob", STATE.NOTIFICATION_STATE_SENT),
            ("ops-slack", "resolved by bob", STATE.NOTIFICATION_STATE_SENT),
        ]
        assert _titles(f.slack) == [
            "[P2] GPU node gpu-1 down",
            "[P2] Acknowledged: GPU node gpu-1 down",
            "[P2] Resolved: GPU node gpu-1 down",
        ]
        incident = (
            await f.incidents.GetIncident(service_pb2.GetIncidentRequest(id=incident_id))
        ).incident
        told = [
            e.message
            for e in incident.timeline
            if e.type == incident_pb2.EVENT_TYPE_NOTIFICATION_SENT
        ]
        assert "told channel pd-main the incident was acknowledged" in told
        assert "told channel ops-slack the incident was resolved" in told


async def test_a_reopened_incident_triggers_pagerduty_again_under_the_same_dedup_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with following(tmp_path, monkeypatch) as f:
        incident_id = await f.fire("GPU node gpu-5 down")
        await f.settled(incident_id, 2)
        await f.incidents.ResolveIncident(
            service_pb2.ResolveIncidentRequest(
                id=incident_id, method=incident_pb2.RESOLUTION_METHOD_MANUAL, resolved_by="bob"
            )
        )
        await f.settled(incident_id, 4)
        await f.incidents.UpdateIncident(
            service_pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(
                    id=incident_id, state=incident_pb2.INCIDENT_STATE_DETECTED
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["state"]),
                actor="carol",
            )
        )
        # pd-main is told (reopened: a trigger), then level 1 pages both channels again;
        # ops-slack does not follow reopening, so it only gets the new page.
        rows = await f.settled(incident_id, 7)
        assert [(r.channel_id, r.reason) for r in rows[4:]] == [
            ("pd-main", "reopened"),
            ("pd-main", "incident reopened"),
            ("ops-slack", "incident reopened"),
        ]
        assert _actions(f.pagerduty) == [
            ("trigger", incident_id),
            ("resolve", incident_id),
            ("trigger", incident_id),
            ("trigger", incident_id),
        ]
        assert f.pagerduty.problems == [] and f.slack.problems == []


async def test_a_slack_channel_that_answers_410_is_disabled_until_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with following(tmp_path, monkeypatch) as f:
        f.slack.then(text_answer(410, "channel_is_archived"))
        first = await f.fire("GPU node gpu-2 down")
        rows = await f.settled(first, 2)
        slack_row = next(r for r in rows if r.channel_id == "ops-slack")
        assert slack_row.state == STATE.NOTIFICATION_STATE_FAILED
        assert "archived" in slack_row.last_error
        assert f.metric(DISABLED) == 1
        assert len(f.slack.requests) == 1

        second = await f.fire("GPU node gpu-3 down")
        rows = await f.settled(second, 2)
        slack_row = next(r for r in rows if r.channel_id == "ops-slack")
        assert slack_row.state == STATE.NOTIFICATION_STATE_FAILED
        assert slack_row.last_error.startswith(
            "channel ops-slack is disabled: the receiver said HTTP 410"
        )
        assert slack_row.last_error.endswith("fix it and reload the paging configuration (SIGHUP)")
        assert len(f.slack.requests) == 1, "a disabled channel's receiver is not called"
        assert len(f.pagerduty.requests) == 2, "other channels go on"

        assert f.server.reload_paging()
        third = await f.fire("GPU node gpu-4 down")
        rows = await f.settled(third, 2)
        assert {r.state for r in rows} == {STATE.NOTIFICATION_STATE_SENT}
        assert len(f.slack.requests) == 2
        assert f.metric(DISABLED) == 0
