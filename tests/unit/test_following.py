"""Channels follow the life of the incidents they paged: one message per change per channel
that asked for it (`on`), written with the change, never to a channel that did not page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.domain.model import (
    EventType,
    Incident,
    IncidentState,
    IncidentType,
    ResolutionMethod,
    Severity,
)
from incident_manager.domain.paging.ledger import Notification, NotificationState
from incident_manager.paging.file import load_paging_config
from incident_manager.service import paging
from incident_manager.service.paging import Before
from incident_manager.service.ports import DeliveryOutcome, UnitOfWork
from tests.support.paging import new_incident, open_paged, run_steps

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
CONFIG = load_paging_config(
    """
users:
  - {id: alice, email: alice@example.com}
channels:
  - {id: ops-slack, type: slack, url_env: SLACK_URL, on: [paged, acknowledged, resolved, reopened]}
  - {id: ops-pd, type: pagerduty, routing_key_env: PD_KEY}
  - {id: ops-hook, type: webhook, url: "http://127.0.0.1:9/hook"}
  - {id: late-slack, type: slack, url_env: SLACK_URL, on: [paged, acknowledged, resolved]}
  - id: mail
    type: email
    smtp: {host: 127.0.0.1, port: 2525, from: pager@example.com}
    on: [paged, resolved]
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{user: alice}, {channel: ops-slack}, {channel: ops-pd}, {channel: ops-hook}]
      - after: 10m
        notify: [{channel: late-slack}]
routes:
  - policy: default
