"""A storm through a rate-limited Slack channel: the quota holds and no page is lost.

10,000 incidents open over five minutes (of a fake clock) on an SQLite file, each paging one
Slack channel limited to 5 messages a minute. The paging worker runs as the server runs it,
sending through the real Slack channel to the local Slack fake, which checks every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from incident_manager.adapters.channels.outbox import BoundedRetries, OutboxDispatcher
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.domain.model import Incident, IncidentType, Severity
from incident_manager.domain.paging.digest import window_start
from incident_manager.paging.file import load_paging_config
from incident_manager.service import paging
from incident_manager.service.ports import UnitOfWork
from incident_manager.service.scheduler import PagingWorker
from tests.support import FakeClock, eventually
from tests.support.services import Fake, fake_slack

PER_MINUTE = 5
WAVES = 5
PER_WAVE = 2_000
BATCH = 500
# Half past the minute: each wave opens mid-window, after the digest of the last one fell due.
T0 = datetime(2026, 3, 2, 9, 14, 30, tzinfo=UTC)
CONFIG = load_paging_config(
    f"""
channels:
  - id: ops-slack
    type: slack
    url_env: SLACK_URL
    rate_limit: {{per_minute: {PER_MINUTE}}}
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{{channel: ops-slack}}]
routes:
  - policy: default
""",
    "storm.yaml",
)
_DIGEST_TITLE = re.compile(r"([\d,]+) more incidents? paged")


@pytest.fixture
async def slack() -> AsyncIterator[Fake]:
    async with fake_slack() as fake:
        yield fake


def _incident(number: int, now: datetime) -> Incident:
    return Incident.open(
        title=f"GPU node gpu-{number} not ready",
        description="",
        severity=(Severity.P1, Severity.P2, Severity.P3)[number % 3],
        type=IncidentType.INFRASTRUCTURE,
        source="edge-agent",
        affected_resources=[],
        labels={},
        assignees=[],
        fingerprint=f"fp-{number}",
        actor="edge-agent",
        now=now,
        alert_count=1,
    )


async def _open_wave(storage: SqliteStorage, wave: int, now: datetime) -> None:
    first = wave * PER_WAVE
    for start in range(first, first + PER_WAVE, BATCH):
        incidents = [_incident(n, now) for n in range(start, start + BATCH)]

        def work(uow: UnitOfWork, incidents: list[Incident] = incidents) -> None:
            with uow:
                for incident in incidents:
                    uow.incidents.add(incident)
                    paging.follow_incident(uow.paging, CONFIG, incident, None, now)
                uow.commit()

        await storage.write(work)


def _busy(path: Path, now: datetime) -> int:
    """Work due at `now` or under way: steps due, deliveries due or claimed."""
    at = int((now - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        steps = conn.execute("SELECT COUNT(*) FROM escalations WHERE due_at <= ?", (at,))
        sends = conn.execute(
            "SELECT COUNT(*) FROM notifications WHERE state = 1"
            " AND (claimed_by <> '' OR next_attempt_time <= ?)",
            (at,),
        )
        return int(steps.fetchone()[0]) + int(sends.fetchone()[0])


async def _settled(path: Path, clock: FakeClock) -> None:
    """Until the worker has done everything due in this minute (seen twice, 50 ms apart)."""

    async def probe() -> bool:
        if _busy(path, clock()):
            return False
        await asyncio.sleep(0.05)
        return not _busy(path, clock())

    await eventually(probe, what="the worker to finish the minute", timeout=60)


async def test_a_storm_of_10000_pages_sends_at_most_the_rate_and_every_page_is_sent(
    tmp_path: Path, slack: Fake
) -> None:
    path = tmp_path / "storm.db"
    storage = SqliteStorage(path)
    clock = FakeClock(T0)
    dispatcher = OutboxDispatcher(lambda: CONFIG, environ={"SLACK_URL": slack.url})
    # Bigger passes than the server's defaults (200 steps, 64 sends) keep the test short on a
    # busy machine; each wave still takes several claims, so digests are extended in place.
    worker = PagingWorker(
        storage, lambda: CONFIG, dispatcher, BoundedRetries(), clock, idle_poll=0.05,
        batch=500, concurrency=500,
    )  # fmt: skip
    per_window: list[int] = []
    worker.start()
    try:
        for minute in range(WAVES + 2):  # the waves, then the last digest
            if minute < WAVES:
                await _open_wave(storage, minute, clock())
            worker.wake()
            await _settled(path, clock)
            per_window.append(len(slack.requests) - sum(per_window))
            clock.advance(minutes=1)
            assert window_start(clock()) == window_start(T0) + timedelta(minutes=minute + 1)
    finally:
        await worker.stop()
        await storage.close()

    assert slack.problems == []
    assert max(per_window) <= PER_MINUTE
    assert per_window[0] == PER_MINUTE and per_window[-1] == 0
    folded = [_DIGEST_TITLE.match(body["text"]) for body in slack.requests]
    digests = [int(m.group(1).replace(",", "")) for m in folded if m is not None]
    single = len(slack.requests) - len(digests)
    assert len(digests) == WAVES  # one per window that went over, sent in the next
    assert single + sum(digests) == WAVES * PER_WAVE
    with contextlib.closing(sqlite3.connect(path)) as conn:
        pages = dict(
            conn.execute(
                "SELECT state, COUNT(*) FROM notifications WHERE incident_id <> '' GROUP BY state"
            ).fetchall()
        )
        direct = conn.execute(
            "SELECT COUNT(*) FROM notifications WHERE incident_id <> '' AND digest_id = ''"
        ).fetchone()[0]
        digest_rows = conn.execute(
            "SELECT state, COUNT(*) FROM notifications WHERE incident_id = '' GROUP BY state"
        ).fetchall()
        in_digest = conn.execute(
            "SELECT COUNT(*) FROM notifications WHERE last_error LIKE 'SENT in digest ntf_%'"
        ).fetchone()[0]
    assert pages == {2: WAVES * PER_WAVE}  # every page SENT, directly or in a digest
    assert (direct, in_digest) == (single, sum(digests))
    assert digest_rows == [(2, WAVES)]
