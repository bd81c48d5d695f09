"""A digest through each channel type, to real receivers and the Teams fake.

The digest is built as the paging worker builds it (domain/paging/digest.py) and sent by
the outbox, so what is tested is the stored content read back and rendered by the channel.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from incident_manager.adapters.channels.outbox import OutboxDispatcher
from incident_manager.domain.paging.digest import MAX_LISTED, fold, new_digest
from incident_manager.domain.paging.ledger import Notification
from incident_manager.domain.paging.model import TargetKind
from incident_manager.paging.file import load_paging_config
from tests.support.receivers import LoopbackController, Mailbox, Receiver, webhook_receiver
from tests.support.services import Fake, fake_teams

T0 = datetime(2026, 3, 2, 9, 0, 2, 118000, tzinfo=UTC)


@pytest.fixture
async def hook() -> AsyncIterator[Receiver]:
    async with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture
async def teams() -> AsyncIterator[Fake]:
    async with fake_teams() as fake:
        yield fake


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = LoopbackController(box, hostname="127.0.0.1", port=0, ready_timeout=30)
    controller.start()
    try:
        yield box, controller.port
    finally:
        controller.stop()


def _page(number: int, channel: str, recipient: str) -> Notification:
    return Notification(
        id=f"ntf_{number:04d}",
        incident_id=f"inc_{number:04d}",
        policy_id="default",
        level=1,
        round=1,
        target_kind=TargetKind.CHANNEL,
        target_id=channel,
        user_id="",
        channel_id=channel,
        channel_type="x",
        recipient=recipient,
        reason="new incident",
        create_time=T0,
        content={
            "severity": "P1" if number % 2 else "P3",
            "title": f"p99 <latency> & errors on model-{number}",
            "event": "resolved" if number == 1 else "paged",
        },
    )


def _digest(channel: str, recipient: str, pages: int) -> Notification:
    first = _page(0, channel, recipient)
    digest = new_digest(first, 5, T0 + timedelta(minutes=1), T0)
    fold(digest, [_page(n, channel, recipient) for n in range(pages)], T0)
    return digest


def _config(port: int, hook_url: str) -> str:
    return f"""
channels:
  - id: ops-hook
    type: webhook
    url: "{hook_url}"
    secret_env: HOOK_SECRET
    rate_limit: {{per_minute: 5}}
  - {{id: ops-teams, type: teams, url_env: TEAMS_URL, rate_limit: {{per_minute: 5}}}}
  - id: mail
    type: email
    smtp: {{host: 127.0.0.1, port: {port}, from: pager@example.com}}
    to: [oncall@example.com]
    rate_limit: {{per_minute: 5}}
escalation_policies:
  - id: default
    levels: [{{after: 0s, notify: [{{channel: ops-hook}}]}}]
routes:
  - policy: default
"""


async def test_a_digest_reaches_a_webhook_teams_and_email_in_each_ones_shape(
    hook: Receiver, teams: Fake, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    config = load_paging_config(_config(port, hook.url), "digest.yaml")
    environ = {"HOOK_SECRET": "a-signing-secret-of-some-length", "TEAMS_URL": teams.url}
    outbox = OutboxDispatcher(lambda: config, environ=environ)
    try:
        to_hook = _digest("ops-hook", "ops-hook", 17)
        to_teams = _digest("ops-teams", "ops-teams", 30)
        to_mail = _digest("mail", "oncall@example.com", 3)
        outcomes = [await outbox.send(n) for n in (to_hook, to_teams, to_mail)]
    finally:
        await outbox.close()
    assert [(o.sent, o.detail) for o in outcomes][:2] == [(True, "HTTP 200"), (True, "HTTP 202")]
    assert outcomes[2].sent

    [request] = hook.received
    assert request.headers["webhook-id"] == to_hook.id
    body = json.loads(request.body)
    assert (body["type"], body["version"], body["timestamp"]) == (
        "digest", 1, "2026-03-02T09:00:02.118Z",
    )  # fmt: skip
    data = body["data"]
    assert (data["channel_id"], data["per_minute"], data["total"], data["more"]) == (
        "ops-hook", 5, 17, 0,
    )  # fmt: skip
    assert data["title"] == "17 more incidents paged in the last minute"
    assert data["pages"][1] == {
        "notification_id": "ntf_0001",
        "incident_id": "inc_0001",
        "severity": "P1",
        "title": "p99 <latency> & errors on model-1",
        "event": "resolved",
    }

    assert teams.problems == []
    card = teams.last["attachments"][0]["content"]
    texts = [block.get("text", "") for block in card["body"][1:]]
    assert card["body"][0]["items"][0]["text"] == "30 more incidents paged in the last minute"
    # Titles are escaped as on every Teams card: `<latency>` shows as written, not as markup.
    assert texts[0] == "P3 inc\\_0000: p99 \\<latency\\> & errors on model-0"
    assert texts[1] == "P1 inc\\_0001: p99 \\<latency\\> & errors on model-1 (resolved)"
    assert texts[MAX_LISTED] == f"and {30 - MAX_LISTED} more"
    assert texts[-1].startswith("Channel ops-teams sends at most 5 messages a minute")

    [mail] = box.received
    assert mail.rcpt_tos == ["oncall@example.com"]
    assert mail.message["Subject"] == "3 more incidents paged in the last minute"
    text = mail.message.get_body(("plain",))
    html = mail.message.get_body(("html",))
    assert text is not None and html is not None
    assert "- P1 inc_0001: p99 <latency> & errors on model-1 (resolved)" in text.get_content()
    assert "p99 &lt;latency&gt; &amp; errors" in html.get_content()


async def test_a_pagerduty_channel_fails_a_digest_rather_than_send_it_as_one_incident() -> None:
    config = load_paging_config(
        """
channels:
  - {id: pd, type: pagerduty, routing_key_env: PD_KEY, url: "http://127.0.0.1:9/v2/enqueue"}
escalation_policies:
  - id: default
    levels: [{after: 0s, notify: [{channel: pd}]}]
routes:
  - policy: default
""",
        "pd.yaml",
    )
    outbox = OutboxDispatcher(lambda: config, environ={"PD_KEY": "k" * 32})
    try:
        outcome = await outbox.send(_digest("pd", "pd", 2))
    finally:
        await outbox.close()
    assert (outcome.sent, outcome.retry) == (False, False)
    assert "PagerDuty takes one event per incident, not a digest" in outcome.detail
