"""A channel's `on` (which changes of an incident it paged it is told about) and the webhook
and email channels' templates in the paging file: defaults, and each mistake with its line
and key path."""

from __future__ import annotations

import pytest

from incident_manager.domain.paging.model import (
    EVERY_EVENT,
    PAGES_ONLY,
    ChannelEvent,
    EmailChannel,
    InvalidPagingConfig,
    MessageTemplate,
    PagingConfig,
    Route,
    SlackChannel,
    WebhookChannel,
)
from incident_manager.paging.file import PagingConfigError, load_paging_config

# Line numbers in the comments: the cases below name them.
BASE = """\
channels:
  - id: ops-slack                 # 2
    type: slack
    url_env: SLACK_OPS_URL
    on: [paged, acknowledged]     # 5
  - id: ops-pd                    # 6
    type: pagerduty
    routing_key_env: PD_ROUTING_KEY
  - id: ops-hook                  # 9
    type: webhook
    url: https://hooks.example.com/x
    template:                     # 12
      title: "{{ incident.title }}"
  - id: mail                      # 14
    type: email
    smtp: {host: 127.0.0.1, from: incidents@example.com}
    to: [oncall@example.com]
    template:                     # 18
      body: "{{ reason }}"        # 19
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{channel: ops-slack}, {channel: ops-pd}, {channel: ops-hook}, {channel: mail}]
routes:
  - policy: default
"""


def mistakes(text: str) -> list[str]:
    with pytest.raises(PagingConfigError) as raised:
        load_paging_config(text, "paging.yaml")
    return [m.removeprefix("paging.yaml:") for m in raised.value.messages]


def broken(old: str, new: str) -> list[str]:
    assert old in BASE, old
    return mistakes(BASE.replace(old, new, 1))


def test_on_is_read_and_defaults_to_pages_only_but_to_every_change_for_pagerduty() -> None:
    config = load_paging_config(BASE, "paging.yaml")
    slack = config.channel("ops-slack")
    assert slack is not None and slack.on == {ChannelEvent.PAGED, ChannelEvent.ACKNOWLEDGED}
    pagerduty = config.channel("ops-pd")
    assert pagerduty is not None and pagerduty.on == EVERY_EVENT == set(ChannelEvent)
    hook = config.channel("ops-hook")
    assert hook is not None and hook.on == PAGES_ONLY == {ChannelEvent.PAGED}


def test_webhook_and_email_channels_take_a_template() -> None:
    config = load_paging_config(BASE, "paging.yaml")
    hook = config.channel("ops-hook")
    assert isinstance(hook, WebhookChannel)
    assert hook.template == MessageTemplate(title="{{ incident.title }}")
    mail = config.channel("mail")
    assert isinstance(mail, EmailChannel)
    assert mail.template == MessageTemplate(body="{{ reason }}")


def test_an_unknown_event_is_named_with_the_nearest_known_one() -> None:
    assert broken("on: [paged, acknowledged]", "on: [paged, acknowledge]") == [
        "5: channels[0].on[1]: unknown event 'acknowledge' (did you mean 'acknowledged'?); "
        "expected paged, acknowledged, resolved or reopened"
    ]


def test_on_without_paged_is_refused_with_what_to_write() -> None:
    assert broken("on: [paged, acknowledged]", "on: [resolved]") == [
        "5: channels[0].on: must include paged (it lists resolved): a channel is told how the "
        "incidents it paged go on, so it is paged first; e.g. [paged, resolved]"
    ]
    assert broken("on: [paged, acknowledged]", "on: []") == [
        "5: channels[0].on: must include paged (it lists nothing): a channel is told how the "
        "incidents it paged go on, so it is paged first; e.g. [paged, resolved]"
    ]


def test_on_must_be_a_list_of_names() -> None:
    assert broken("on: [paged, acknowledged]", "on: paged") == [
        "5: channels[0].on: expected a list (e.g. [paged, acknowledged, resolved]), got the "
        "string 'paged'"
    ]
    assert broken("on: [paged, acknowledged]", "on: [paged, 3]") == [
        "5: channels[0].on[1]: expected event (paged, acknowledged, resolved or reopened), "
        "got the number 3 (quote it)"
    ]


def test_a_webhook_or_email_template_error_names_the_keys_line_and_the_templates_line() -> None:
    assert broken('body: "{{ reason }}"', 'body: "{{ reason }"') == [
        "19: channels[3].template.body: line 1 of the template: unexpected '}'"
    ]
    assert broken('title: "{{ incident.title }}"', "title: \"{% include 'x' %}\"") == [
        "13: channels[2].template.title: line 1 of the template: include is not allowed in a "
        "message template"
    ]


def test_an_unknown_key_of_a_channel_lists_on_and_template_among_the_expected() -> None:
    assert broken("    template:                     # 18", "    templat:") == [
        "18: channels[3].templat: unknown key 'templat' (did you mean 'template'?); expected "
        "id, type, smtp, to, template, on or rate_limit"
    ]


def test_a_config_built_in_code_refuses_on_without_paged_too() -> None:
    with pytest.raises(InvalidPagingConfig) as raised:
        PagingConfig(
            escalation_policies=(),
            routes=(Route(policy="x"),),
            channels=(
                SlackChannel(id="s", url_env="S_URL", on=frozenset({ChannelEvent.RESOLVED})),
            ),
        )
    assert any(p.path == ("channels", 0, "on") for p in raised.value.problems)
