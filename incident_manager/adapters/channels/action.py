"""Automated actions: a webhook channel called with the body an action's template rendered.

The body was rendered when the level ran and stored with the notification, so every retry
sends the same bytes; this module only sends them. A request is built as a page's is
(`webhook.py`): the channel's `headers`, `webhook-id` (the notification's id, the same on
every retry), `webhook-timestamp` and, when the channel names a `secret_env`,
`webhook-signature` over `{id}.{timestamp}.{body}` with the same key. Only the body and
its type differ:

- `content-type: application/json` when the body parses as JSON;
- `content-type: text/plain; charset=utf-8` otherwise.

Answers are classified like a page's (`http.classify_http_status`), so retries follow the
same schedule; the start of the answer travels on as `AttemptResult.response` for the
ACTION_EXECUTED event.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from incident_manager.adapters.channels.base import Delivery
from incident_manager.adapters.channels.http import (
    HttpChannel,
    HttpClient,
    HttpRequest,
    classify_http_status,
)
from incident_manager.adapters.channels.webhook import (
    WebhookSettings,
    check_url,
    signed_request,
)

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class ActionSettings:
    """One action's call: the webhook channel it goes through and the body it sends."""

    webhook: WebhookSettings
    body: str
    """Rendered when the level ran; sent as UTF-8."""


def content_type(body: str) -> str:
    """`application/json` for a body that parses as JSON, else plain UTF-8 text."""
    try:
        json.loads(body)
    except ValueError:
        return TEXT
    return JSON


class ActionEncoder:
    """Builds one signed attempt of an action."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._clock = clock

    def __call__(self, delivery: Delivery[ActionSettings]) -> HttpRequest:
        """The request for this attempt; raises ChannelMisconfigured for a bad url or secret."""
        settings = delivery.settings.webhook
        check_url(settings)
        return signed_request(
            settings,
            delivery.delivery_id,
            delivery.settings.body.encode(),
            content_type(delivery.settings.body),
            self._environ,
            int(self._clock()),
        )


class ActionChannel(HttpChannel[ActionSettings]):
    """Actions through webhook channels: `ActionEncoder` + the webhook's status handling."""

    def __init__(
        self,
        client: HttpClient | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(ActionEncoder(environ, clock), classify_http_status, client)
