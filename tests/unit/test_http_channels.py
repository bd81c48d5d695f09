"""HTTP channels without a network: what each status means, the Standard Webhooks signature,
and which parts of a URL are secret."""

from __future__ import annotations

import pytest

from incident_manager.adapters.channels.base import Outcome
from incident_manager.adapters.channels.http import HttpResponse, classify_http_status
from incident_manager.adapters.channels.webhook import sign, signing_key, url_secrets


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SENT),
        (202, Outcome.SENT),
        (204, Outcome.SENT),
        (301, Outcome.FAILED),
        (308, Outcome.FAILED),
        (400, Outcome.FAILED),
        (401, Outcome.FAILED),
        (404, Outcome.FAILED),
        (408, Outcome.RETRY),
        (410, Outcome.FAILED),
        (422, Outcome.FAILED),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (504, Outcome.RETRY),
    ],
)
def test_each_status_class_is_handled_as_standard_webhooks_suggests(
    status: int, outcome: Outcome
) -> None:
    result = classify_http_status(HttpResponse(status))
    assert (result.outcome, result.status) == (outcome, status)
    assert result.disable_channel == (status == 410)


def test_a_redirect_names_only_the_origin_it_points_to() -> None:
    result = classify_http_status(
        HttpResponse(302, {"location": "https://other.example.com:8443/in?token=abc"})
    )
    assert result.outcome is Outcome.FAILED
    assert "https://other.example.com:8443" in result.detail
    assert "token" not in result.detail and "/in" not in result.detail


def test_a_failure_detail_quotes_the_start_of_the_answer_as_one_line() -> None:
    result = classify_http_status(HttpResponse(400, body=b'{"error":\n"bad\x00 body"}' * 50))
    assert result.detail.startswith('HTTP 400 Bad Request: {"error": "bad body"}')
    assert len(result.detail) < 160


# Signing


def test_the_signature_matches_the_standard_webhooks_published_vector() -> None:
    # The vector of the Standard Webhooks reference libraries' tests.
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_secret_without_the_whsec_prefix_is_used_as_its_bytes() -> None:
    assert signing_key("plain secret") == b"plain secret"
    assert signing_key("whsec_" + "c2VjcmV0LWJ5dGVz") == b"secret-bytes"


def test_the_secret_parts_of_a_webhook_url_are_found() -> None:
    assert set(url_secrets("https://u:pw-123@h.example.com/p?token=tok-9&sig=zz")) == {
        "pw-123",
        "tok-9",
        "zz",
    }
    assert url_secrets("http://127.0.0.1:8099/hook") == ()
