"""The Slack, Teams and PagerDuty channels against local fakes of the three services
(tests/support/services.py: real HTTP on 127.0.0.1, port 0), which check every request
against what each service documents and answer as it would."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from incident_manager.adapters.channels.base import (
    Delivery,
    EventKind,
    Outcome,
    PageContent,
    page_content_to_dict,
)
from incident_manager.adapters.channels.http import HttpClient
from incident_manager.adapters.channels.outbox import OutboxDispatcher
from incident_manager.adapters.channels.pagerduty import PagerDutyChannel, PagerDutySettings
from incident_manager.adapters.channels.slack import SlackChannel, SlackSettings
from incident_manager.adapters.channels.teams import TeamsChannel, TeamsSettings
from incident_manager.domain.paging.ledger import Notification
from incident_manager.domain.paging.model import MessageTemplate, TargetKind
from incident_manager.paging.file import load_paging_config
from tests.support.pages import OPENED, page
from tests.support.services import (
    ROUTING_KEY,
    SLACK_PATH,
    Fake,
    fake_pagerduty,
    fake_slack,
    fake_teams,
    json_answer,
    text_answer,
)


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    shared = HttpClient()
    try:
        yield shared
    finally:
        await shared.close()


@pytest.fixture
async def slack() -> AsyncIterator[Fake]:
    async with fake_slack() as fake:
        yield fake


@pytest.fixture
async def teams() -> AsyncIterator[Fake]:
    async with fake_teams() as fake:
        yield fake


@pytest.fixture
async def pagerduty() -> AsyncIterator[Fake]:
    async with fake_pagerduty() as fake:
        yield fake


def slack_delivery(
    content: PageContent | None = None, template: MessageTemplate | None = None
) -> Delivery[SlackSettings]:
    settings = SlackSettings("ops-slack", "SLACK_URL", timeout=5.0, template=template)
    return Delivery("ntf_slack1", settings, content or page())


def teams_delivery(
    content: PageContent | None = None, template: MessageTemplate | None = None
) -> Delivery[TeamsSettings]:
    settings = TeamsSettings("ops-teams", "TEAMS_URL", timeout=5.0, template=template)
    return Delivery("ntf_teams1", settings, content or page())


def pd_delivery(
    url: str, content: PageContent | None = None, template: MessageTemplate | None = None
) -> Delivery[PagerDutySettings]:
    settings = PagerDutySettings("ops-pd", "PD_KEY", url=url, timeout=5.0, template=template)
    return Delivery("ntf_pd1", settings, content or page())


def all_text(value: Any) -> str:
    """Every string in a JSON value, joined, to look for words wherever the layout put them."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(all_text(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(all_text(v) for v in value)
    return ""


# Slack


async def test_a_slack_page_is_a_message_slack_accepts_with_every_fact_of_the_page(
    slack: Fake, client: HttpClient
) -> None:
    channel = SlackChannel(client, environ={"SLACK_URL": slack.url})
    result = await channel.send(slack_delivery(page(assignees=("carol",))))
    assert (result.outcome, result.status, result.detail) == (Outcome.SENT, 200, "HTTP 200 ok")
    assert slack.problems == []
    message = slack.last
    assert message["text"] == "[P1] p99 latency above 2s on gpt-4o (inc-4711)"
    attachment = message["attachments"][0]
    assert attachment["color"] == "#d9480f"
    blocks = attachment["blocks"]
    assert blocks[0] == {
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": "[P1] p99 latency above 2s on gpt-4o",
            "emoji": True,
        },
    }
    text = all_text(blocks)
    for fact in (
        "*Paged at level 1, round 1: new incident*",
        "*Paging:* Alice Ng (on call for primary), ops-hook",
        "*Severity*\nP1",
        "*State*\nDETECTED",
        "*Source*\nllm-sentinel",
        "*Alerts*\n3",
        "*Assignees*\ncarol",
        "<https://runbooks.example.com/latency|https://runbooks.example.com/latency>",
        "<https://grafana.example.com/d/llm|dashboard>",
        "Incident inc-4711. Acknowledge it to stop paging.",
    ):
        assert fact in text


