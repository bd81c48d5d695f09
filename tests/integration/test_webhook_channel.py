"""The webhook channel against a real HTTP receiver (aiohttp's server on 127.0.0.1, port 0)
that records every request and checks its Standard Webhooks signature with a verifier
written here from the specification, not with the code under test."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web

from incident_manager.adapters.channels.base import Delivery, Outcome, page_content_to_dict
from incident_manager.adapters.channels.http import HttpClient
from incident_manager.adapters.channels.outbox import OutboxDispatcher
from incident_manager.adapters.channels.webhook import WebhookChannel, WebhookSettings
from incident_manager.domain.paging.ledger import Notification
from incident_manager.domain.paging.model import TargetKind
from incident_manager.paging.file import load_paging_config
from tests.support.pages import page
from tests.support.receivers import (
    Behaviour,
    Receiver,
    drop_connection,
    hang,
    status,
    verify_standard_webhook,
    webhook_receiver,
)

SECRET = "whsec_" + base64.b64encode(b"a-signing-key-of-32-bytes-long!!").decode()
RAW_SECRET = "not-base64 but a fine secret"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with webhook_receiver() as recorder:
        yield recorder


@pytest.fixture
async def channel() -> AsyncIterator[WebhookChannel]:
    sender = WebhookChannel(environ={"HOOK_SECRET": SECRET, "RAW_SECRET": RAW_SECRET})
    try:
        yield sender
    finally:
        await sender.close()


def delivery(
    url: str,
    *,
    secret_env: str | None = "HOOK_SECRET",
    attempt: int = 1,
    timeout: float = 5.0,
    delivery_id: str = "dlv_01HZX3K8Q5",
) -> Delivery[WebhookSettings]:
    settings = WebhookSettings("ops-hook", url, secret_env=secret_env, timeout=timeout)
    return Delivery(delivery_id, settings, page(), attempt=attempt)


async def test_a_page_arrives_signed_with_the_documented_body(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    result = await channel.send(delivery(receiver.url))
    assert (result.outcome, result.status) == (Outcome.SENT, 200)
    [got] = receiver.received
    assert verify_standard_webhook(SECRET, got.headers, got.body)
    assert got.headers["webhook-id"] == "dlv_01HZX3K8Q5"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("incident-manager/")
    body = json.loads(got.body)
    assert body["type"] == "incident.paged"
    assert body["data"]["incident"]["id"] == "inc-4711"
    assert body["data"]["page"] == {
        "level": 1,
        "round": 1,
        "reason": "new incident",
        "targets": [
            {"kind": "user", "id": "alice", "name": "Alice Ng", "via": "primary"},
            {"kind": "channel", "id": "ops-hook", "name": None, "via": None},
        ],
    }


async def test_the_verifier_rejects_a_wrong_secret_and_a_changed_body(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    """Guards the test itself: a verifier that accepts anything would prove nothing."""
    await channel.send(delivery(receiver.url))
    [got] = receiver.received
    other = "whsec_" + base64.b64encode(b"another-key-entirely-32-bytes!!!").decode()
    assert not verify_standard_webhook(other, got.headers, got.body)
    assert not verify_standard_webhook(SECRET, got.headers, got.body + b" ")
    stale = dict(got.headers, **{"webhook-timestamp": str(int(time.time()) - 600)})
    assert not verify_standard_webhook(SECRET, stale, got.body)


async def test_a_plain_secret_signs_with_its_own_bytes(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    await channel.send(delivery(receiver.url, secret_env="RAW_SECRET"))
    [got] = receiver.received
    assert verify_standard_webhook(RAW_SECRET, got.headers, got.body)


async def test_a_channel_without_a_secret_sends_unsigned_pages_with_an_id(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    result = await channel.send(delivery(receiver.url, secret_env=None))
    assert result.outcome is Outcome.SENT
    [got] = receiver.received
    assert "webhook-signature" not in got.headers
    assert got.headers["webhook-id"] == "dlv_01HZX3K8Q5"


async def test_retries_carry_the_same_id_and_body_and_a_fresh_valid_signature(
    receiver: Receiver,
) -> None:
    clock = iter([1_900_000_000.0, 1_900_000_030.0]).__next__
    sender = WebhookChannel(environ={"HOOK_SECRET": SECRET}, clock=clock)
    receiver.then(status(503))
    try:
        first = await sender.send(delivery(receiver.url, attempt=1))
        second = await sender.send(delivery(receiver.url, attempt=2))
    finally:
        await sender.close()
    assert (first.outcome, second.outcome) == (Outcome.RETRY, Outcome.SENT)
    a, b = receiver.received
    assert a.headers["webhook-id"] == b.headers["webhook-id"] == "dlv_01HZX3K8Q5"
    assert a.body == b.body
    assert (a.headers["webhook-timestamp"], b.headers["webhook-timestamp"]) == (
        "1900000000",
        "1900000030",
    )
    assert a.headers["webhook-signature"] != b.headers["webhook-signature"]


async def test_a_server_error_is_retried(receiver: Receiver, channel: WebhookChannel) -> None:
    receiver.then(status(500))
    result = await channel.send(delivery(receiver.url))
    assert (result.outcome, result.status, result.retry_after) == (Outcome.RETRY, 500, None)
    assert result.detail == "HTTP 500 Internal Server Error: answer 500"


async def test_a_429_is_retried_after_the_seconds_it_asks_for(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    receiver.then(status(429, **{"Retry-After": "120"}))
    result = await channel.send(delivery(receiver.url))
    assert (result.outcome, result.status, result.retry_after) == (Outcome.RETRY, 429, 120)


async def test_a_429_is_retried_after_the_http_date_it_asks_for(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    later = datetime.now(UTC) + timedelta(seconds=90)
    receiver.then(status(429, **{"Retry-After": format_datetime(later, usegmt=True)}))
    result = await channel.send(delivery(receiver.url))
    assert result.outcome is Outcome.RETRY
    assert result.retry_after is not None and 80 <= result.retry_after <= 90


async def test_a_request_timeout_answer_is_retried(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    receiver.then(status(408))
    assert (await channel.send(delivery(receiver.url))).outcome is Outcome.RETRY


async def test_a_400_is_final(receiver: Receiver, channel: WebhookChannel) -> None:
    receiver.then(status(400))
    result = await channel.send(delivery(receiver.url))
    assert (result.outcome, result.status) == (Outcome.FAILED, 400)
    assert result.detail == "HTTP 400 Bad Request: answer 400"


async def test_a_410_is_final_and_asks_to_disable_the_channel(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    receiver.then(status(410))
    result = await channel.send(delivery(receiver.url))
    assert (result.outcome, result.disable_channel) == (Outcome.FAILED, True)


async def test_a_redirect_is_not_followed_and_is_final(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    receiver.then(status(301, Location="http://127.0.0.1:1/elsewhere?token=zzz"))
    result = await channel.send(delivery(receiver.url))
    assert (result.outcome, result.status) == (Outcome.FAILED, 301)
    assert "redirects to http://127.0.0.1:1" in result.detail
    assert "zzz" not in result.detail
    assert len(receiver.received) == 1


async def test_a_receiver_that_does_not_answer_in_time_is_retried(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    receiver.then(hang(10))
    started = time.monotonic()
    result = await channel.send(delivery(receiver.url, timeout=0.5))
    assert time.monotonic() - started < 5
    assert (result.outcome, result.status) == (Outcome.RETRY, None)
    assert result.detail == "no answer within 0.5s"


async def test_a_connection_closed_mid_request_is_retried(
    receiver: Receiver, channel: WebhookChannel
) -> None:
    receiver.then(drop_connection())
    result = await channel.send(delivery(receiver.url))
    assert (result.outcome, result.status) == (Outcome.RETRY, None)
    assert "closed the connection" in result.detail
    # The shared session still works for the next attempt.
    assert (await channel.send(delivery(receiver.url))).outcome is Outcome.SENT


async def test_a_refused_connection_is_retried(unused_tcp_port: int) -> None:
    sender = WebhookChannel(environ={"HOOK_SECRET": SECRET})
    try:
        result = await sender.send(delivery(f"http://127.0.0.1:{unused_tcp_port}/hook"))
    finally:
        await sender.close()
    assert result.outcome is Outcome.RETRY
    assert f"cannot connect to 127.0.0.1:{unused_tcp_port}" in result.detail


async def test_an_unset_secret_fails_the_delivery_and_sends_nothing(
    receiver: Receiver,
) -> None:
    sender = WebhookChannel(environ={})
    try:
        result = await sender.send(delivery(receiver.url))
    finally:
        await sender.close()
    assert result.outcome is Outcome.FAILED
    assert "HOOK_SECRET" in result.detail and "not set" in result.detail
    assert receiver.received == []


async def test_a_url_that_is_not_http_fails_without_a_request() -> None:
    sender = WebhookChannel(environ={"HOOK_SECRET": SECRET})
    try:
        result = await sender.send(delivery("ftp://127.0.0.1/hook"))
    finally:
        await sender.close()
    assert result.outcome is Outcome.FAILED
    assert "http:// or https://" in result.detail


async def test_no_secret_reaches_a_detail_even_when_the_receiver_echoes_it(
    receiver: Receiver,
) -> None:
    def echo(secret: str) -> Behaviour:
        async def answer(request: web.Request) -> web.StreamResponse:
            return web.Response(status=400, text=f"bad: {secret} {request.query_string}")

        return answer

    receiver.then(echo(SECRET), echo(RAW_SECRET))
    sender = WebhookChannel(environ={"HOOK_SECRET": SECRET, "RAW_SECRET": RAW_SECRET})
    url = receiver.url.replace("http://", "http://ops:pa55word@") + "?token=tok-123456"
    try:
        signed = await sender.send(delivery(url))
        raw = await sender.send(delivery(url, secret_env="RAW_SECRET"))
    finally:
        await sender.close()
    for result, secret in ((signed, SECRET), (raw, RAW_SECRET)):
        assert result.outcome is Outcome.FAILED
        assert result.detail == "HTTP 400 Bad Request: bad: [redacted] token=[redacted]"
        # Not even a prefix of one: secrets are removed before the detail is cut to length.
        assert secret[:10] not in result.detail
    # The URL's credentials did reach the receiver, as HTTP basic authentication.
    assert receiver.received[0].headers["authorization"].startswith("Basic ")


async def test_channels_sharing_one_client_send_concurrently(receiver: Receiver) -> None:
    client = HttpClient()
    one = WebhookChannel(client, environ={"HOOK_SECRET": SECRET})
    other = WebhookChannel(client, environ={"HOOK_SECRET": SECRET})
    try:
        results = await asyncio.gather(
            *(
                (one if n % 2 else other).send(delivery(receiver.url, delivery_id=f"dlv-{n}"))
                for n in range(50)
            )
        )
        # Closing a channel leaves the shared client to its owner.
        await one.close()
        assert (await other.send(delivery(receiver.url))).outcome is Outcome.SENT
    finally:
        await client.close()
    assert all(r.outcome is Outcome.SENT for r in results)
    ids = {got.headers["webhook-id"] for got in receiver.received}
    assert ids == {f"dlv-{n}" for n in range(50)} | {"dlv_01HZX3K8Q5"}
    assert all(verify_standard_webhook(SECRET, r.headers, r.body) for r in receiver.received)


async def test_a_closed_channel_sends_again_with_a_new_session(receiver: Receiver) -> None:
    sender = WebhookChannel(environ={"HOOK_SECRET": SECRET})
    try:
        assert (await sender.send(delivery(receiver.url))).outcome is Outcome.SENT
        await sender.close()
        assert (await sender.send(delivery(receiver.url))).outcome is Outcome.SENT
    finally:
        await sender.close()


async def test_the_headers_a_paging_file_gives_a_webhook_channel_are_sent_with_its_pages(
    receiver: Receiver,
) -> None:
    config = load_paging_config(
        f"""
