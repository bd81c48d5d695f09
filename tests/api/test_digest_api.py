"""A rate-limited channel end to end: a real server wired by the bootstrap, on SQLite, a real
webhook receiver, and the test's clock; the ledger is read through ListNotifications."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from generated.incident_manager.v1 import paging_service_pb2_grpc as paging_grpc
from incident_manager.bootstrap import start_server
from incident_manager.config import Settings
from tests.support import FakeClock, alert, eventually
from tests.support.receivers import Receiver, webhook_receiver

STATE = paging_pb2.NotificationState
T0 = datetime(2026, 3, 3, 9, 0, 20, tzinfo=UTC)
PAGING = """
channels:
  - id: ops-hook
    type: webhook
    url: {url}
    rate_limit: {{per_minute: 1}}
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{{channel: ops-hook}}]
routes:
  - policy: default
"""


@pytest.fixture
async def hook() -> AsyncIterator[Receiver]:
    async with webhook_receiver() as receiver:
        yield receiver


async def test_pages_past_the_limit_are_listed_with_their_digest_and_sent_in_it(
    tmp_path: Path, hook: Receiver
) -> None:
    config = tmp_path / "paging.yaml"
    config.write_text(PAGING.format(url=hook.url))
    clock = FakeClock(T0)
    server = await start_server(
        Settings(
            listen="127.0.0.1:0",
            metrics_listen="off",
            database=str(tmp_path / "im.db"),
            paging_config=str(config),
        ),
        clock=clock,
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    ingestion = ingestion_grpc.AlertIngestionServiceStub(channel)
    pager = paging_grpc.PagingServiceStub(channel)

    async def ledgers() -> list[paging_pb2.Notification] | None:
        """Each incident's one ledger row, or None while a level has not run yet."""
        rows = []
        for incident_id in incidents:
            answer = await pager.ListNotifications(
                paging_pb2.ListNotificationsRequest(incident_id=incident_id)
            )
            if not answer.notifications:
                return None
            [row] = answer.notifications
            rows.append(row)
        return rows

    incidents: list[str] = []
    try:
        for n in range(3):
            request = ingestion_pb2.SubmitAlertRequest(
                alert=alert(id=f"gpu-{n}", title=f"GPU node gpu-{n} down", source=f"rack-{n}")
            )
            incidents.append((await ingestion.SubmitAlert(request)).ack.incident_id)

        async def folded() -> list[paging_pb2.Notification] | None:
            rows = await ledgers()
            if rows is None:
                return None
            done = sum(bool(r.digest_id) for r in rows) == 2 and len(hook.received) == 1
            return rows if done else None

        rows = await eventually(folded, what="one page sent, two folded")
        [digest_id] = {r.digest_id for r in rows if r.digest_id}
        waiting = [r for r in rows if r.digest_id]
        assert all(r.state == STATE.NOTIFICATION_STATE_PENDING for r in waiting)
        assert all(not r.HasField("next_attempt_time") for r in waiting)
        assert waiting[0].last_error == (
            f"folded into digest {digest_id}: channel ops-hook sends at most 1 message a minute"
        )

        clock.advance(seconds=40)  # 09:01:00, the next minute
        assert server.worker is not None
        server.worker.wake()

        async def sent() -> list[paging_pb2.Notification] | None:
            rows = await ledgers()
            if rows is None:
                return None
            done = all(r.state == STATE.NOTIFICATION_STATE_SENT for r in rows)
            return rows if done else None

        rows = await eventually(sent, what="the digest sent")
    finally:
        await channel.close()
        await server.stop(0)
    assert sorted(r.last_error for r in rows) == ["", *[f"SENT in digest {digest_id}"] * 2]
    assert len(hook.received) == 2
    digest = json.loads(hook.received[1].body)
    assert hook.received[1].headers["webhook-id"] == digest_id
    assert (digest["type"], digest["data"]["total"]) == ("digest", 2)
    assert sorted(p["incident_id"] for p in digest["data"]["pages"]) == sorted(
        r.incident_id for r in rows if r.digest_id
    )