async def test_slack_values_cannot_add_links_or_mentions(slack: Fake, client: HttpClient) -> None:
    channel = SlackChannel(client, environ={"SLACK_URL": slack.url})
    hostile = page(
        source="<!channel> & <https://evil.example|click>",
        runbook_url="javascript:alert(1)",
    )
    result = await channel.send(slack_delivery(hostile))
    assert result.outcome is Outcome.SENT
    assert slack.problems == []  # the fake refuses an unescaped < > or &
    text = all_text(slack.last["attachments"][0]["blocks"])
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in text
    assert "<javascript" not in text


@pytest.mark.parametrize(
    ("status", "word", "outcome"),
    [
        (400, "invalid_payload", Outcome.FAILED),
        (400, "user_not_found", Outcome.FAILED),
        (403, "action_prohibited", Outcome.FAILED),
        (404, "channel_not_found", Outcome.FAILED),
        (429, "rate_limited", Outcome.RETRY),
        (500, "rollup_error", Outcome.RETRY),
        (503, "service unavailable", Outcome.RETRY),
    ],
)
async def test_slack_answers_are_final_or_retried_as_slack_documents_them(
    slack: Fake, client: HttpClient, status: int, word: str, outcome: Outcome
) -> None:
    slack.then(text_answer(status, word))
    result = await SlackChannel(client, environ={"SLACK_URL": slack.url}).send(slack_delivery())
    assert (result.outcome, result.status) == (outcome, status)
    assert word in result.detail
    assert not result.disable_channel


async def test_a_huge_page_is_cut_to_slacks_limits(slack: Fake, client: HttpClient) -> None:
    content = page(
        title="t" * 5000,
        reason="r" * 5000,
        labels={f"label{i}": "v" * 200 for i in range(60)},
        assignees=tuple(f"user{i}" for i in range(500)),
    )
    result = await SlackChannel(client, environ={"SLACK_URL": slack.url}).send(
        slack_delivery(content)
    )
    assert (result.outcome, slack.problems) == (Outcome.SENT, [])
    header = slack.last["attachments"][0]["blocks"][0]["text"]["text"]
    assert len(header) == 150 and header.endswith("…")


async def test_a_slack_429_carries_its_retry_after(slack: Fake, client: HttpClient) -> None:
    slack.then(text_answer(429, "rate_limited", **{"Retry-After": "30"}))
    result = await SlackChannel(client, environ={"SLACK_URL": slack.url}).send(slack_delivery())
    assert (result.outcome, result.retry_after) == (Outcome.RETRY, 30.0)


async def test_an_archived_slack_channel_fails_disables_the_channel_and_is_logged(
    slack: Fake, client: HttpClient, caplog: pytest.LogCaptureFixture
) -> None:
    slack.then(text_answer(410, "channel_is_archived"))
    with caplog.at_level(logging.ERROR, logger="incident_manager.adapters.channels.slack"):
        result = await SlackChannel(client, environ={"SLACK_URL": slack.url}).send(slack_delivery())
    assert (result.outcome, result.status, result.disable_channel) == (Outcome.FAILED, 410, True)
    assert "channel_is_archived" in result.detail
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("SLACK CHANNEL ARCHIVED: paging channel ops-slack")
    assert SLACK_PATH.strip("/") not in record.getMessage()


async def test_a_200_that_is_not_slacks_ok_is_not_taken_for_a_sent_page(
    slack: Fake, client: HttpClient
) -> None:
    slack.then(text_answer(200, "<html>welcome to the proxy</html>"))
    result = await SlackChannel(client, environ={"SLACK_URL": slack.url}).send(slack_delivery())
    assert (result.outcome, result.status) == (Outcome.FAILED, 200)
    assert "not Slack's `ok`" in result.detail


async def test_the_slack_url_never_appears_in_a_detail(slack: Fake, client: HttpClient) -> None:
    wrong = slack.url.replace(SLACK_PATH, "/services/T0000TEST/B0000TEST/wrongtoken0000000000")
    result = await SlackChannel(client, environ={"SLACK_URL": wrong}).send(slack_delivery())
    assert (result.outcome, result.status) == (Outcome.FAILED, 404)
    assert "no_service" in result.detail and "wrongtoken" not in result.detail
    # Nothing listens there: the connection error names the host, not the token.
    gone = "http://127.0.0.1:9/services/T0000TEST/B0000TEST/secrettoken000000"
    result = await SlackChannel(client, environ={"SLACK_URL": gone}).send(slack_delivery())
    assert result.outcome is Outcome.RETRY
    assert "secrettoken" not in result.detail


