"""Automated actions from the level that runs them to the timeline event that says what came
of them: the paging use cases on SQLite, the outbox's real channels, and a real HTTP receiver
(aiohttp on 127.0.0.1, port 0) that checks Standard Webhooks signatures with a verifier
written from the specification."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from incident_manager.adapters.channels.outbox import BoundedRetries, OutboxDispatcher
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.domain.model import (
    EventType,
    Incident,
    IncidentType,
    Severity,
    TimelineEvent,
)
from incident_manager.domain.paging.ledger import Notification, NotificationState
from incident_manager.domain.paging.model import PagingConfig, TargetKind
from incident_manager.paging.file import load_paging_config
from incident_manager.service import paging
from incident_manager.service.ports import DeliveryOutcome, UnitOfWork
from tests.support.receivers import (
    Behaviour,
    Receiver,
    status,
    verify_standard_webhook,
    webhook_receiver,
)

SECRET = "whsec_" + base64.b64encode(b"the-kill-switch-signing-key-32b!").decode()
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
KILL_SWITCH_BODY = '{"model": "{{ incident.labels.model }}", "reason": "{{ incident.title }}"}'


def config(url: str, body: str = KILL_SWITCH_BODY) -> PagingConfig:
    """A policy whose only level is an action: the LLM gateway's kill switch."""
    quoted = body.replace("'", "''")
    return load_paging_config(
        f"""
channels:
  - {{id: kill-switch, type: webhook, url: "{url}", secret_env: KILL_SWITCH_SECRET, timeout: 2s}}
escalation_policies:
  - id: jailbreak
    levels:
      - after: 0m
        notify:
          - {{action: {{webhook: kill-switch, body: '{quoted}'}}}}
routes:
  - policy: jailbreak
""",
        "actions.yaml",
    )


def answer(code: int, text: str) -> Behaviour:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text=text, content_type="application/json")

    return reply


@dataclass
class Gateway:
    """The paging use cases on SQLite, sending through the real outbox to `receiver`."""

    storage: SqliteStorage
    receiver: Receiver
    dispatcher: OutboxDispatcher
    config: PagingConfig
    now: datetime = T0

    async def open(self, title: str, labels: dict[str, str]) -> str:
        incident = Incident.open(
            title=title,
            description="",
            severity=Severity.P1,
            type=IncidentType.SECURITY,
            source="llm-shield",
            affected_resources=[],
            labels=labels,
            assignees=[],
            fingerprint=title,
            actor="llm-shield",
            now=self.now,
            alert_count=1,
        )

        def work(uow: UnitOfWork) -> None:
            with uow:
                uow.incidents.add(incident)
                paging.follow_incident(uow.paging, self.config, incident, None, self.now)
                paging.run_due_steps(uow.paging, uow.incidents, self.config, self.now, 10)
                uow.commit()

        await self.storage.write(work)
        return incident.id

    async def attempt(self) -> int:
        """One pass of the worker: claim every due delivery, send it, record the outcome."""
        now = self.now

        def claim(uow: UnitOfWork) -> list[Notification]:
            with uow:
                claimed = uow.paging.claim_notifications("w1", now, now + timedelta(minutes=1), 10)
                uow.commit()
            return claimed

        claimed = await self.storage.write(claim)
        for notification in claimed:
            outcome = await self.dispatcher.send(notification)

            def record(
                uow: UnitOfWork, n: Notification = notification, sent: DeliveryOutcome = outcome
            ) -> None:
                with uow:
                    paging.record_delivery(
                        uow.paging,
                        uow.incidents,
                        n.id,
                        "w1",
                        n.attempts,
                        sent,
                        BoundedRetries(rng=random.Random(7)),
                        now,
                    )
                    uow.commit()

            await self.storage.write(record)
        return len(claimed)

    async def ledger(self, incident_id: str) -> list[Notification]:
        return await self.storage.read(
            lambda uow: uow.paging.list_notifications(incident_id, None, 100)
        )

    async def events(self, incident_id: str, type: EventType) -> list[TimelineEvent]:
        incident = await self.storage.read(
            lambda uow: uow.incidents.get(incident_id, with_history=True)
        )
        assert incident is not None
        return [event for event in incident.timeline if event.type is type]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with webhook_receiver() as receiver:
        storage = SqliteStorage(tmp_path / "actions.db")
        rules = config(receiver.url)
        dispatcher = OutboxDispatcher(lambda: rules, environ={"KILL_SWITCH_SECRET": SECRET})
        try:
            yield Gateway(storage, receiver, dispatcher, rules)
        finally:
            await dispatcher.close()
            await storage.close()


async def test_an_action_posts_its_rendered_body_signed_like_a_page(gateway: Gateway) -> None:
    incident_id = await gateway.open('Jailbreak wave: "DAN" prompts', {"model": "gpt-4o"})
    (row,) = await gateway.ledger(incident_id)
    assert (row.target_kind, row.target, row.channel_id, row.state) == (
        TargetKind.ACTION,
        "action kill-switch",
        "kill-switch",
        NotificationState.PENDING,
    )
    gateway.receiver.then(answer(200, '{"disabled": true}'))
    assert await gateway.attempt() == 1
    (request,) = gateway.receiver.received
    # The title's quotes are escaped inside the JSON string: the alert adds no key.
    assert request.body == (b'{"model": "gpt-4o", "reason": "Jailbreak wave: \\"DAN\\" prompts"}')
    assert json.loads(request.body) == {
        "model": "gpt-4o",
        "reason": 'Jailbreak wave: "DAN" prompts',
    }
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == row.id
    assert verify_standard_webhook(SECRET, request.headers, request.body)
    (sent,) = await gateway.ledger(incident_id)
    assert (sent.state, sent.attempts) == (NotificationState.SENT, 1)
    (event,) = await gateway.events(incident_id, EventType.ACTION_EXECUTED)
    assert event.message == 'action kill-switch answered HTTP 200: {"disabled": true}'
    assert event.details == {
        "notification_id": row.id,
        "webhook": "kill-switch",
        "status_code": "200",
        "outcome": "SENT",
        "attempts": "1",
        "response": '{"disabled": true}',
        "level": "1",
        "round": "1",
    }
    assert await gateway.events(incident_id, EventType.NOTIFICATION_SENT) == []


