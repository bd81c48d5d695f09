"""Paging end to end in one process: a real server wired by the bootstrap, on SQLite, with
a real webhook receiver (aiohttp, checking Standard Webhooks signatures) and a real SMTP
server (aiosmtpd); the clock is the test's, so levels and timeouts come due on command."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc
from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from generated.incident_manager.v1 import paging_service_pb2_grpc as paging_grpc
from incident_manager.bootstrap import start_server
from incident_manager.config import Settings
from incident_manager.entrypoints.server import IncidentServer
from tests.support import FakeClock, alert, eventually, field_violations
from tests.support.receivers import (
    LoopbackController,
    Mailbox,
    Receiver,
    drop_connection,
    hang,
    status,
    verify_standard_webhook,
    webhook_receiver,
)

SECRET = "whsec_dGVzdC1zaWduaW5nLXNlY3JldC1vZi0zMi1ieXRlcyE="
# Tuesday 3 March 2026, 10:00 in Berlin: the third daily turn of [alice, bob] since the
# hand-off on 1 March at 09:00, so alice is on call.
TUESDAY_10_BERLIN = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
STATE = paging_pb2.NotificationState


def paging_file(hook_url: str, smtp_port: int) -> str:
    """The issue's sample configuration, pointed at this test's receivers."""
    sample = (Path(__file__).resolve().parents[2] / "examples" / "paging.yaml").read_text()
    return sample.replace(
        "url: http://127.0.0.1:8099/hook", f"url: {hook_url}\n    timeout: 1s"
    ).replace("port: 2525", f"port: {smtp_port}")


@dataclass
class Paging:
    server: IncidentServer
    clock: FakeClock
    hook: Receiver
    mailbox: Mailbox
    incidents: service_grpc.IncidentServiceAsyncStub
    ingestion: ingestion_grpc.AlertIngestionServiceAsyncStub
    paging: paging_grpc.PagingServiceAsyncStub

    def tick(self, **delta: float) -> None:
        """Move the clock and tell the worker, as a timer would."""
        self.clock.advance(**delta)
        assert self.server.worker is not None
        self.server.worker.wake()

    async def ledger(self, incident_id: str) -> list[paging_pb2.Notification]:
        answer = await self.paging.ListNotifications(
            paging_pb2.ListNotificationsRequest(incident_id=incident_id)
        )
        return list(answer.notifications)

    async def settled(self, incident_id: str, count: int) -> list[paging_pb2.Notification]:
        """The ledger once it has `count` entries and none is still being sent."""

        async def probe() -> list[paging_pb2.Notification] | None:
            rows = await self.ledger(incident_id)
            # Settled: delivered, given up on, or waiting to be retried after a failure.
            done = len(rows) == count and all(
                r.state != STATE.NOTIFICATION_STATE_PENDING or r.last_error for r in rows
            )
            return rows if done else None

        return await eventually(probe, what=f"{count} notifications for {incident_id}")

    async def fire(self, alert_id: str, severity: int = 2, source: str = "llm-sentinel") -> str:
        answer = await self.ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(
                alert=alert(
                    id=alert_id, title=f"GPU node {alert_id} down", severity=severity, source=source
                )
            )
        )
        return answer.ack.incident_id


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    controller = LoopbackController(box, hostname="127.0.0.1", port=0)
    controller.start()
    box.port = controller.port  # type: ignore[attr-defined]
    try:
        yield box
    finally:
        controller.stop()


@asynccontextmanager
async def paging_server(
    tmp_path: Path, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> AsyncIterator[Paging]:
    monkeypatch.setenv("OPS_HOOK_SECRET", SECRET)
    async with webhook_receiver() as hook:
        config = tmp_path / "paging.yaml"
        config.write_text(paging_file(hook.url, mailbox.port))  # type: ignore[attr-defined]
        clock = FakeClock(TUESDAY_10_BERLIN)
        server = await start_server(
            Settings(
                listen="127.0.0.1:0",
                metrics_listen="off",
                database=str(tmp_path / "im.db"),
                paging_config=str(config),
                **settings,
            ),
            clock=clock,
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        try:
            yield Paging(
                server,
                clock,
                hook,
                mailbox,
                service_grpc.IncidentServiceStub(channel),
                ingestion_grpc.AlertIngestionServiceStub(channel),
                paging_grpc.PagingServiceStub(channel),
            )
        finally:
            await channel.close()
            await server.stop(0)


@pytest.fixture
async def pager(
    tmp_path: Path, mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Paging]:
    async with paging_server(tmp_path, mailbox, monkeypatch) as running:
        yield running


def targets(rows: list[paging_pb2.Notification]) -> list[tuple[int, int, str, str]]:
    return [(r.level, r.round, r.channel_id, r.recipient) for r in rows]


async def test_a_p1_alert_pages_the_person_on_call_and_the_webhook_at_once(pager: Paging) -> None:
    incident_id = await pager.fire("gpu-1")
    rows = await pager.settled(incident_id, 2)
    assert targets(rows) == [(1, 1, "mail", "alice@example.com"), (1, 1, "ops-hook", "ops-hook")]
    assert [r.state for r in rows] == [STATE.NOTIFICATION_STATE_SENT] * 2
    assert [m.rcpt_tos for m in pager.mailbox.received] == [["alice@example.com"]]
    (request,) = pager.hook.received
    assert verify_standard_webhook(SECRET, request.headers, request.body)
    assert request.headers["webhook-id"] == rows[1].id
    body = json.loads(request.body)
    assert body["type"] == "incident.paged"
    assert body["data"]["incident"]["id"] == incident_id
    assert body["data"]["page"]["level"] == 1


async def test_level_two_comes_after_its_delay_and_nothing_after_an_acknowledgement(
    pager: Paging,
) -> None:
    incident_id = await pager.fire("gpu-2")
    await pager.settled(incident_id, 2)
    pager.tick(minutes=9)
    assert len(await pager.ledger(incident_id)) == 2
    pager.tick(minutes=1)
    rows = await pager.settled(incident_id, 3)
    assert targets(rows)[2] == (2, 1, "mail", "bob@example.com")
    acknowledged = await pager.incidents.AcknowledgeIncident(
        service_pb2.AcknowledgeIncidentRequest(id=incident_id, actor="alice")
    )
    assert acknowledged.incident.acknowledged_by == "alice"
    assert acknowledged.incident.state == incident_pb2.INCIDENT_STATE_TRIAGED
    pager.tick(minutes=25)  # round 2 would have started 20 minutes in
    await pager.settled(incident_id, 3)
    incident = (
        await pager.incidents.GetIncident(service_pb2.GetIncidentRequest(id=incident_id))
    ).incident
    kinds = [e.type for e in incident.timeline]
    assert kinds.count(incident_pb2.EVENT_TYPE_ESCALATED) == 2
    assert kinds.count(incident_pb2.EVENT_TYPE_NOTIFICATION_SENT) == 3
    assert incident_pb2.EVENT_TYPE_ACKNOWLEDGED in kinds


async def test_an_acknowledgement_that_times_out_pages_again_from_the_first_level(
    pager: Paging,
) -> None:
    incident_id = await pager.fire("gpu-3")
    await pager.settled(incident_id, 2)
    await pager.incidents.AcknowledgeIncident(
        service_pb2.AcknowledgeIncidentRequest(id=incident_id, actor="alice")
    )
    pager.tick(minutes=29)
    await pager.settled(incident_id, 2)
    pager.tick(minutes=2)
    rows = await pager.settled(incident_id, 4)
    assert targets(rows)[2:] == [
        (1, 1, "mail", "alice@example.com"),
        (1, 1, "ops-hook", "ops-hook"),
    ]
    assert rows[2].reason == "acknowledgement timed out"


async def test_unacknowledged_paging_repeats_the_levels_then_stops(pager: Paging) -> None:
    incident_id = await pager.fire("gpu-4")
    await pager.settled(incident_id, 2)
    count = 2
    # critical: levels at 0 and 10m, rounds 20 minutes apart, repeated twice.
    for expected in (3, 5, 6, 8, 9):
        pager.tick(minutes=10)
        rows = await pager.settled(incident_id, expected)
        count = len(rows)
    pager.tick(hours=2)
    rows = await pager.settled(incident_id, count)
    assert [(r.level, r.round) for r in rows] == [
        (1, 1), (1, 1), (2, 1), (1, 2), (1, 2), (2, 2), (1, 3), (1, 3), (2, 3)
    ]  # fmt: skip


async def test_resolving_stops_paging_at_once(pager: Paging) -> None:
    incident_id = await pager.fire("gpu-5")
    await pager.settled(incident_id, 2)
    await pager.incidents.ResolveIncident(
        service_pb2.ResolveIncidentRequest(
            id=incident_id,
            method=incident_pb2.RESOLUTION_METHOD_MANUAL,
            resolved_by="alice",
            root_cause="driver crash",
        )
    )
    pager.tick(hours=3)
    await pager.settled(incident_id, 2)
    assert len(pager.mailbox.received) == 1


async def test_a_silence_holds_paging_and_expiring_it_starts_paging(pager: Paging) -> None:
    end = Timestamp()
    end.FromDatetime(datetime(2026, 3, 3, 12, 0, tzinfo=UTC))
    silence = (
        await pager.paging.CreateSilence(
            paging_pb2.CreateSilenceRequest(
                silence=paging_pb2.Silence(
                    matchers=paging_pb2.SilenceMatchers(sources=["llm-sentinel"]),
                    end_time=end,
                    created_by="carol",
                    comment="GPU maintenance",
                )
            )
        )
    ).silence
    assert silence.state == paging_pb2.SILENCE_STATE_ACTIVE
    incident_id = await pager.fire("gpu-6")
    incident = (
        await pager.incidents.GetIncident(service_pb2.GetIncidentRequest(id=incident_id))
    ).incident
    assert incident.alert_count == 1  # the alert itself is stored as always

    async def held() -> bool:
        got = await pager.incidents.GetIncident(service_pb2.GetIncidentRequest(id=incident_id))
        return any(f"held by silence {silence.id}" in e.message for e in got.incident.timeline)

    await eventually(held, what="the timeline to say which silence holds it")
    assert await pager.ledger(incident_id) == []
    expired = await pager.paging.ExpireSilence(
        paging_pb2.ExpireSilenceRequest(id=silence.id, actor="carol")
    )
    assert expired.silence.state == paging_pb2.SILENCE_STATE_EXPIRED
    rows = await pager.settled(incident_id, 2)
    assert [r.state for r in rows] == [STATE.NOTIFICATION_STATE_SENT] * 2
    assert rows[0].reason == f"silence {silence.id} ended"


async def test_failing_receivers_are_retried_or_given_up_on_as_they_answer(
    pager: Paging,
) -> None:
    pager.hook.then(status(500), status(429, **{"Retry-After": "30"}))
    retried = await pager.fire("gpu-7")
    rows = await pager.settled(retried, 2)
    assert rows[1].state == STATE.NOTIFICATION_STATE_PENDING
    assert rows[1].attempts == 1 and "500" in rows[1].last_error
    first_error = rows[1].last_error
    pager.tick(seconds=30)  # the first wait is 5-10 s
    rows = await eventually(
        lambda: _attempted(pager, retried, 2, first_error),
        what="a second attempt after the 500",
    )
    assert "429" in rows[1].last_error
    pager.tick(seconds=31)
    rows = await eventually(lambda: _sent(pager, retried), what="the third attempt to succeed")
    assert rows[1].attempts == 3
    assert len({r.headers["webhook-id"] for r in pager.hook.received}) == 1
    pager.hook.then(status(400))
    refused = await pager.fire("gpu-8")
    rows = await eventually(lambda: _failed(pager, refused), what="a 400 to be final")
    assert rows[1].attempts == 1 and "400" in rows[1].last_error
    health = await pager.ingestion.HealthCheck(ingestion_pb2.HealthCheckRequest())
    assert health.status == ingestion_pb2.SERVING_STATUS_SERVING


async def test_a_receiver_that_times_out_or_drops_the_connection_is_tried_again(
    pager: Paging,
) -> None:
    pager.hook.then(hang(3), drop_connection())
    incident_id = await pager.fire("gpu-11")
    rows = await eventually(
        lambda: _attempted(pager, incident_id, 1), what="the first attempt to time out", timeout=15
    )
    assert rows[1].state == STATE.NOTIFICATION_STATE_PENDING
    assert rows[1].last_error == "no answer within 1s"
    pager.tick(seconds=30)
    rows = await eventually(
        lambda: _attempted(pager, incident_id, 2, "no answer within 1s"),
        what="the second attempt to lose its connection",
    )
    assert rows[1].state == STATE.NOTIFICATION_STATE_PENDING
    pager.tick(seconds=60)
    rows = await eventually(lambda: _sent(pager, incident_id), what="the third attempt to land")
    assert rows[1].attempts == 3
    assert len({r.headers["webhook-id"] for r in pager.hook.received}) == 1
    assert rows[0].state == STATE.NOTIFICATION_STATE_SENT  # the email went out meanwhile


async def _attempted(pager: Paging, incident_id: str, attempts: int, after_error: str = "") -> Any:
    """The ledger once the webhook row's attempt `attempts` has its outcome recorded.

    A claim counts the attempt before it is sent, while `last_error` still holds the
    previous attempt's error: `after_error` is that error, so it must have changed.
    """
    rows = await pager.ledger(incident_id)
    if len(rows) < 2 or rows[1].attempts != attempts:
        return None
    error = rows[1].last_error
    return rows if error and error != after_error else None


async def _sent(pager: Paging, incident_id: str) -> Any:
    rows = await pager.ledger(incident_id)
    return rows if len(rows) > 1 and rows[1].state == STATE.NOTIFICATION_STATE_SENT else None


async def _failed(pager: Paging, incident_id: str) -> Any:
    rows = await pager.ledger(incident_id)
    return rows if len(rows) > 1 and rows[1].state == STATE.NOTIFICATION_STATE_FAILED else None


async def test_test_route_and_get_on_call_answer_without_paging(pager: Paging) -> None:
    plan = await pager.paging.TestRoute(
        paging_pb2.TestRouteRequest(
            source="llm-shield",
            type=incident_pb2.INCIDENT_TYPE_SECURITY,
            severity=incident_pb2.SEVERITY_P3,
        )
    )
    assert (plan.matched, plan.route, plan.policy_id) == (True, 2, "critical")
    assert [(lv.level, lv.round) for lv in plan.levels] == [
        (1, 1), (2, 1), (1, 2), (2, 2), (1, 3), (2, 3)
    ]  # fmt: skip
    first = plan.levels[0].deliveries
    assert [(d.user_id, d.channel_id) for d in first] == [("alice", "mail"), ("", "ops-hook")]
    assert plan.ack_timeout.seconds == 30 * 60
    on_call = await pager.paging.GetOnCall(paging_pb2.GetOnCallRequest(schedule_id="primary"))
    assert (on_call.user_id, on_call.user_name, on_call.layer) == ("alice", "Alice Ng", 1)
    assert on_call.end_time.ToDatetime(UTC) == datetime(2026, 3, 3, 17, 0, tzinfo=UTC)
    assert pager.hook.received == [] and pager.mailbox.received == []


async def test_an_override_changes_who_is_paged(pager: Paging) -> None:
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(datetime(2026, 3, 3, 8, 0, tzinfo=UTC))
    end.FromDatetime(datetime(2026, 3, 3, 20, 0, tzinfo=UTC))
    made = await pager.paging.CreateOverride(
        paging_pb2.CreateOverrideRequest(
            override=paging_pb2.Override(
                schedule_id="primary",
                user_id="bob",
                start_time=start,
                end_time=end,
                created_by="alice",
                reason="dentist",
            )
        )
    )
    on_call = await pager.paging.GetOnCall(paging_pb2.GetOnCallRequest(schedule_id="primary"))
    assert (on_call.user_id, on_call.override_id, on_call.layer) == ("bob", made.override.id, 0)
    incident_id = await pager.fire("gpu-9")
    rows = await pager.settled(incident_id, 2)
    assert targets(rows)[0] == (1, 1, "mail", "bob@example.com")
    listed = await pager.paging.ListOverrides(paging_pb2.ListOverridesRequest())
    assert [o.id for o in listed.overrides] == [made.override.id]
    await pager.paging.DeleteOverride(paging_pb2.DeleteOverrideRequest(id=made.override.id))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await pager.paging.DeleteOverride(paging_pb2.DeleteOverrideRequest(id=made.override.id))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_paging_mistakes_get_clear_errors(pager: Paging) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await pager.paging.GetOnCall(paging_pb2.GetOnCallRequest(schedule_id="nope"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "schedule 'nope'" in (unknown.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as everything:
        await pager.paging.CreateSilence(
            paging_pb2.CreateSilenceRequest(
                silence=paging_pb2.Silence(
                    matchers=paging_pb2.SilenceMatchers(), created_by="carol", comment="x"
                )
            )
        )
    assert everything.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = set(field_violations(everything.value))
    assert {"silence.matchers", "silence.end_time"} <= fields
    incident_id = await pager.fire("gpu-10")
    await pager.incidents.ResolveIncident(
        service_pb2.ResolveIncidentRequest(
            id=incident_id, method=incident_pb2.RESOLUTION_METHOD_MANUAL, resolved_by="alice"
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as resolved:
        await pager.incidents.AcknowledgeIncident(
            service_pb2.AcknowledgeIncidentRequest(id=incident_id, actor="alice")
        )
    assert resolved.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await pager.paging.ListNotifications(
            paging_pb2.ListNotificationsRequest(incident_id="inc_nope")
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_without_a_paging_file_the_paging_rpcs_say_how_to_turn_it_on(
    server: Any,
) -> None:
    stub = paging_grpc.PagingServiceStub(server.channel)
    with pytest.raises(grpc.aio.AioRpcError) as off:
        await stub.GetOnCall(paging_pb2.GetOnCallRequest(schedule_id="primary"))
    assert off.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--paging-config" in (off.value.details() or "")


async def test_ten_thousand_merged_alerts_page_once_per_level(pager: Paging) -> None:
    for batch in range(10):
        await pager.ingestion.BatchSubmitAlerts(
            ingestion_pb2.BatchSubmitAlertsRequest(
                alerts=[
                    alert(
                        id=f"storm-{batch}-{i}",
                        title="GPU fleet overheating",
                        severity=incident_pb2.SEVERITY_P1,
                    )
                    for i in range(1000)
                ]
            )
        )
    listed = await pager.incidents.ListIncidents(service_pb2.ListIncidentsRequest())
    (incident,) = listed.incidents
    assert incident.alert_count == 10_000
    rows = await pager.settled(incident.id, 2)
    assert targets(rows) == [(1, 1, "mail", "alice@example.com"), (1, 1, "ops-hook", "ops-hook")]
    assert len(pager.hook.received) == 1 and len(pager.mailbox.received) == 1
