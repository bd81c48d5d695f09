"""Slack, Teams and PagerDuty channels in the paging file: their keys, their mistakes (each
with its line and key path), and template errors found by `check` with the template's line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from incident_manager.adapters.channels.outbox import channel_settings
from incident_manager.adapters.channels.pagerduty import PagerDutySettings
from incident_manager.adapters.channels.slack import SlackSettings
from incident_manager.adapters.channels.teams import TeamsSettings
from incident_manager.domain.paging.model import (
    PAGERDUTY_EVENTS_URL,
    InvalidPagingConfig,
    MessageTemplate,
    PagerDutyChannel,
    PagingConfig,
    Route,
    SlackChannel,
    TeamsChannel,
)
from incident_manager.paging import main
from incident_manager.paging.file import PagingConfigError, load_paging_config

# Line numbers in the comments: the cases below name them.
BASE = """\
channels:
  - id: ops-slack                 # 2
    type: slack
    url_env: SLACK_OPS_URL        # 4
  - id: ops-teams                 # 5
    type: teams
    url_env: TEAMS_OPS_URL        # 7
    timeout: 5s
  - id: ops-pd                    # 9
    type: pagerduty
    routing_key_env: PD_ROUTING_KEY
    template:                     # 12
      title: "{{ incident.title }}"
      body: |                     # 14
        Paged {{ targets|length }} targets
        because {{ reason }}
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{channel: ops-slack}, {channel: ops-teams}, {channel: ops-pd}]
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


def test_the_three_channel_types_load_with_their_defaults() -> None:
    config = load_paging_config(BASE, "paging.yaml")
    assert config.channel("ops-slack") == SlackChannel(id="ops-slack", url_env="SLACK_OPS_URL")
    assert config.channel("ops-teams") == TeamsChannel(
        id="ops-teams", url_env="TEAMS_OPS_URL", timeout=timedelta(seconds=5)
    )
    assert config.channel("ops-pd") == PagerDutyChannel(
        id="ops-pd",
        routing_key_env="PD_ROUTING_KEY",
        url=PAGERDUTY_EVENTS_URL,
        template=MessageTemplate(
            title="{{ incident.title }}",
            body="Paged {{ targets|length }} targets\nbecause {{ reason }}\n",
        ),
    )


def test_each_configured_channel_becomes_its_senders_settings() -> None:
    config = load_paging_config(BASE, "paging.yaml")
    assert channel_settings(config.channel("ops-slack")) == SlackSettings(  # type: ignore[arg-type]
        "ops-slack", "SLACK_OPS_URL", 10.0, None
    )
    assert channel_settings(config.channel("ops-teams")) == TeamsSettings(  # type: ignore[arg-type]
        "ops-teams", "TEAMS_OPS_URL", 5.0, None
    )
    pd = channel_settings(config.channel("ops-pd"))  # type: ignore[arg-type]
    assert isinstance(pd, PagerDutySettings)
    assert (pd.routing_key_env, pd.url, pd.template) == (
        "PD_ROUTING_KEY",
        PAGERDUTY_EVENTS_URL,
        config.channel("ops-pd").template,  # type: ignore[union-attr]
    )


def test_a_webhook_url_written_in_the_file_is_refused_as_a_secret() -> None:
    assert broken(
        "    url_env: SLACK_OPS_URL", "    url: https://hooks.slack.com/services/T/B/x"
    ) == [
        "4: channels[0].url: a secret must not be written in this file; put it in an "
        "environment variable and give that variable's name as url_env"
    ]


def test_a_routing_key_written_in_the_file_is_refused_as_a_secret() -> None:
    assert broken("    routing_key_env: PD_ROUTING_KEY", "    routing_key: abc123") == [
        "11: channels[2].routing_key: a secret must not be written in this file; put it in an "
        "environment variable and give that variable's name as routing_key_env"
    ]


def test_a_chat_channel_needs_its_url_variable() -> None:
    assert broken("    url_env: TEAMS_OPS_URL        # 7\n", "") == [
        "5: channels[1].url_env: missing required key 'url_env'; expected the environment "
        "variable holding the Teams Workflows webhook URL"
    ]


def test_a_pasted_url_where_a_variable_name_belongs_is_refused() -> None:
    assert broken("url_env: SLACK_OPS_URL", "url_env: https://hooks.slack.com/x") == [
        "4: channels[0].url_env: expected the name of the environment variable that holds the "
        "Slack webhook URL (upper case letters, digits and '_', e.g. OPS_HOOK_SECRET), not the "
        "secret itself"
    ]


def test_a_pagerduty_url_must_be_http() -> None:
    assert broken(
        "    routing_key_env: PD_ROUTING_KEY\n",
        "    routing_key_env: PD_ROUTING_KEY\n    url: events.pagerduty.com\n",
    ) == [
        "12: channels[2].url: 'events.pagerduty.com' is not an http(s) URL; expected e.g. "
        "https://events.pagerduty.com/v2/enqueue"
    ]


def test_an_unknown_key_of_a_slack_channel_is_named_with_a_suggestion() -> None:
    assert broken("    url_env: SLACK_OPS_URL", "    url_env: SLACK_OPS_URL\n    timout: 5s") == [
        "5: channels[0].timout: unknown key 'timout' (did you mean 'timeout'?); expected id, "
        "type, url_env, timeout, template, on or rate_limit"
    ]


def test_a_template_syntax_error_names_the_keys_line_and_the_templates_line() -> None:
    assert broken("because {{ reason }}", "because {{ reason }") == [
        "14: channels[2].template.body: line 2 of the template: unexpected '}'"
    ]


def test_a_template_the_sandbox_would_refuse_is_found_at_load() -> None:
    assert broken('title: "{{ incident.title }}"', "title: \"{% include 'x' %}\"") == [
        "13: channels[2].template.title: line 1 of the template: include is not allowed in a "
        "message template"
    ]


def test_a_template_over_the_size_cap_is_refused() -> None:
    assert broken('"{{ incident.title }}"', '"' + "x" * 4001 + '"') == [
        "13: channels[2].template.title: the template has 4001 characters; at most 4000"
    ]


def test_a_template_needs_a_title_or_a_body_and_only_those() -> None:
    empty = BASE.replace(
        '      title: "{{ incident.title }}"\n      body: |                     # 14\n'
        "        Paged {{ targets|length }} targets\n        because {{ reason }}\n",
        "      {}\n",
    )
    assert mistakes(empty) == [
        "12: channels[2].template: expected title, body or both (Jinja2 templates)"
    ]
    assert broken("      title:", "      subject:")[0].startswith(
        "13: channels[2].template.subject: unknown key 'subject'; expected title or body"
    )
    assert broken('title: "{{ incident.title }}"', "title: 42") == [
        "13: channels[2].template.title: expected a Jinja2 template (a string), got the number "
        "42 (quote it)"
    ]


def test_a_config_built_in_code_checks_its_templates_too() -> None:
    with pytest.raises(InvalidPagingConfig, match=r"channels\[0\]\.template\.body: line 1"):
        PagingConfig(
            channels=(
                SlackChannel(id="s", url_env="S_URL", template=MessageTemplate(body="{% if %}")),
            ),
            escalation_policies=(),
            routes=(Route("x"),),
        )


def test_check_reports_a_template_error_with_the_file_and_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "paging.yaml"
    bad.write_text(BASE.replace("{{ targets|length }}", "{{ targets|length }"), encoding="utf-8")
    assert main(["check", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad}:14: channels[2].template.body: line 1 of the template: unexpected '}}'"
    ]