channels:
  - id: ops-hook
    type: webhook
    url: "{receiver.url}"
    secret_env: HOOK_SECRET
    headers: {{X-Team: ops, X-Tenant: acme}}
escalation_policies:
  - id: default
    levels: [{{after: 0s, notify: [{{channel: ops-hook}}]}}]
routes:
  - policy: default
""",
        "paging.yaml",
    )
    dispatcher = OutboxDispatcher(lambda: config, environ={"HOOK_SECRET": SECRET})
    notification = Notification(
        id="ntf_0123456789abcdef01234567",
        incident_id="inc-4711",
        policy_id="default",
        level=1,
        round=1,
        target_kind=TargetKind.CHANNEL,
        target_id="ops-hook",
        user_id="",
        channel_id="ops-hook",
        channel_type="webhook",
        recipient="ops-hook",
        reason="new incident",
        create_time=datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        content=page_content_to_dict(page()),
        attempts=1,
    )
    try:
        outcome = await dispatcher.send(notification)
    finally:
        await dispatcher.close()
    assert outcome.sent, outcome.detail
    [got] = receiver.received
    assert (got.headers["x-team"], got.headers["x-tenant"]) == ("ops", "acme")
    assert got.headers["webhook-id"] == notification.id
    assert verify_standard_webhook(SECRET, got.headers, got.body)