""",
    "test.yaml",
)


class NoRetry:
    def delay(self, attempt: int, retry_after: float | None, age: timedelta) -> timedelta | None:
        return None


async def _open(storage: MemoryStorage) -> str:
    return await open_paged(storage, CONFIG, new_incident(now=T0), T0)


async def _steps(storage: MemoryStorage, now: datetime) -> None:
    await run_steps(storage, CONFIG, now)


async def _deliver_all(storage: MemoryStorage, now: datetime) -> None:
    """Every due delivery is sent (as a worker would), and its outcome recorded."""

    def claim(uow: UnitOfWork) -> list[Notification]:
        with uow:
            found = uow.paging.claim_notifications("w", now, now + timedelta(minutes=1), 100)
            uow.commit()
        return found

    for claimed in await storage.write(claim):

        def record(uow: UnitOfWork, claimed: Notification = claimed) -> None:
            with uow:
                paging.record_delivery(
                    uow.paging,
                    uow.incidents,
                    claimed.id,
                    "w",
                    claimed.attempts,
                    DeliveryOutcome(sent=True, retry=False),
                    NoRetry(),
                    now,
                )
                uow.commit()

        await storage.write(record)


async def _change(
    storage: MemoryStorage, incident_id: str, now: datetime, change: str, *, twice: bool = False
) -> None:
    def work(uow: UnitOfWork) -> None:
        with uow:
            incident = uow.incidents.get(incident_id)
            assert incident is not None
            before = Before.of(incident)
            if change == "ack":
                incident.acknowledge(actor="alice", now=now)
            elif change == "resolve":
                incident.resolve(
                    method=ResolutionMethod.MANUAL,
                    root_cause="",
                    notes="",
                    resolved_by="bob",
                    now=now,
                )
            elif change == "reopen":
                incident.update(actor="carol", now=now, state=IncidentState.DETECTED)
            uow.incidents.save(incident)
            for _ in range(2 if twice else 1):
                paging.follow_incident(uow.paging, CONFIG, incident, before, now)
            uow.commit()

    await storage.write(work)


async def _told(storage: MemoryStorage, incident_id: str) -> list[tuple[str, str, str, str]]:
    """(channel, event, reason, state) of every message that is not a page, in ledger order."""
    rows = await storage.read(lambda uow: uow.paging.list_notifications(incident_id, None, 100))
    return [
        (n.channel_id, str(n.content["event"]), n.reason, n.state.name)
        for n in rows
        if n.content.get("event") != "paged"
    ]


async def _paged_and_sent() -> tuple[MemoryStorage, str]:
    storage = MemoryStorage()
    incident_id = await _open(storage)
    await _steps(storage, T0)
    await _deliver_all(storage, T0 + timedelta(seconds=1))
    return storage, incident_id


async def test_an_acknowledgement_tells_each_following_channel_that_paged_once() -> None:
    storage, incident_id = await _paged_and_sent()
    await _change(storage, incident_id, T0 + timedelta(minutes=2), "ack")
    # ops-hook follows only pages; mail does not follow acknowledgements; late-slack (level 2)
    # never paged this incident.
    assert await _told(storage, incident_id) == [
        ("ops-slack", "acknowledged", "acknowledged by alice", "PENDING"),
        ("ops-pd", "acknowledged", "acknowledged by alice", "PENDING"),
    ]


async def test_the_message_carries_the_page_content_with_the_change_and_its_reason() -> None:
    storage, incident_id = await _paged_and_sent()
    await _change(storage, incident_id, T0 + timedelta(minutes=2), "ack")
    rows = await storage.read(lambda uow: uow.paging.list_notifications(incident_id, None, 100))
    told = next(n for n in rows if n.content["event"] == "acknowledged")
    page = next(n for n in rows if n.channel_id == told.channel_id and n is not told)
    assert told.content["state"] == "TRIAGED" and told.content["reason"] == "acknowledged by alice"
    assert told.content["incident_id"] == incident_id and told.content["targets"] == []
    assert (told.level, told.round, told.target) == (page.level, page.round, page.target)
    assert told.next_attempt_time == T0 + timedelta(minutes=2)


async def test_the_same_change_seen_twice_tells_nobody_twice() -> None:
    storage, incident_id = await _paged_and_sent()
    await _change(storage, incident_id, T0 + timedelta(minutes=2), "ack", twice=True)
    await _change(storage, incident_id, T0 + timedelta(minutes=3), "ack")  # again, later
    assert [row[0] for row in await _told(storage, incident_id)] == ["ops-slack", "ops-pd"]


async def test_a_resolution_is_told_and_does_not_suppress_the_acknowledgement_still_waiting() -> (
    None
):
    storage, incident_id = await _paged_and_sent()
    await _change(storage, incident_id, T0 + timedelta(minutes=2), "ack")
    await _change(storage, incident_id, T0 + timedelta(minutes=3), "resolve")
    assert await _told(storage, incident_id) == [
        ("ops-slack", "acknowledged", "acknowledged by alice", "PENDING"),
        ("ops-pd", "acknowledged", "acknowledged by alice", "PENDING"),
        ("mail", "resolved", "resolved by bob", "PENDING"),
        ("ops-slack", "resolved", "resolved by bob", "PENDING"),
        ("ops-pd", "resolved", "resolved by bob", "PENDING"),
    ]


async def test_a_reopened_incident_is_told_to_the_channels_that_follow_reopening() -> None:
    storage, incident_id = await _paged_and_sent()
    await _change(storage, incident_id, T0 + timedelta(minutes=2), "resolve")
    await _deliver_all(storage, T0 + timedelta(minutes=2))
    await _change(storage, incident_id, T0 + timedelta(minutes=5), "reopen")
    told = await _told(storage, incident_id)
    assert [row for row in told if row[1] == "reopened"] == [
        ("ops-slack", "reopened", "reopened", "PENDING"),
        ("ops-pd", "reopened", "reopened", "PENDING"),
    ]
    escalation = await storage.read(lambda uow: uow.paging.escalation(incident_id))
    assert escalation is not None and escalation.reason == "incident reopened"


async def test_a_channel_whose_page_was_still_waiting_is_suppressed_and_not_told() -> None:
    storage = MemoryStorage()
    incident_id = await _open(storage)
    await _steps(storage, T0)  # the pages are due but nobody has sent them yet
    await _change(storage, incident_id, T0 + timedelta(seconds=5), "ack")
    assert await _told(storage, incident_id) == []
    rows = await storage.read(lambda uow: uow.paging.list_notifications(incident_id, None, 100))
    assert {n.state for n in rows} == {NotificationState.SUPPRESSED}


async def test_an_incident_that_paged_nobody_through_a_channel_tells_nobody() -> None:
    storage = MemoryStorage()
    incident_id = await _open(storage)  # level 1 not run yet: nothing paged
    await _change(storage, incident_id, T0, "ack")
    await _change(storage, incident_id, T0 + timedelta(minutes=1), "resolve")
    assert await _told(storage, incident_id) == []


async def test_a_sent_message_says_on_the_timeline_which_change_the_channel_was_told() -> None:
    storage, incident_id = await _paged_and_sent()
    await _change(storage, incident_id, T0 + timedelta(minutes=2), "ack")
    await _deliver_all(storage, T0 + timedelta(minutes=2, seconds=1))
    incident = await storage.read(lambda uow: uow.incidents.get(incident_id, with_history=True))
    assert incident is not None
    messages = [e.message for e in incident.timeline if e.type is EventType.NOTIFICATION_SENT]
    assert "told channel ops-pd the incident was acknowledged" in messages
    assert "told channel ops-slack the incident was acknowledged" in messages
    assert "paged channel ops-pd through pagerduty ops-pd" in messages


async def test_a_change_while_its_page_is_in_flight_waits_out_that_attempt() -> None:
    storage = MemoryStorage()
    incident_id = await _open(storage)
    await _steps(storage, T0)

    def claim(uow: UnitOfWork) -> list[Notification]:
        with uow:
            found = uow.paging.claim_notifications("w", T0, T0 + timedelta(minutes=1), 100)
            uow.commit()
        return found

    await storage.write(claim)  # every page is being sent: none is suppressed
    await _change(storage, incident_id, T0 + timedelta(seconds=1), "ack")
    rows = await storage.read(lambda uow: uow.paging.list_notifications(incident_id, None, 100))
    told = {n.channel_id: n.next_attempt_time for n in rows if n.content["event"] != "paged"}
    # Slack's and PagerDuty's attempts take at most their 10s timeout.
    assert told == {
        "ops-slack": T0 + timedelta(seconds=11),
        "ops-pd": T0 + timedelta(seconds=11),
    }


ACTION_CONFIG = load_paging_config(
    """
