"""An automated action end to end in one process: a real server wired by the bootstrap, on
SQLite, whose paging file's jailbreak policy has a first level holding only an action; a
real HTTP receiver plays the LLM gateway's kill switch."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc
from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from generated.incident_manager.v1 import paging_service_pb2_grpc as paging_grpc
from incident_manager.bootstrap import start_server
from incident_manager.config import Settings
from tests.support import FakeClock, alert, eventually
from tests.support.receivers import verify_standard_webhook, webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"gateway-kill-switch-signing-key!").decode()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "paging-actions.yaml"


async def kill_switch(request: web.Request) -> web.StreamResponse:
    model = json.loads(await request.read())["model"]
    return web.json_response({"disabled": True, "model": model})


async def test_a_jailbreak_wave_runs_the_kill_switch_action_of_a_level_with_only_an_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_HOOK_SECRET", SECRET)
    async with webhook_receiver() as gateway:
        config = tmp_path / "paging.yaml"
        text = EXAMPLE.read_text(encoding="utf-8")
        config.write_text(
            text.replace("https://llm-gateway.example.com/admin/kill-switch", gateway.url)
        )
        gateway.then(kill_switch)
        server = await start_server(
            Settings(
                listen="127.0.0.1:0",
                metrics_listen="off",
                database=str(tmp_path / "im.db"),
                paging_config=str(config),
            ),
            clock=FakeClock(),
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            ingestion = ingestion_grpc.AlertIngestionServiceStub(channel)
            incidents = service_grpc.IncidentServiceStub(channel)
            pager = paging_grpc.PagingServiceStub(channel)
            submitted = await ingestion.SubmitAlert(
                ingestion_pb2.SubmitAlertRequest(
                    alert=alert(
                        source="llm-shield",
                        type=incident_pb2.INCIDENT_TYPE_SECURITY,
                        severity=incident_pb2.SEVERITY_P1,
                        title="Jailbreak wave on gpt-4o",
                        labels={"model": "gpt-4o"},
                    )
                )
            )
            incident_id = submitted.ack.incident_id

            async def executed() -> incident_pb2.Incident | None:
                answer = await incidents.GetIncident(service_pb2.GetIncidentRequest(id=incident_id))
                kinds = [e.type for e in answer.incident.timeline]
                return answer.incident if incident_pb2.EVENT_TYPE_ACTION_EXECUTED in kinds else None

            incident = await eventually(executed, what="the action's ACTION_EXECUTED event")
            ledger = await pager.ListNotifications(
                paging_pb2.ListNotificationsRequest(incident_id=incident_id)
            )
            plan = await pager.TestRoute(
                paging_pb2.TestRouteRequest(
                    source="llm-shield",
                    type=incident_pb2.INCIDENT_TYPE_SECURITY,
                    severity=incident_pb2.SEVERITY_P1,
                    labels={"model": "gpt-4o"},
                )
            )
        finally:
            await channel.close()
            await server.stop(0)
    (row,) = ledger.notifications
    assert (row.level, row.target_kind, row.target_id, row.channel_id, row.state) == (
        1,
        paging_pb2.TARGET_KIND_ACTION,
        "gateway-kill-switch",
        "gateway-kill-switch",
        paging_pb2.NOTIFICATION_STATE_SENT,
    )
    (request,) = gateway.received
    assert json.loads(request.body) == {"model": "gpt-4o", "reason": "Jailbreak wave on gpt-4o"}
    assert request.headers["webhook-id"] == row.id
    assert verify_standard_webhook(SECRET, request.headers, request.body)
    (event,) = [e for e in incident.timeline if e.type == incident_pb2.EVENT_TYPE_ACTION_EXECUTED]
    assert event.message == (
        'action gateway-kill-switch answered HTTP 200: {"disabled": true, "model": "gpt-4o"}'
    )
    assert (event.details["status_code"], event.details["outcome"]) == ("200", "SENT")
    escalated = [e for e in incident.timeline if e.type == incident_pb2.EVENT_TYPE_ESCALATED]
    assert escalated[0].details["targets"] == "action gateway-kill-switch"
    sent = [e for e in incident.timeline if e.type == incident_pb2.EVENT_TYPE_NOTIFICATION_SENT]
    assert sent == []  # an action ends in ACTION_EXECUTED; the people of level 2 wait 5m
    (planned,) = plan.levels[0].deliveries
    assert (plan.policy_id, planned.target_kind, planned.channel_id, planned.user_id) == (
        "jailbreak",
        paging_pb2.TARGET_KIND_ACTION,
        "gateway-kill-switch",
        "",
    )
