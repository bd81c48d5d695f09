"""The channels' contract without a network: page content, deliveries, redaction, the retry
schedule and the default messages. HTTP status handling and signing are in
test_http_channels.py; the channels against real servers in tests/integration/."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from incident_manager.adapters.channels.base import (
    MAX_DETAIL,
    AttemptResult,
    Delivery,
    EventKind,
    Link,
    PageTarget,
    Redactor,
    page_content_from_dict,
    page_content_to_dict,
)
from incident_manager.adapters.channels.render import (
    email_subject,
    render_email,
    webhook_body,
    webhook_payload,
)
from incident_manager.adapters.channels.retry import (
    DEFAULT_POLICY,
    RetryPolicy,
    backoff,
    next_retry,
    parse_retry_after,
)
from tests.support.pages import page

# The contract


def test_page_content_survives_the_outbox_round_trip_unchanged() -> None:
    content = page(event=EventKind.REOPENED, level=2, round=3, assignees=("bob",))
    stored = json.loads(json.dumps(page_content_to_dict(content)))
    assert page_content_from_dict(stored) == content


def test_page_content_refuses_times_without_a_zone() -> None:
    with pytest.raises(ValueError, match="time zone"):
        page(opened_at=datetime(2026, 3, 2, 9, 0))


def test_page_content_is_not_changed_by_the_callers_dict_changing_later() -> None:
    labels = {"region": "eu-west-1"}
    content = page(labels=labels)
    labels["region"] = "us-east-1"
    assert content.labels["region"] == "eu-west-1"
    with pytest.raises(TypeError):
        content.labels["region"] = "x"  # type: ignore[index]


@pytest.mark.parametrize("bad", ["", "a.b", "id with space", "x" * 129, "ünï"])
def test_a_delivery_id_that_could_break_the_signed_content_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="delivery id"):
        Delivery(bad, object(), page())


def test_a_target_found_through_a_schedule_says_so() -> None:
    assert PageTarget("user", "alice", "Alice Ng", via="primary").display == (
        "Alice Ng (on call for primary)"
    )
    assert PageTarget("channel", "ops-hook").display == "ops-hook"


# Redaction


def test_known_secrets_are_removed_from_a_detail() -> None:
    redact = Redactor(["s3cr3t-signing-key", None, "ab"])
    assert redact("HTTP 400: bad key s3cr3t-signing-key") == "HTTP 400: bad key [redacted]"
    # Values too short to search for are left alone rather than garbling the text.
    assert redact("about") == "about"


def test_url_passwords_and_query_values_are_redacted_wherever_they_appear() -> None:
    result = AttemptResult.failed(
        "cannot reach https://ops:hunter2@hooks.example.com/in?token=abc123&x=1 now"
    )
    assert "hunter2" not in result.detail and "abc123" not in result.detail
    assert "https://ops:[redacted]@hooks.example.com/in?token=[redacted]&x=[redacted]" in (
        result.detail
    )


def test_a_detail_is_one_line_of_bounded_length() -> None:
    result = AttemptResult.retry("line one\nline two " + "x" * 1000)
    assert "\n" not in result.detail
    assert len(result.detail) == MAX_DETAIL
    assert result.detail.startswith("line one line two")


# Retry schedule


def test_each_wait_lies_in_the_upper_half_of_its_exponential_ceiling() -> None:
    rng = random.Random(7)
    ceilings = [10, 30, 90, 270, 810, 900, 900, 900]
    for attempt, ceiling in enumerate(ceilings, start=1):
        waits = [backoff(attempt, None, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (attempt, min(waits), max(waits))
        # The jitter really spreads: not every draw lands on the same value.
        assert max(waits) - min(waits) > ceiling / 10


def test_the_same_seed_gives_the_same_schedule() -> None:
    first = [backoff(n, None, random.Random(42)) for n in range(1, 8)]
    again = [backoff(n, None, random.Random(42)) for n in range(1, 8)]
    assert first == again


def test_retry_after_is_a_lower_bound_but_is_capped() -> None:
    rng = random.Random(1)
    assert backoff(1, 120.0, rng) == 120.0
    assert backoff(1, 86_400.0, rng) == DEFAULT_POLICY.max_delay
    # A Retry-After shorter than the backoff does not make us hurry.
    assert backoff(4, 1.0, rng) >= 135


def test_a_huge_attempt_number_stays_at_the_cap() -> None:
    assert backoff(10_000, None, random.Random(0)) <= DEFAULT_POLICY.max_delay


def test_the_default_schedule_ends_after_eight_attempts_within_the_hour() -> None:
    for seed in range(50):
        rng = random.Random(seed)
        age, attempt = 0.0, 1
        result = AttemptResult.retry("HTTP 503", 503)
        while (delay := next_retry(result, attempt=attempt, age=age, rng=rng)) is not None:
            age += delay
            attempt += 1
        assert attempt == 8, seed
        assert 25 * 60 <= age <= 51 * 60, (seed, age)


def test_a_retry_that_would_start_after_the_age_limit_is_the_end() -> None:
    rng = random.Random(3)
    result = AttemptResult.retry("HTTP 429", 429, retry_after=600)
    assert next_retry(result, attempt=2, age=3300, rng=rng) is None
    assert next_retry(result, attempt=2, age=60, rng=rng) == 600


def test_sent_and_failed_are_never_retried() -> None:
    rng = random.Random(0)
    assert next_retry(AttemptResult.sent("HTTP 200"), attempt=1, age=0, rng=rng) is None
    assert next_retry(AttemptResult.failed("HTTP 400"), attempt=1, age=0, rng=rng) is None


def test_a_policy_can_be_shorter_for_tests_and_benchmarks() -> None:
    policy = RetryPolicy(max_attempts=3, max_age=5, base_delay=0.01, max_delay=0.1)
    rng = random.Random(0)
    result = AttemptResult.retry("x")
    assert next_retry(result, attempt=1, age=0, rng=rng, policy=policy) is not None
    assert next_retry(result, attempt=3, age=0, rng=rng, policy=policy) is None


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Mon, 02 Mar 2026 09:01:30 GMT", now) == 90
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after("Mon, 02 Mar 2026 08:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after(None, now) is None


# Rendering


def test_the_webhook_body_has_the_documented_shape() -> None:
    body = json.loads(webhook_body(page()))
    assert body == {
        "type": "incident.paged",
        "version": 1,
        "timestamp": "2026-03-02T09:00:00.120Z",
        "data": {
            "incident": {
                "id": "inc-4711",
                "title": "p99 latency above 2s on gpt-4o",
                "severity": "P1",
                "state": "DETECTED",
                "source": "llm-sentinel",
                "type": "PERFORMANCE",
                "alert_count": 3,
                "assignees": [],
                "labels": {"region": "eu-west-1"},
                "runbook_url": "https://runbooks.example.com/latency",
                "links": [{"title": "dashboard", "url": "https://grafana.example.com/d/llm"}],
                "opened_at": "2026-03-02T08:59:58.120Z",
            },
            "page": {
                "level": 1,
                "round": 1,
                "reason": "new incident",
                "targets": [
                    {"kind": "user", "id": "alice", "name": "Alice Ng", "via": "primary"},
                    {"kind": "channel", "id": "ops-hook", "name": None, "via": None},
                ],
            },
            "message": {
                "title": "[P1] p99 latency above 2s on gpt-4o",
                "body": "Paged at level 1, round 1: new incident",
            },
        },
    }


def test_the_webhook_body_is_compact_utf8_in_a_stable_key_order() -> None:
    body = webhook_body(page(title="Antwort auf Deutsch: größer"))
    compact = json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False)
    assert body == compact.encode()
    assert "größer".encode() in body
    assert list(webhook_payload(page())) == ["type", "version", "timestamp", "data"]
    assert body == webhook_body(page(title="Antwort auf Deutsch: größer"))


def test_times_in_other_zones_are_sent_in_utc() -> None:
    berlin = timezone(timedelta(hours=1))
    body = webhook_payload(page(occurred_at=datetime(2026, 3, 2, 10, 0, tzinfo=berlin)))
    assert body["timestamp"] == "2026-03-02T09:00:00.000Z"


@pytest.mark.parametrize(
    ("kind", "event_type"),
    [
        (EventKind.PAGED, "incident.paged"),
        (EventKind.ACKNOWLEDGED, "incident.acknowledged"),
        (EventKind.RESOLVED, "incident.resolved"),
        (EventKind.REOPENED, "incident.reopened"),
    ],
)
def test_every_kind_of_change_has_its_event_type(kind: EventKind, event_type: str) -> None:
    assert webhook_payload(page(event=kind))["type"] == event_type


def test_the_subject_names_severity_title_and_incident_on_one_line() -> None:
    assert email_subject(page()) == "[P1] p99 latency above 2s on gpt-4o (inc-4711)"
    assert email_subject(page(title="two\r\nlines", event=EventKind.RESOLVED)) == (
        "[P1] Resolved: two lines (inc-4711)"
    )
    assert len(email_subject(page(title="x" * 5000))) < 200


def test_both_email_bodies_say_who_is_paged_and_why() -> None:
    parts = render_email(page(level=2, round=1, reason="level 2 after 10m"))
    for body in (parts.text, parts.html):
        assert "level 2, round 1: level 2 after 10m" in body
        assert "Alice Ng (on call for primary)" in body
        assert "https://runbooks.example.com/latency" in body
        assert "region=eu-west-1" in body


def test_the_html_part_escapes_every_value_and_links_only_web_urls() -> None:
    parts = render_email(
        page(
            title="<script>alert(1)</script>",
            labels={"q": '"><img src=x>'},
            runbook_url="javascript:alert(2)",
            links=(Link("<b>x</b>", 'https://e.example.com/?a="b"'),),
        )
    )
    assert "<script>" not in parts.html and "&lt;script&gt;" in parts.html
    assert "<img" not in parts.html
    assert 'href="javascript' not in parts.html
    assert "&lt;b&gt;x&lt;/b&gt;" in parts.html
    assert 'href="https://e.example.com/?a=&quot;b&quot;"' in parts.html
    # The text part is text: nothing to escape there.
    assert "<script>alert(1)</script>" in parts.text


def test_an_unpaged_change_does_not_ask_for_an_acknowledgement() -> None:
    parts = render_email(replace(page(), event=EventKind.RESOLVED, reason="resolved by bob"))
    assert "Acknowledge" not in parts.text
    assert "Resolved: resolved by bob" in parts.text
