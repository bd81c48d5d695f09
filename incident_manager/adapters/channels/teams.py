"""The `teams` channel: an Adaptive Card through a Microsoft Teams Workflows webhook.

Workflows ("When a Teams webhook request is received" / "Send webhook alerts to a
channel") is the kind of Teams webhook Microsoft keeps as Office 365 connectors retire. Its
URL carries a signature (`sig=`), so it is read at each attempt from the environment
variable `url_env` names and removed from every detail.

The body is a message with one attachment, as Workflows expects:

    {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
      "contentUrl": null, "content": {"type": "AdaptiveCard", "version": "1.4", "body": [...],
      "actions": [...]}}]}

The card holds the same facts as the Slack message: a heading in the severity's colour,
why and whom this pages, a FactSet, the incident id; the runbook and links are
`Action.OpenUrl` buttons (http(s) only). A template's `body` replaces the text between the
heading and the footer; the buttons stay.

Texts are cut so the card stays well under the 28 KB Teams accepts.

Teams renders a TextBlock's text and a fact's value as markdown, so every text that carries
what an alert said (title, source, labels, assignees, reasons) goes through
`escape_markdown`: a backslash before `*`, `_`, `[`, `]`, `#`, `<`, `>` and the other
markdown characters, and before list markers at a line's start. An alert titled
`*urgent* [click](https://evil)` shows exactly that. In a template's body the values are
escaped the same way and the template's own markdown is kept.

Answers are classified like a webhook's (`http.classify_http_status`): 2xx SENT (Workflows
answers 202 Accepted), 408/429/5xx RETRY, 410 FAILED and disables the channel, other 3xx and
4xx FAILED.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from incident_manager.adapters.channels import digest
from incident_manager.adapters.channels.base import PageContent
from incident_manager.adapters.channels.http import (
    HttpChannel,
    HttpClient,
    classify_http_status,
)
from incident_manager.adapters.channels.render import facts, footer, headline
from incident_manager.adapters.channels.slack import ChatEncoder, default_title
from incident_manager.adapters.channels.wording import Wording
from incident_manager.domain.paging.model import MessageTemplate

CARD_VERSION = "1.4"
"""Adaptive Card schema version: 1.4 renders on every Teams client today."""
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_TITLE = 250
MAX_TEXT = 2000
MAX_FACT = 500
MAX_ACTIONS = 6
DEFAULT_TIMEOUT = 10.0

_COLOURS = {"P0": "Attention", "P1": "Attention", "P2": "Warning", "P3": "Accent"}
_STYLES = {"P0": "attention", "P1": "attention", "P2": "warning", "P3": "accent"}


@dataclass(frozen=True)
class TeamsSettings:
    """One configured Teams channel."""

    channel_id: str
    url_env: str
    """The environment variable holding the Workflows webhook's URL."""
    timeout: float = DEFAULT_TIMEOUT
    template: MessageTemplate | None = None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_MARKDOWN = re.compile(r"([\\`*_\[\]#~<>|])")
_BULLET = re.compile(r"^(\s*)([-+])(?=\s)", re.MULTILINE)
_NUMBERED = re.compile(r"^(\s*\d+)\.(?=\s)", re.MULTILINE)


def escape_markdown(text: str) -> str:
    """Text as Teams shows it literally in a card: its markdown characters (`*`, `_`, `[`,
    `]`, `#`, `<`, …) and list markers at the start of a line are backslash-escaped."""
    text = _MARKDOWN.sub(r"\\\1", text)
    text = _BULLET.sub(r"\1\\\2", text)
    return _NUMBERED.sub(r"\1\\.", text)


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}


def adaptive_card(content: PageContent, wording: Wording | None = None) -> dict[str, Any]:
    """The card itself (the attachment's `content`)."""
    wording = wording or Wording(default_title(content))
    heading = {
        "type": "Container",
        "style": _STYLES.get(content.severity, "emphasis"),
        "items": [
            _text(
                _cut(escape_markdown(wording.title), MAX_TITLE),
                size="Large",
                weight="Bolder",
                color=_COLOURS.get(content.severity, "Default"),
            )
        ],
    }
    if wording.body is None:
        # Whom this pages is the FactSet's `Paging` row.
        middle: list[dict[str, Any]] = [
            _text(_cut(escape_markdown(headline(content)), MAX_TEXT), weight="Bolder"),
            {
                "type": "FactSet",
                "facts": [
                    {"title": label, "value": _cut(escape_markdown(value), MAX_FACT)}
                    for label, value in facts(content)
                ],
            },
        ]
    else:
        middle = [_text(_cut(wording.body, MAX_TEXT))]
    links = [("Runbook", content.runbook_url)] if content.runbook_url else []
    links += [(link.title, link.url) for link in content.links]
    actions = [
        {"type": "Action.OpenUrl", "title": _cut(title, 100), "url": url}
        for title, url in links
        if url.lower().startswith(("https://", "http://"))
    ][:MAX_ACTIONS]
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "msteams": {"width": "Full"},
        "body": [
            heading,
            *middle,
            _text(escape_markdown(footer(content)), isSubtle=True, size="Small"),
        ],
    }
    if actions:
        card["actions"] = actions
    return card


def teams_payload(content: PageContent, wording: Wording | None = None) -> dict[str, Any]:
    """The JSON body Workflows takes: a message whose one attachment is the card."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": CARD_CONTENT_TYPE,
                "contentUrl": None,
                "content": adaptive_card(content, wording),
            }
        ],
    }


class TeamsEncoder(ChatEncoder["TeamsSettings"]):
    """Builds one attempt of a Teams delivery."""

    service = "Teams Workflows webhook"
    title_limit = MAX_TITLE
    body_limit = MAX_TEXT

    def escape_body(self, text: str) -> str:
        return escape_markdown(text)

    def payload(self, content: PageContent, wording: Wording) -> dict[str, Any]:
        return teams_payload(content, wording)

    def digest_payload(self, content: PageContent) -> dict[str, Any]:
        return {
            "type": "message",
            "attachments": [
                {
                    "contentType": CARD_CONTENT_TYPE,
                    "contentUrl": None,
                    "content": digest.teams_card(content, escape_markdown),
                }
            ],
        }


class TeamsChannel(HttpChannel[TeamsSettings]):
    """The Teams channel: `TeamsEncoder` + the webhook status handling."""

    def __init__(
        self, client: HttpClient | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(TeamsEncoder(environ), classify_http_status, client)
