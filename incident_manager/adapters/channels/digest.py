"""The digest message of each channel type: many pages in one, when a channel is rate-limited.

A digest's content is a `PageContent` whose `digest` is set (base.py); its `title` is the
heading, `17 more incidents paged in the last minute`. Every type shows the same lines,
one per page listed, then `and K more` when the digest stands for more pages than it
lists, then a last line naming the channel's limit. Channel templates do not apply: a
template is written for one incident.

## The webhook body

```json
{
  "type": "digest",
  "version": 1,
  "timestamp": "2026-03-02T09:00:41.503Z",
  "data": {
    "channel_id": "ops-hook",
    "title": "17 more incidents paged in the last minute",
    "per_minute": 5,
    "total": 17,
    "more": 0,
    "first_at": "2026-03-02T09:00:02.118Z",
    "last_at": "2026-03-02T09:00:41.503Z",
    "pages": [
      {"notification_id": "ntf_...", "incident_id": "inc_...", "severity": "P1",
       "title": "p99 latency above 2s on gpt-4o", "event": "paged"}
    ]
  }
}
```

`timestamp` is when the last page was folded in; `pages` lists at most 20, `more` counts
the rest (`total` = listed + `more`). The body is signed like any webhook body, and its
`webhook-id` is the digest's notification id.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

from incident_manager.adapters.channels.base import Digest, DigestEntry, PageContent
from incident_manager.adapters.channels.render import SEVERITY_COLOURS, EmailParts, timestamp

MAX_LINE = 200
"""Characters of one listed page's line (a long alert title is cut)."""
_DEFAULT_COLOUR = "#495057"


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _need(content: PageContent) -> Digest:
    if content.digest is None:
        raise ValueError("not a digest")
    return content.digest


def title(content: PageContent) -> str:
    """`17 more incidents paged in the last minute`, on one line."""
    return _cut(content.title, 150)


def entry_line(entry: DigestEntry) -> str:
    """`P1 inc_5f2c: p99 latency above 2s on gpt-4o`, `(resolved)` after other changes."""
    change = "" if entry.event == "paged" else f" ({entry.event})"
    return _cut(f"{entry.severity} {entry.incident_id}: {entry.title}{change}", MAX_LINE)


def lines(content: PageContent) -> list[str]:
    """One line per page listed, then `and K more` if it stands for more than it lists."""
    digest = _need(content)
    shown = [entry_line(entry) for entry in digest.pages]
    if digest.more:
        shown.append(f"and {digest.more:,} more")
    return shown


def footer(content: PageContent) -> str:
    """Why these came as one message."""
    digest = _need(content)
    return (
        f"Channel {digest.channel_id} sends at most {digest.per_minute}"
        f" message{'' if digest.per_minute == 1 else 's'} a minute;"
        " these pages came after that. Each is on its incident's ledger as sent in this digest."
    )


def webhook_body(content: PageContent) -> bytes:
    """The digest's webhook body (see the module's docstring), compact JSON."""
    digest = _need(content)
    payload = {
        "type": "digest",
        "version": 1,
        "timestamp": timestamp(digest.last_at),
        "data": {
            "channel_id": digest.channel_id,
            "title": content.title,
            "per_minute": digest.per_minute,
            "total": digest.total,
            "more": digest.more,
            "first_at": timestamp(digest.first_at),
            "last_at": timestamp(digest.last_at),
            "pages": [
                {
                    "notification_id": p.notification_id,
                    "incident_id": p.incident_id,
                    "severity": p.severity,
                    "title": p.title,
                    "event": p.event,
                }
                for p in digest.pages
            ],
        },
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _escape_mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(content: PageContent) -> dict[str, Any]:
    """A Slack message: a header, the list as one section, the footer as context."""
    heading = title(content)
    listed = "\n".join(f"• {_escape_mrkdwn(line)}" for line in lines(content))
    return {
        "text": heading,
        "attachments": [
            {
                "color": SEVERITY_COLOURS.get(content.severity, _DEFAULT_COLOUR),
                "fallback": heading,
                "blocks": [
                    {
                        "type": "header",
                        "text": {"type": "plain_text", "text": heading, "emoji": True},
                    },
                    {"type": "section", "text": {"type": "mrkdwn", "text": _cut_block(listed)}},
                    {
                        "type": "context",
                        "elements": [{"type": "mrkdwn", "text": _escape_mrkdwn(footer(content))}],
                    },
                ],
            }
        ],
    }


def _cut_block(text: str, limit: int = 3000) -> str:
    # Whole lines only: a cut inside `&amp;` would leave a bare `&`.
    if len(text) <= limit:
        return text
    kept: list[str] = []
    for line in text.split("\n"):
        if sum(len(k) + 1 for k in kept) + len(line) > limit - 2:
            break
        kept.append(line)
    return "\n".join([*kept, "…"])


def teams_card(
    content: PageContent, escape: Callable[[str], str] = lambda text: text
) -> dict[str, Any]:
    """An Adaptive Card: the heading, one TextBlock per line, the footer; `escape` makes
    text that Teams would read as markdown show as written (alert titles above all)."""
    attention = content.severity in ("P0", "P1")
    return {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {
                "type": "Container",
                "style": "attention" if attention else "emphasis",
                "items": [
                    {
                        "type": "TextBlock",
                        "text": escape(title(content)),
                        "wrap": True,
                        "size": "Large",
                        "weight": "Bolder",
                    }
                ],
            },
            *({"type": "TextBlock", "text": escape(line), "wrap": True} for line in lines(content)),
            {
                "type": "TextBlock",
                "text": escape(footer(content)),
                "wrap": True,
                "isSubtle": True,
                "size": "Small",
            },
        ],
    }


def render_email(content: PageContent) -> EmailParts:
    """Subject `17 more incidents paged in the last minute`; the list in text and HTML."""
    subject = title(content)
    text = "\n".join([subject, "", *(f"- {line}" for line in lines(content)), "", footer(content)])
    e = html.escape
    items = "".join(f"<li>{e(line)}</li>" for line in lines(content))
    body = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html><head><meta charset="utf-8"></head><body style="font-family:sans-serif">',
            f"<p><strong>{e(subject)}</strong></p>",
            f"<ul>{items}</ul>",
            f"<p>{e(footer(content))}</p>",
            "</body></html>",
            "",
        ]
    )
    return EmailParts(subject, text + "\n", body)