async def test_an_unset_slack_url_variable_fails_the_page_naming_the_variable(
    client: HttpClient,
) -> None:
    result = await SlackChannel(client, environ={}).send(slack_delivery())
    assert result.outcome is Outcome.FAILED
    assert result.detail == (
        "channel ops-slack: environment variable SLACK_URL (the Slack incoming webhook URL) "
        "is not set"
    )


async def test_a_slack_template_writes_the_title_and_body(slack: Fake, client: HttpClient) -> None:
    template = MessageTemplate(
        title="{{ incident.severity }} on {{ incident.labels.region }}: {{ incident.title }}",
        body=(
            "*{{ reason }}* (level {{ level }}, round {{ round }})\n"
            "{% for t in targets %}• {{ t.display }}\n{% endfor %}"
            "<{{ incident.runbook_url }}|runbook> · source {{ incident.source }}"
        ),
    )
    content = page(source="a&b")
    result = await SlackChannel(client, environ={"SLACK_URL": slack.url}).send(
        slack_delivery(content, template)
    )
    assert (result.outcome, result.detail) == (Outcome.SENT, "HTTP 200 ok")
    assert slack.problems == []
    blocks = slack.last["attachments"][0]["blocks"]
    assert blocks[0]["text"]["text"] == "P1 on eu-west-1: p99 latency above 2s on gpt-4o"
    assert blocks[1]["text"]["text"] == (
        "*new incident* (level 1, round 1)\n• Alice Ng (on call for primary)\n• ops-hook\n"
        "<https://runbooks.example.com/latency|runbook> · source a&amp;b"
    )
    assert blocks[-1]["type"] == "context"  # the incident id stays


async def test_a_slack_template_that_fails_at_send_time_sends_the_default_and_says_so(
    slack: Fake, client: HttpClient
) -> None:
    template = MessageTemplate(title="{{ incident.title }}", body="line one\n{{ incident.nope }}")
    result = await SlackChannel(client, environ={"SLACK_URL": slack.url}).send(
        slack_delivery(template=template)
    )
    assert result.outcome is Outcome.SENT
    assert result.detail == (
        "HTTP 200 ok; body template failed (line 2: 'dict object' has no attribute 'nope'); "
        "sent the default message"
    )
    assert slack.problems == []
    header = slack.last["attachments"][0]["blocks"][0]["text"]["text"]
    assert header == "[P1] p99 latency above 2s on gpt-4o"


# Teams


async def test_a_teams_page_is_an_adaptive_card_workflows_accepts(
    teams: Fake, client: HttpClient
) -> None:
    result = await TeamsChannel(client, environ={"TEAMS_URL": teams.url}).send(teams_delivery())
    assert (result.outcome, result.status) == (Outcome.SENT, 202)
    assert teams.problems == []
    attachment = teams.last["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    heading = card["body"][0]["items"][0]
    assert (heading["text"], heading["color"]) == (
        "\\[P1\\] p99 latency above 2s on gpt-4o",
        "Attention",
    )
    facts = {
        f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]
    }
    assert (
        facts["Severity"] == "P1" and facts["Alerts"] == "3" and facts["Source"] == "llm-sentinel"
    )
    assert facts["Paging"] == "Alice Ng (on call for primary), ops-hook"
    text = all_text(card["body"])
    assert "Paged at level 1, round 1: new incident" in text
    assert "Incident inc-4711. Acknowledge it to stop paging." in text
    assert [(a["title"], a["url"]) for a in card["actions"]] == [
        ("Runbook", "https://runbooks.example.com/latency"),
        ("dashboard", "https://grafana.example.com/d/llm"),
    ]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, Outcome.FAILED),
        (401, Outcome.FAILED),
        (404, Outcome.FAILED),
        (429, Outcome.RETRY),
        (502, Outcome.RETRY),
    ],
)
async def test_teams_answers_are_final_or_retried(
    teams: Fake, client: HttpClient, status: int, outcome: Outcome
) -> None:
    teams.then(json_answer(status, {"error": {"code": "X", "message": "said no"}}))
    result = await TeamsChannel(client, environ={"TEAMS_URL": teams.url}).send(teams_delivery())
    assert (result.outcome, result.status) == (outcome, status)


