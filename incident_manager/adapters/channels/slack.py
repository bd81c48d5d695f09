"""The `slack` channel: a message through a Slack incoming webhook.

The webhook URL is the credential (whoever has it can post), so it is read at each attempt
from the environment variable the channel's `url_env` names and removed, whole and by
path, from every detail.

The body is JSON: a top-level `text` (the notification and fallback line,
`[P1] title (inc-4711)`) and one attachment whose `color` is the severity's, holding Block
Kit blocks: a `header` (the title), a `section` with why and whom this pages, a `section`
of up to 10 `fields` (severity, state, source, alerts, assignees, type), a `section` with
the runbook and links when there are any, and a `context` line with the incident id.
Lengths stay within Slack's: header 150 characters, section text 3000, each field 2000.
A channel template's `body` replaces the three middle sections (docs/PAGING.md).

Answers (Slack answers with a plain-text word):

| Answer | Outcome |
|---|---|
| 200 `ok` | SENT |
| 200 with any other body | FAILED: not a Slack webhook answer |
| 400 `invalid_payload`, `user_not_found` | FAILED |
| 403 `action_prohibited`; 404 `channel_not_found`, `no_service` | FAILED |
| 410 `channel_is_archived` | FAILED, disables the channel, logged as an error |
| 408, 429 (with `Retry-After`), 5xx | RETRY |
| other 3xx, 4xx | FAILED |
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from incident_manager.adapters.channels import digest
from incident_manager.adapters.channels.base import (
    AttemptResult,
    ChannelMisconfigured,
    Delivery,
    PageContent,
)
from incident_manager.adapters.channels.http import (
    HttpChannel,
    HttpClient,
    HttpRequest,
    HttpResponse,
    classify_http_status,
)
from incident_manager.adapters.channels.render import (
    SEVERITY_COLOURS,
    email_subject,
    facts,
    footer,
    headline,
)
from incident_manager.adapters.channels.wording import Wording, compose
from incident_manager.domain.paging.model import MessageTemplate

log = logging.getLogger(__name__)

MAX_HEADER = 150
MAX_SECTION = 3000
MAX_FIELD = 2000
MAX_FIELDS = 10
DEFAULT_TIMEOUT = 10.0
_DEFAULT_COLOUR = "#495057"
_TITLE_PREFIX = {"paged": "", "acknowledged": "Acknowledged: ", "resolved": "Resolved: "}


@dataclass(frozen=True)
class SlackSettings:
    """One configured Slack channel."""

    channel_id: str
    url_env: str
    """The environment variable holding the incoming webhook's URL."""
    timeout: float = DEFAULT_TIMEOUT
    template: MessageTemplate | None = None


