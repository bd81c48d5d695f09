"""The `webhook` channel: an HTTP POST of the page as JSON, signed per Standard Webhooks.

The body is `render.webhook_body` (documented there); a channel's template writes only its
human-readable `message` (a template that fails at send time leaves the default words, and
the ledger's detail says so). Each attempt sends:

- `content-type: application/json`
- the channel's own `headers` from the paging file (the file refuses the names set here);
- `webhook-id`: the delivery's id, the same on every retry, so a receiver can drop duplicates;
- `webhook-timestamp`: the attempt's time, integer Unix seconds;
- `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`, when the
  channel names a `secret_env`. The key is the variable's value: a `whsec_<base64>` secret is
  base64-decoded (the Standard Webhooks format, which its reference libraries expect); any
  other value is used as its UTF-8 bytes. Use the `whsec_` form with those libraries: they
  base64-decode every secret.

The secret is read from the environment at each attempt (never stored in the settings, never
logged, removed from every detail). A channel that names a variable which is unset or empty
fails its deliveries with a detail naming the variable, rather than send unsigned pages.

Responses are classified by `http.classify_http_status`: 2xx SENT; 408, 429, 5xx RETRY with
the receiver's `Retry-After`; 3xx FAILED (not followed); 410 FAILED and disables the
channel; other 4xx FAILED. Network errors and timeouts are RETRY.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from incident_manager.adapters.channels import digest
from incident_manager.adapters.channels.base import ChannelMisconfigured, Delivery
from incident_manager.adapters.channels.http import (
    HttpChannel,
    HttpClient,
    HttpRequest,
    classify_http_status,
)
from incident_manager.adapters.channels.render import message_title, webhook_body
from incident_manager.adapters.channels.wording import compose
from incident_manager.domain.paging.model import MessageTemplate

SECRET_PREFIX = "whsec_"
MAX_MESSAGE_TITLE = 1024
MAX_MESSAGE_BODY = 10_000
"""Characters of a template's `message.title` and `message.body`."""
DEFAULT_TIMEOUT = 10.0
"""Seconds per attempt. Standard Webhooks suggests receivers get 15-30 s; a pager should hear
back sooner, and a slow receiver is retried with backoff anyway."""


@dataclass(frozen=True)
class WebhookSettings:
    """One configured webhook channel."""

    channel_id: str
    url: str
    """http or https; it may hold credentials or a token in its query, which are redacted from
    every detail."""
    secret_env: str | None = None
    """The environment variable holding the signing secret; None sends unsigned pages."""
    timeout: float = DEFAULT_TIMEOUT
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra request headers (the file's `headers`); the ones this channel sets win."""
    template: MessageTemplate | None = None
    """The words of the body's `message` (title and body); nothing else depends on it."""


def signing_key(secret: str) -> bytes:
    """The HMAC key a secret stands for: `whsec_` + base64 is decoded, anything else is its
    UTF-8 bytes. Raises ChannelMisconfigured for a `whsec_` value that is not base64."""
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX) :]
        try:
            # Padding may have been dropped when the secret was pasted; extra "=" is ignored.
            key = base64.b64decode(encoded + "==", validate=False)
        except (binascii.Error, ValueError):
            raise ChannelMisconfigured(
                "the signing secret starts with whsec_ but the rest is not base64"
            ) from None
        if not key:
            raise ChannelMisconfigured("the signing secret whsec_… holds no key")
        return key
    return secret.encode()


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`."""
    signed = webhook_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of a URL that may be credentials: its password and its query values."""
    try:
        parsed = urlsplit(url)
        password = parsed.password
    except ValueError:
        return ()
    values = [value for _, value in parse_qsl(parsed.query)]
    return tuple(v for v in [password, *values] if v)


class WebhookEncoder:
    """Builds one signed attempt of a webhook delivery."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._clock = clock

    def __call__(self, delivery: Delivery[WebhookSettings]) -> HttpRequest:
        """The request for this attempt; raises ChannelMisconfigured for a bad url or secret."""
        settings = delivery.settings
        check_url(settings)
        content = delivery.content
        note = ""
        if content.digest is not None:
            body = digest.webhook_body(content)
        else:
            wording = compose(
                content,
                settings.template,
                message_title(content),
                title_limit=MAX_MESSAGE_TITLE,
                body_limit=MAX_MESSAGE_BODY,
            )
            body = webhook_body(content, wording.title, wording.body)
            note = wording.note
        return signed_request(
            settings,
            delivery.delivery_id,
            body,
            "application/json",
            self._environ,
            int(self._clock()),
            note,
        )


def check_url(settings: WebhookSettings) -> None:
    """Raise ChannelMisconfigured unless the channel's url is http(s)."""
    try:
        scheme = urlsplit(settings.url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in ("http", "https"):
        raise ChannelMisconfigured(
            f"channel {settings.channel_id}: url must start with http:// or https://"
        )


def signed_request(
    settings: WebhookSettings,
    delivery_id: str,
    body: bytes,
    content_type: str,
    environ: Mapping[str, str],
    timestamp: int,
    note: str = "",
) -> HttpRequest:
    """A POST of `body` to the channel with its headers and the Standard Webhooks ones,
    signed when the channel has a secret; shared by pages and automated actions."""
    headers = {
        **settings.headers,
        "content-type": content_type,
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
    }
    secrets = list(url_secrets(settings.url))
    if settings.secret_env is not None:
        secret = environ.get(settings.secret_env, "")
        if not secret:
            raise ChannelMisconfigured(
                f"channel {settings.channel_id}: environment variable "
                f"{settings.secret_env} (the signing secret) is not set"
            )
        secrets.append(secret)
        headers["webhook-signature"] = sign(signing_key(secret), delivery_id, timestamp, body)
    return HttpRequest(settings.url, body, headers, settings.timeout, tuple(secrets), note)


class WebhookChannel(HttpChannel[WebhookSettings]):
    """The webhook channel: `WebhookEncoder` + the Standard Webhooks status handling."""

    def __init__(
        self,
        client: HttpClient | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(WebhookEncoder(environ, clock), classify_http_status, client)
