"""The `rate_limit` key of a channel: read, checked with the line and key of each mistake."""

from __future__ import annotations

import pytest

from incident_manager.domain.paging.model import RateLimit
from incident_manager.paging.file import PagingConfigError, load_paging_config

FILE = """\
channels:
  - id: ops-hook
    type: webhook
    url: http://127.0.0.1:9/hook
    {hook}
  - id: ops-pd
    type: pagerduty
    routing_key_env: PD_KEY
    {pd}
escalation_policies:
  - id: default
    levels: [{{after: 0s, notify: [{{channel: ops-hook}}, {{channel: ops-pd}}]}}]
routes:
  - policy: default
"""


def mistakes(hook: str, pd: str = "") -> list[str]:
    with pytest.raises(PagingConfigError) as caught:
        load_paging_config(FILE.format(hook=hook, pd=pd), "paging.yaml")
    return list(caught.value.messages)


def test_a_channel_without_rate_limit_has_no_limit_and_one_with_it_keeps_it() -> None:
    config = load_paging_config(FILE.format(hook="rate_limit: {per_minute: 5}", pd=""), "p.yaml")
    assert [c.rate_limit for c in config.channels] == [RateLimit(5), None]


@pytest.mark.parametrize(
    ("hook", "expected"),
    [
        (
            "rate_limit: {per_minute: 0}",
            "paging.yaml:5: channels[0].rate_limit.per_minute: 0 is not a rate; expected a"
            " whole number of messages a minute, at least 1",
        ),
        (
            "rate_limit: {per_minute: 2.5}",
            "paging.yaml:5: channels[0].rate_limit.per_minute: expected a whole number of"
            " messages a minute, at least 1, got the number 2.5",
        ),
        (
            "rate_limit: {}",
            "paging.yaml:5: channels[0].rate_limit.per_minute: missing required key"
            " 'per_minute'; expected a whole number of messages a minute, at least 1",
        ),
        (
            "rate_limit: 5",
            "paging.yaml:5: channels[0].rate_limit: expected a mapping (key: value), got the"
            " number 5",
        ),
        (
            "rate_limit: {per_minute: 5, burst: 10}",
            "paging.yaml:5: channels[0].rate_limit.burst: unknown key 'burst'; expected per_minute",
        ),
    ],
)
def test_a_wrong_rate_limit_is_reported_with_its_line_and_key(hook: str, expected: str) -> None:
    assert mistakes(hook) == [expected]


def test_a_pagerduty_channel_takes_no_rate_limit_and_says_why() -> None:
    assert mistakes("", "rate_limit: {per_minute: 5}") == [
        "paging.yaml:9: channels[1].rate_limit: pagerduty channels take no rate_limit:"
        " PagerDuty needs one event per incident (dedup_key) and groups alerts itself; use its"
        " Alert Grouping instead"
    ]