async def test_the_teams_signature_never_appears_in_a_detail(
    teams: Fake, client: HttpClient
) -> None:
    teams.then(json_answer(500, {"error": "boom"}))
    result = await TeamsChannel(client, environ={"TEAMS_URL": teams.url}).send(teams_delivery())
    assert result.outcome is Outcome.RETRY
    assert "Zm9vYmFy" not in result.detail and "/workflows/" not in result.detail


async def test_a_huge_page_still_makes_a_card_under_the_teams_size_limit(
    teams: Fake, client: HttpClient
) -> None:
    content = page(
        title="t" * 5000,
        labels={f"label{i}": "v" * 200 for i in range(60)},
        reason="r" * 5000,
    )
    result = await TeamsChannel(client, environ={"TEAMS_URL": teams.url}).send(
        teams_delivery(content)
    )
    assert result.outcome is Outcome.SENT
    assert teams.problems == []


async def test_a_teams_template_replaces_the_text_and_keeps_the_buttons(
    teams: Fake, client: HttpClient
) -> None:
    template = MessageTemplate(body="**{{ incident.title }}** needs {{ targets[0].name }}")
    result = await TeamsChannel(client, environ={"TEAMS_URL": teams.url}).send(
        teams_delivery(template=template)
    )
    assert (result.outcome, teams.problems) == (Outcome.SENT, [])
    card = teams.last["attachments"][0]["content"]
    assert card["body"][1]["text"] == "**p99 latency above 2s on gpt-4o** needs Alice Ng"
    assert len(card["actions"]) == 2


# PagerDuty


async def test_a_page_triggers_a_pagerduty_alert_deduplicated_by_incident(
    pagerduty: Fake, client: HttpClient
) -> None:
    channel = PagerDutyChannel(client, environ={"PD_KEY": ROUTING_KEY})
    result = await channel.send(pd_delivery(pagerduty.url))
    assert (result.outcome, result.status) == (Outcome.SENT, 202)
    assert result.detail == "HTTP 202: Event processed"
    assert pagerduty.problems == []
    event = pagerduty.last
    assert {k: event[k] for k in ("routing_key", "event_action", "dedup_key", "client")} == {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "inc-4711",
        "client": "incident-manager",
    }
    payload = event["payload"]
    assert (payload["summary"], payload["source"], payload["severity"]) == (
        "[P1] p99 latency above 2s on gpt-4o",
        "llm-sentinel",
        "error",
    )
    assert payload["custom_details"]["paging"] == ["Alice Ng (on call for primary)", "ops-hook"]
    assert event["links"][0] == {"href": "https://runbooks.example.com/latency", "text": "Runbook"}


@pytest.mark.parametrize(
    ("severity", "expected"),
    [("P0", "critical"), ("P1", "error"), ("P2", "warning"), ("P3", "info"), ("P4", "info")],
)
async def test_severities_map_to_pagerdutys_four(
    pagerduty: Fake, client: HttpClient, severity: str, expected: str
) -> None:
    channel = PagerDutyChannel(client, environ={"PD_KEY": ROUTING_KEY})
    await channel.send(pd_delivery(pagerduty.url, page(severity=severity)))
    assert pagerduty.problems == []
    assert pagerduty.last["payload"]["severity"] == expected


@pytest.mark.parametrize(
    ("event", "action"), [(EventKind.ACKNOWLEDGED, "acknowledge"), (EventKind.RESOLVED, "resolve")]
)
async def test_an_acknowledgement_or_resolution_is_the_matching_pagerduty_event(
    pagerduty: Fake, client: HttpClient, event: EventKind, action: str
) -> None:
    channel = PagerDutyChannel(client, environ={"PD_KEY": ROUTING_KEY})
    result = await channel.send(pd_delivery(pagerduty.url, page(event=event)))
    assert result.outcome is Outcome.SENT
    assert pagerduty.problems == []
    assert pagerduty.last == {
        "routing_key": ROUTING_KEY,
        "event_action": action,
        "dedup_key": "inc-4711",
    }