async def test_an_action_whose_body_is_not_json_is_sent_as_utf8_text(tmp_path: Path) -> None:
    async with webhook_receiver() as receiver:
        storage = SqliteStorage(tmp_path / "text.db")
        rules = config(receiver.url, body="disable {{ incident.labels.model }} ({{ reason }})")
        dispatcher = OutboxDispatcher(lambda: rules, environ={"KILL_SWITCH_SECRET": SECRET})
        try:
            gateway = Gateway(storage, receiver, dispatcher, rules)
            await gateway.open("Jailbreak wave", {"model": "modèle-7b"})
            await gateway.attempt()
        finally:
            await dispatcher.close()
            await storage.close()
    (request,) = receiver.received
    assert request.body == "disable modèle-7b (new incident)".encode()
    assert request.headers["content-type"] == "text/plain; charset=utf-8"
    assert verify_standard_webhook(SECRET, request.headers, request.body)


async def test_an_action_answered_with_5xx_is_retried_then_sent_with_one_event(
    gateway: Gateway,
) -> None:
    incident_id = await gateway.open("Jailbreak wave", {"model": "gpt-4o"})
    gateway.receiver.then(status(503), status(500), answer(200, '{"disabled": true}'))
    await gateway.attempt()
    (row,) = await gateway.ledger(incident_id)
    assert (row.state, row.attempts) == (NotificationState.PENDING, 1)
    assert row.last_error == "HTTP 503 Service Unavailable: answer 503"
    assert await gateway.events(incident_id, EventType.ACTION_EXECUTED) == []
    for _ in range(2):
        assert row.next_attempt_time is not None
        gateway.now = row.next_attempt_time
        assert await gateway.attempt() == 1
        (row,) = await gateway.ledger(incident_id)
    assert (row.state, row.attempts) == (NotificationState.SENT, 3)
    bodies = {request.body for request in gateway.receiver.received}
    ids = {request.headers["webhook-id"] for request in gateway.receiver.received}
    assert (len(gateway.receiver.received), len(bodies), ids) == (3, 1, {row.id})
    (event,) = await gateway.events(incident_id, EventType.ACTION_EXECUTED)
    assert event.message == 'action kill-switch answered HTTP 200: {"disabled": true}'
    assert (event.details["status_code"], event.details["attempts"]) == ("200", "3")
    assert event.details["response"] == '{"disabled": true}'


async def test_an_action_refused_with_4xx_fails_at_once_with_the_code(gateway: Gateway) -> None:
    incident_id = await gateway.open("Jailbreak wave", {"model": "gpt-4o"})
    gateway.receiver.then(answer(403, '{"error": "token expired"}'))
    await gateway.attempt()
    (row,) = await gateway.ledger(incident_id)
    assert (row.state, row.attempts) == (NotificationState.FAILED, 1)
    (event,) = await gateway.events(incident_id, EventType.ACTION_EXECUTED)
    assert event.message == (
        'action kill-switch failed: HTTP 403 Forbidden: {"error": "token expired"}'
    )
    assert (event.details["outcome"], event.details["status_code"]) == ("FAILED", "403")
    assert event.details["response"] == '{"error": "token expired"}'


async def test_secrets_in_the_answer_are_redacted_in_the_event_and_the_excerpt_is_bounded(
    gateway: Gateway,
) -> None:
    incident_id = await gateway.open("Jailbreak wave", {"model": "gpt-4o"})
    chatty = (
        f'{{"echo": "{SECRET}", "admin": "https://root:hunter22@gw.example.com/", '
        f'"next": "https://gw.example.com/undo?token=t0k3n-value", "pad": "{"x" * 5000}"}}'
    )
    gateway.receiver.then(answer(200, chatty))
    await gateway.attempt()
    (event,) = await gateway.events(incident_id, EventType.ACTION_EXECUTED)
    response = event.details["response"]
    for secret in (SECRET, "hunter22", "t0k3n-value"):
        assert secret not in response and secret not in event.message
    assert response.startswith('{"echo": "[redacted]", "admin": "https://root:[redacted]@gw.')
    assert "undo?token=[redacted]" in response
    assert len(response) == 300 and response.endswith("…")


async def test_a_body_that_cannot_be_rendered_fails_the_action_and_sends_nothing(
    gateway: Gateway,
) -> None:
    incident_id = await gateway.open("Jailbreak wave", {"team": "ml"})  # no `model` label
    (row,) = await gateway.ledger(incident_id)
    assert (row.state, row.attempts) == (NotificationState.FAILED, 0)
    assert row.last_error == (
        "the body template failed (line 1: 'dict object' has no attribute 'model'); "
        "nothing was sent"
    )
    assert await gateway.attempt() == 0
    assert gateway.receiver.received == []
    (event,) = await gateway.events(incident_id, EventType.ACTION_EXECUTED)
    assert event.message == f"action kill-switch failed: {row.last_error}"
    assert (event.details["outcome"], event.details["status_code"]) == ("FAILED", "")
    assert event.details["attempts"] == "0"
