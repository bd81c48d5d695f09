"""Templates on webhook and email channels, against a real HTTP receiver and a real SMTP
server (aiosmtpd): the webhook's `message` and the email's subject and text take the
template's words, the machine-readable rest does not change, and a template that fails at
send time sends the default words and says so in the detail."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from incident_manager.adapters.channels.base import Delivery, Outcome, Recipient
from incident_manager.adapters.channels.email import EmailChannel, SmtpSettings
from incident_manager.adapters.channels.webhook import WebhookChannel, WebhookSettings
from incident_manager.domain.paging.model import MessageTemplate
from tests.support.pages import page
from tests.support.receivers import LoopbackController, Mailbox, Receiver, webhook_receiver

ALICE = Recipient("alice", "alice@example.com", "Alice Ng")
TEMPLATE = MessageTemplate(
    title="{{ incident.severity }} on {{ incident.labels.region }}: {{ incident.title }}",
    body="{{ reason }} ({{ targets|length }} paged)\n<{{ incident.runbook_url }}>",
)
BROKEN = MessageTemplate(body="{{ incident.nope }}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with webhook_receiver() as recorder:
        yield recorder


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    controller = LoopbackController(box, hostname="127.0.0.1", port=0, ready_timeout=30)
    controller.start()
    box.port = controller.port  # type: ignore[attr-defined]
    try:
        yield box
    finally:
        controller.stop()


async def _hook(url: str, template: MessageTemplate | None) -> tuple[Outcome, str]:
    channel = WebhookChannel(environ={})
    try:
        settings = WebhookSettings("ops-hook", url, template=template)
        result = await channel.send(Delivery("dlv_hook", settings, page()))
    finally:
        await channel.close()
    return result.outcome, result.detail


async def _mail(mailbox: Mailbox, template: MessageTemplate | None) -> tuple[Outcome, str]:
    channel = EmailChannel(environ={}, local_hostname="pager.test")
    settings = SmtpSettings(
        channel_id="mail",
        host="127.0.0.1",
        port=mailbox.port,  # type: ignore[attr-defined]
        sender="incidents@example.com",
        template=template,
    )
    result = await channel.send(Delivery("dlv_mail", settings, page(), (ALICE,)))
    return result.outcome, result.detail


async def test_a_webhook_template_writes_only_the_bodys_message(receiver: Receiver) -> None:
    assert (await _hook(receiver.url, None))[0] is Outcome.SENT
    assert (await _hook(receiver.url, TEMPLATE))[0] is Outcome.SENT
    default, templated = (json.loads(r.body) for r in receiver.received)
    assert default["data"]["message"] == {
        "title": "[P1] p99 latency above 2s on gpt-4o",
        "body": "Paged at level 1, round 1: new incident",
    }
    assert templated["data"]["message"] == {
        "title": "P1 on eu-west-1: p99 latency above 2s on gpt-4o",
        "body": "new incident (2 paged)\n<https://runbooks.example.com/latency>",
    }
    machine: dict[str, Any] = {**templated["data"], "message": default["data"]["message"]}
    assert {**templated, "data": machine} == default


async def test_a_webhook_template_failing_at_send_time_sends_the_default_and_says_so(
    receiver: Receiver,
) -> None:
    outcome, detail = await _hook(receiver.url, BROKEN)
    assert outcome is Outcome.SENT
    assert detail.startswith("HTTP 200")
    assert "body template failed (line 1: 'dict object' has no attribute 'nope')" in detail
    assert detail.endswith("sent the default message")
    [got] = receiver.received
    assert json.loads(got.body)["data"]["message"]["body"] == (
        "Paged at level 1, round 1: new incident"
    )


async def test_an_email_template_gives_the_subject_and_the_text_shown_escaped_in_html(
    mailbox: Mailbox,
) -> None:
    assert (await _mail(mailbox, TEMPLATE))[0] is Outcome.SENT
    [got] = mailbox.received
    message = got.message
    assert message["Subject"] == "P1 on eu-west-1: p99 latency above 2s on gpt-4o"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage)
    assert text.get_content().splitlines() == [
        "new incident (2 paged)",
        "<https://runbooks.example.com/latency>",
    ]
    assert "<pre" in html.get_content()
    assert "&lt;https://runbooks.example.com/latency&gt;" in html.get_content()
    assert "<https://" not in html.get_content()


async def test_an_email_template_with_only_a_body_keeps_the_default_subject(
    mailbox: Mailbox,
) -> None:
    assert (await _mail(mailbox, MessageTemplate(body="{{ reason }}")))[0] is Outcome.SENT
    [got] = mailbox.received
    assert got.message["Subject"] == "[P1] p99 latency above 2s on gpt-4o (inc-4711)"


async def test_an_email_template_failing_at_send_time_sends_the_default_and_says_so(
    mailbox: Mailbox,
) -> None:
    outcome, detail = await _mail(mailbox, BROKEN)
    assert outcome is Outcome.SENT
    assert detail.startswith("SMTP 250 accepted for 1 recipient")
    assert detail.endswith(
        "body template failed (line 1: 'dict object' has no attribute 'nope'); sent the "
        "default message"
    )
    [got] = mailbox.received
    assert got.message["Subject"] == "[P1] p99 latency above 2s on gpt-4o (inc-4711)"
    text = got.message.get_body(("plain",))
    assert isinstance(text, EmailMessage)
    assert "Paged at level 1, round 1: new incident" in text.get_content()