async def test_an_event_pagerduty_refuses_is_final_and_quotes_its_errors(
    pagerduty: Fake, client: HttpClient
) -> None:
    channel = PagerDutyChannel(client, environ={"PD_KEY": "not-the-key"})
    result = await channel.send(pd_delivery(pagerduty.url))
    assert (result.outcome, result.status) == (Outcome.FAILED, 400)
    assert result.detail == (
        "HTTP 400: PagerDuty refused the event: Event object is invalid; routing_key is missing "
        "or not the integration's key"
    )


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(429, Outcome.RETRY), (500, Outcome.RETRY), (503, Outcome.RETRY), (404, Outcome.FAILED)],
)
async def test_pagerduty_overload_and_errors_are_retried(
    pagerduty: Fake, client: HttpClient, status: int, outcome: Outcome
) -> None:
    pagerduty.then(json_answer(status, {"status": "throttled"}, **{"Retry-After": "12"}))
    channel = PagerDutyChannel(client, environ={"PD_KEY": ROUTING_KEY})
    result = await channel.send(pd_delivery(pagerduty.url))
    assert (result.outcome, result.status) == (outcome, status)
    if outcome is Outcome.RETRY:
        assert result.retry_after == 12.0


async def test_the_routing_key_never_appears_in_a_detail(
    pagerduty: Fake, client: HttpClient
) -> None:
    pagerduty.then(text_answer(500, f"internal error for key {ROUTING_KEY}"))
    channel = PagerDutyChannel(client, environ={"PD_KEY": ROUTING_KEY})
    result = await channel.send(pd_delivery(pagerduty.url))
    assert result.outcome is Outcome.RETRY
    assert ROUTING_KEY not in result.detail and "[redacted]" in result.detail


async def test_a_pagerduty_template_writes_the_summary_and_a_message(
    pagerduty: Fake, client: HttpClient
) -> None:
    template = MessageTemplate(
        title="{{ incident.title|upper }} ({{ incident.alert_count }} alerts)",
        body="Paged {{ targets|map(attribute='id')|join(', ') }}",
    )
    channel = PagerDutyChannel(client, environ={"PD_KEY": ROUTING_KEY})
    result = await channel.send(pd_delivery(pagerduty.url, template=template))
    assert (result.outcome, pagerduty.problems) == (Outcome.SENT, [])
    payload = pagerduty.last["payload"]
    assert payload["summary"] == "P99 LATENCY ABOVE 2S ON GPT-4O (3 alerts)"
    assert payload["custom_details"]["message"] == "Paged alice, ops-hook"


# Through the outbox, from a configuration file


CONFIG = """\
channels:
  - {id: ops-slack, type: slack, url_env: SLACK_URL}
  - id: ops-teams
    type: teams
    url_env: TEAMS_URL
    template: {title: "{{ incident.id }}: {{ incident.title }}"}
  - {id: ops-pd, type: pagerduty, routing_key_env: PD_KEY, url: "PD_URL", timeout: 3s}
escalation_policies:
  - id: default
    levels: [{after: 0s, notify: [{channel: ops-slack}, {channel: ops-teams}, {channel: ops-pd}]}]
routes:
  - policy: default
"""


async def test_the_outbox_sends_configured_slack_teams_and_pagerduty_channels(
    slack: Fake, teams: Fake, pagerduty: Fake
) -> None:
    config = load_paging_config(CONFIG.replace("PD_URL", pagerduty.url), "paging.yaml")
    environ = {"SLACK_URL": slack.url, "TEAMS_URL": teams.url, "PD_KEY": ROUTING_KEY}
    outbox = OutboxDispatcher(lambda: config, environ=environ)
    try:
        for channel_id in ("ops-slack", "ops-teams", "ops-pd"):
            outcome = await outbox.send(notification(channel_id))
            assert (outcome.sent, outcome.retry) == (True, False), outcome.detail
    finally:
        await outbox.close()
    assert (slack.problems, teams.problems, pagerduty.problems) == ([], [], [])
    assert len(slack.requests) == len(teams.requests) == len(pagerduty.requests) == 1
    card = teams.last["attachments"][0]["content"]
    assert card["body"][0]["items"][0]["text"] == "inc-4711: p99 latency above 2s on gpt-4o"
    assert pagerduty.last["dedup_key"] == "inc-4711"


def notification(channel_id: str) -> Notification:
    """A stored notification through one channel, as the worker hands it to the outbox."""
    return Notification(
        id=f"ntf_{channel_id.replace('-', '_')}",
        incident_id="inc-4711",
        policy_id="default",
        level=1,
        round=1,
        target_kind=TargetKind.CHANNEL,
        target_id=channel_id,
        user_id="",
        channel_id=channel_id,
        channel_type="",
        recipient="",
        reason="new incident",
        create_time=OPENED,
        content=page_content_to_dict(page()),
        attempts=1,
    )