def escape_mrkdwn(text: str) -> str:
    """Slack's three control characters escaped, so a value can't make a link or a mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _link(title: str, url: str) -> str:
    # Only web links become links; anything else (javascript:, a bare word) stays text.
    if url.lower().startswith(("https://", "http://")):
        target = escape_mrkdwn(url).replace("|", "%7C")
        return f"<{target}|{escape_mrkdwn(title).replace('|', '/')}>"
    return f"{escape_mrkdwn(title)}: {escape_mrkdwn(url)}"


def default_title(content: PageContent) -> str:
    """`[P1] p99 latency above 2s on gpt-4o`, with `Acknowledged:` … before a change."""
    prefix = _TITLE_PREFIX.get(content.event.value, f"{content.event.value.capitalize()}: ")
    return f"[{content.severity}] {prefix}{' '.join(content.title.split())}"


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def _default_body(content: PageContent) -> list[dict[str, Any]]:
    e = escape_mrkdwn
    why = f"*{e(headline(content))}*"
    if content.targets:
        why += "\n*Paging:* " + e(", ".join(t.display for t in content.targets))
    rows = dict(facts(content))
    shown = ("Severity", "State", "Source", "Alerts", "Assignees", "Type")
    fields = [
        _mrkdwn(_cut(f"*{label}*\n{e(rows[label])}", MAX_FIELD)) for label in shown if label in rows
    ][:MAX_FIELDS]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": _mrkdwn(_cut(why, MAX_SECTION))},
        {"type": "section", "fields": fields},
    ]
    lines = []
    if content.runbook_url:
        lines.append("*Runbook:* " + _link(content.runbook_url, content.runbook_url))
    if content.links:
        lines.append("*Links:* " + " · ".join(_link(k.title, k.url) for k in content.links))
    if "Labels" in rows:
        lines.append("*Labels:* " + e(rows["Labels"]))
    if lines:
        blocks.append({"type": "section", "text": _mrkdwn(_cut("\n".join(lines), MAX_SECTION))})
    return blocks


def slack_payload(content: PageContent, wording: Wording | None = None) -> dict[str, Any]:
    """The JSON body for one message (see the module's docstring)."""
    wording = wording or Wording(default_title(content))
    header = {
        "type": "header",
        "text": {"type": "plain_text", "text": _cut(wording.title, MAX_HEADER), "emoji": True},
    }
    if wording.body is None:
        middle = _default_body(content)
    else:
        middle = [{"type": "section", "text": _mrkdwn(_cut(wording.body, MAX_SECTION))}]
    context = {"type": "context", "elements": [_mrkdwn(escape_mrkdwn(footer(content)))]}
    fallback = email_subject(content)
    return {
        "text": fallback,
        "attachments": [
            {
                "color": SEVERITY_COLOURS.get(content.severity, _DEFAULT_COLOUR),
                "fallback": fallback,
                "blocks": [header, *middle, context],
            }
        ],
    }


def webhook_url(environ: Mapping[str, str], channel_id: str, name: str, service: str) -> str:
    """The secret URL from the environment; ChannelMisconfigured if unset or not http(s)."""
    url = environ.get(name, "").strip()
    if not url:
        raise ChannelMisconfigured(
            f"channel {channel_id}: environment variable {name} (the {service} URL) is not set"
        )
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in ("http", "https"):
        raise ChannelMisconfigured(
            f"channel {channel_id}: environment variable {name} does not hold an http(s) URL"
        )
    return url


def url_and_path(url: str) -> tuple[str, ...]:
    """The secrets a webhook URL stands for: itself, and its path (the token part)."""
    try:
        path = urlsplit(url).path.strip("/")
    except ValueError:
        path = ""
    return (url, path) if path else (url,)


class _ChatSettings(Protocol):
    @property
    def channel_id(self) -> str: ...

    @property
    def url_env(self) -> str: ...

    @property
    def template(self) -> MessageTemplate | None: ...

    @property
    def timeout(self) -> float: ...


ChatSettings = TypeVar("ChatSettings", bound=_ChatSettings)


class ChatEncoder(Generic[ChatSettings]):
    """Builds one attempt of a delivery to a chat service's incoming webhook.

    Slack and Teams differ only in the service's name (for messages), the title and
    body limits, how the body is escaped, and the payload they are given.
    """

    service: ClassVar[str]
    title_limit: ClassVar[int]
    body_limit: ClassVar[int]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def escape_body(self, text: str) -> str:
        """The body as the service's markup needs it; unchanged by default."""
        return text

    def payload(self, content: PageContent, wording: Wording) -> dict[str, Any]:
        raise NotImplementedError

    def digest_payload(self, content: PageContent) -> dict[str, Any]:
        """The body of a digest message (channels/digest.py); templates do not apply."""
        raise NotImplementedError

    def __call__(self, delivery: Delivery[ChatSettings]) -> HttpRequest:
        """The request; raises ChannelMisconfigured when the URL variable is unset or bad."""
        settings = delivery.settings
        url = webhook_url(self._environ, settings.channel_id, settings.url_env, self.service)
        content = delivery.content
        if content.digest is not None:
            wording = Wording(content.title)
            payload = self.digest_payload(content)
        else:
            wording = compose(
                content,
                settings.template,
                default_title(content),
                title_limit=self.title_limit,
                body_limit=self.body_limit,
                escape_body=self.escape_body,
            )
            payload = self.payload(content, wording)
        body = json.dumps(payload, ensure_ascii=False).encode()
        return HttpRequest(
            url,
            body,
            {"content-type": "application/json; charset=utf-8"},
            settings.timeout,
            url_and_path(url),
            wording.note,
        )


class SlackEncoder(ChatEncoder["SlackSettings"]):
    """Builds one attempt of a Slack delivery."""

    service = "Slack incoming webhook"
    title_limit = MAX_HEADER
    body_limit = MAX_SECTION

    def escape_body(self, text: str) -> str:
        return escape_mrkdwn(text)

    def payload(self, content: PageContent, wording: Wording) -> dict[str, Any]:
        return slack_payload(content, wording)

    def digest_payload(self, content: PageContent) -> dict[str, Any]:
        return digest.slack_payload(content)


def classify_slack(response: HttpResponse) -> AttemptResult:
    """What Slack's answer means (the table in the module's docstring)."""
    status = response.status
    word = response.excerpt
    if status == 200:
        if word == "ok":
            return AttemptResult.sent("HTTP 200 ok", status)
        return AttemptResult.failed(
            f"HTTP 200 but the answer is not Slack's `ok` ({word or 'empty'}); is url_env a "
            "Slack incoming webhook URL?",
            status,
        )
    if status == 410:
        return AttemptResult.failed(
            f"{response.describe()}: the Slack channel is archived and takes no more messages",
            status,
            disable_channel=True,
        )
    return classify_http_status(response)


class SlackChannel(HttpChannel[SlackSettings]):
    """The Slack channel: `SlackEncoder` + `classify_slack`; logs an archived channel."""

    def __init__(
        self, client: HttpClient | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(SlackEncoder(environ), classify_slack, client)

    async def send(self, delivery: Delivery[SlackSettings]) -> AttemptResult:
        """One attempt; a channel Slack calls archived is logged as an error, since every
        later page through it will fail too until the configuration changes."""
        result = await super().send(delivery)
        if result.disable_channel:
            log.error(
                "SLACK CHANNEL ARCHIVED: paging channel %s can no longer post (Slack answered "
                "%s); its pages fail until the webhook is pointed at a live channel",
                delivery.settings.channel_id,
                result.detail,
                extra={
                    "channel_id": delivery.settings.channel_id,
                    "delivery_id": delivery.delivery_id,
                },
            )
        return result