channels:
  - {id: gateway, type: webhook, url: "http://127.0.0.1:9/kill", on: [paged, acknowledged]}
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{action: {webhook: gateway, body: '{"incident": "{{ incident.id }}"}'}}]
routes:
  - policy: default
""",
    "actions.yaml",
)


async def test_an_action_is_not_told_of_the_incidents_later_changes() -> None:
    # The webhook follows acknowledgements of what it paged, but the action only called it:
    # a kill switch must not receive an "acknowledged" page body.
    storage = MemoryStorage()
    incident = Incident.open(
        title="jailbreak wave",
        description="",
        severity=Severity.P0,
        type=IncidentType.SECURITY,
        source="guard",
        affected_resources=[],
        labels={},
        assignees=[],
        fingerprint="fp-action",
        actor="guard",
        now=T0,
        alert_count=1,
    )

    def open_and_step(uow: UnitOfWork) -> None:
        with uow:
            uow.incidents.add(incident)
            paging.follow_incident(uow.paging, ACTION_CONFIG, incident, None, T0)
            paging.run_due_steps(uow.paging, uow.incidents, ACTION_CONFIG, T0, 10)
            uow.commit()

    await storage.write(open_and_step)
    await _deliver_all(storage, T0 + timedelta(seconds=1))

    def ack(uow: UnitOfWork) -> None:
        with uow:
            found = uow.incidents.get(incident.id)
            assert found is not None
            before = Before.of(found)
            found.acknowledge(actor="alice", now=T0 + timedelta(minutes=1))
            uow.incidents.save(found)
            paging.follow_incident(
                uow.paging, ACTION_CONFIG, found, before, T0 + timedelta(minutes=1)
            )
            uow.commit()

    await storage.write(ack)
    rows = await storage.read(lambda uow: uow.paging.list_notifications(incident.id, None, 100))
    assert [(n.target_kind.value, n.state.name) for n in rows] == [("action", "SENT")]
