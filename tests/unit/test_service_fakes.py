"""The fakes of Slack, Teams and PagerDuty catch what the services would refuse: a fake that
passes everything would make the channel tests prove nothing."""

from __future__ import annotations

import copy
from typing import Any

from incident_manager.adapters.channels.pagerduty import pagerduty_event
from incident_manager.adapters.channels.slack import slack_payload
from incident_manager.adapters.channels.teams import teams_payload
from tests.support.pages import page
from tests.support.services import (
    ROUTING_KEY,
    pagerduty_problems,
    slack_problems,
    teams_problems,
)


def test_our_default_messages_pass_every_check() -> None:
    assert slack_problems(slack_payload(page())) == []
    assert teams_problems(teams_payload(page()), 1000) == []
    assert pagerduty_problems(pagerduty_event(page(), ROUTING_KEY), 1000) == []


def test_the_slack_fake_refuses_long_headers_raw_markup_and_a_missing_text() -> None:
    message: Any = slack_payload(page())
    long_header = copy.deepcopy(message)
    long_header["attachments"][0]["blocks"][0]["text"]["text"] = "x" * 151
    assert slack_problems(long_header) == [
        "attachments[0].blocks[0]: text must be 1-150 characters"
    ]
    raw = copy.deepcopy(message)
    raw["attachments"][0]["blocks"][1]["text"]["text"] = "a <b> & c"
    assert [p.split(":")[1] for p in slack_problems(raw)] == [
        " a < or > that is neither a link nor escaped",
        " an unescaped & in 'a <b> & c'",
    ]
    del message["text"]
    assert slack_problems(message) == ["text (the notification line) must be 1-40000 characters"]


def test_the_teams_fake_refuses_a_card_without_its_required_keys() -> None:
    message: Any = teams_payload(page())
    del message["attachments"][0]["content"]["version"]
    message["attachments"][0]["content"]["type"] = "MessageCard"
    assert teams_problems(message, 1000) == [
        "card.type must be AdaptiveCard",
        "card.version must be a version string such as 1.4",
    ]
    assert teams_problems(teams_payload(page()), 29 * 1024) == [
        "the message is 29696 bytes; Teams takes at most 28 KB"
    ]


def test_the_pagerduty_fake_refuses_an_event_without_its_required_fields() -> None:
    event: Any = pagerduty_event(page(), ROUTING_KEY)
    del event["payload"]["source"]
    event["payload"]["severity"] = "P1"
    event["dedup_key"] = "k" * 256
    assert pagerduty_problems(event, 1000) == [
        "dedup_key must be 1-255 characters",
        "payload.source is required",
        "payload.severity must be critical, error, warning or info",
    ]
