"""The default message of each channel, made from a `PageContent`.

## The webhook body (version 1)

A compact JSON object (UTF-8, no spaces), following Standard Webhooks' `type` / `timestamp` /
`data` shape:

```json
{
  "type": "incident.paged",
  "version": 1,
  "timestamp": "2026-03-02T09:00:00.000Z",
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
      "opened_at": "2026-03-02T08:59:58.120Z"
    },
    "page": {
      "level": 1,
      "round": 1,
      "reason": "new incident",
      "targets": [
        {"kind": "user", "id": "alice", "name": "Alice Ng", "via": "primary"},
        {"kind": "channel", "id": "ops-hook", "name": null, "via": null}
      ]
    },
    "message": {
      "title": "[P1] p99 latency above 2s on gpt-4o",
      "body": "Paged at level 1, round 1: new incident"
    }
  }
}
```

- `type`: `incident.paged`, `incident.acknowledged`, `incident.resolved` or
  `incident.reopened`; it names the change, and the schema is the same for all four.
- `version`: 1. Within a version, keys are only ever added; a key is never removed, renamed
  or given another type. Receivers should ignore keys they do not know.
- `timestamp`: when the paging step (or change) happened, UTC with milliseconds. Retries of a
  delivery send the same body byte for byte; only the `webhook-timestamp` header (the time
  of the attempt) changes.
- Every key is always present; `runbook_url`, `name` and `via` may be null, lists and
  `labels` may be empty. `page` describes the escalation step for every type (for a
  resolution, the last step run).
- `message` is for people (a chat tool, a ticket): by default the title as the other
  channels write it and the headline; a channel's `template` replaces them. Everything else
  is for machines and never depends on a template.

## The email

Subject `[P1] p99 latency above 2s on gpt-4o (inc-4711)` for a page, with `Acknowledged:`,
`Resolved:` or `Reopened:` before the title for the other changes; a plain-text part and an
HTML part with the same facts, every value escaped; only http(s) links become clickable.
A channel's template gives the subject (its `title`, made one line) and the plain text (its
`body`); the HTML part then shows that text escaped, in `<pre>`.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from incident_manager.adapters.channels.base import EventKind, PageContent

WEBHOOK_VERSION = 1

_EVENT_TYPES = {kind: f"incident.{kind.value}" for kind in EventKind}

_SUBJECT_PREFIX = {
    EventKind.PAGED: "",
    EventKind.ACKNOWLEDGED: "Acknowledged: ",
    EventKind.RESOLVED: "Resolved: ",
    EventKind.REOPENED: "Reopened: ",
}

SEVERITY_COLOURS = {  # also the Slack message's colour bar
    "P0": "#b00020",
    "P1": "#d9480f",
    "P2": "#e8a317",
    "P3": "#1c7ed6",
    "P4": "#868e96",
}

_MAX_SUBJECT_TITLE = 150
"""Characters of the title in a subject: mail clients cut long subjects anyway, and a huge
alert title should not make a header longer than SMTP servers accept."""


def webhook_event_type(kind: EventKind) -> str:
    """The body's `type` for a change: `incident.paged`, …"""
    return _EVENT_TYPES[kind]


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and a `Z`: `2026-03-02T09:00:00.000Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_title(content: PageContent) -> str:
    """`[P1] p99 latency above 2s on gpt-4o`, with `Acknowledged:` … before a change."""
    return f"[{content.severity}] {_SUBJECT_PREFIX[content.event]}{' '.join(content.title.split())}"


def webhook_payload(
    content: PageContent, title: str | None = None, body: str | None = None
) -> dict[str, Any]:
    """The webhook body as a JSON-ready dict (see the module's docstring); `title` and
    `body` are a template's words for `message`, None for the default."""
    return {
        "type": webhook_event_type(content.event),
        "version": WEBHOOK_VERSION,
        "timestamp": timestamp(content.occurred_at),
        "data": {
            "incident": {
                "id": content.incident_id,
                "title": content.title,
                "severity": content.severity,
                "state": content.state,
                "source": content.source,
                "type": content.incident_type,
                "alert_count": content.alert_count,
                "assignees": list(content.assignees),
                "labels": dict(content.labels),
                "runbook_url": content.runbook_url,
                "links": [{"title": link.title, "url": link.url} for link in content.links],
                "opened_at": timestamp(content.opened_at),
            },
            "page": {
                "level": content.level,
                "round": content.round,
                "reason": content.reason,
                "targets": [
                    {"kind": t.kind, "id": t.id, "name": t.name, "via": t.via}
                    for t in content.targets
                ],
            },
            "message": {
                "title": title if title is not None else message_title(content),
                "body": body if body is not None else headline(content),
            },
        },
    }


def webhook_body(content: PageContent, title: str | None = None, body: str | None = None) -> bytes:
    """The exact bytes sent and signed: compact JSON, UTF-8, keys in the documented order."""
    payload = webhook_payload(content, title, body)
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class EmailParts:
    """The words of an email: its subject and its two bodies."""

    subject: str
    text: str
    html: str


def email_subject(content: PageContent) -> str:
    """`[P1] title (incident id)`, on one line whatever the title holds."""
    title = " ".join(content.title.split())
    if len(title) > _MAX_SUBJECT_TITLE:
        title = title[: _MAX_SUBJECT_TITLE - 1] + "…"
    prefix = _SUBJECT_PREFIX[content.event]
    return f"[{content.severity}] {prefix}{title} ({content.incident_id})"


def headline(content: PageContent) -> str:
    """Why this message is sent: `Paged at level 1, round 1: new incident`."""
    if content.event is EventKind.PAGED:
        return f"Paged at level {content.level}, round {content.round}: {content.reason}"
    return f"{content.event.value.capitalize()}: {content.reason}"


def facts(content: PageContent) -> list[tuple[str, str]]:
    """The label/value rows every default message shows (both email bodies, the Slack and
    Teams messages), in order."""
    rows = [
        ("Severity", content.severity),
        ("State", content.state),
        ("Source", content.source),
        ("Type", content.incident_type),
        ("Alerts", str(content.alert_count)),
        ("Opened", content.opened_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("Assignees", ", ".join(content.assignees) or "nobody yet"),
    ]
    if content.targets:
        rows.append(("Paging", ", ".join(t.display for t in content.targets)))
    if content.labels:
        rows.append(("Labels", ", ".join(f"{k}={v}" for k, v in sorted(content.labels.items()))))
    return rows


def footer(content: PageContent) -> str:
    """The closing line: the incident id, and what stops the paging."""
    if content.event in (EventKind.PAGED, EventKind.REOPENED):
        return f"Incident {content.incident_id}. Acknowledge it to stop paging."
    return f"Incident {content.incident_id}."


def email_text(content: PageContent) -> str:
    """The plain-text body."""
    width = max(len(label) for label, _ in facts(content)) + 2
    lines = [content.title, "", headline(content), ""]
    lines += [f"{label + ':':<{width}}{value}" for label, value in facts(content)]
    if content.runbook_url:
        lines += ["", f"Runbook: {content.runbook_url}"]
    if content.links:
        lines += ["", "Links:"] + [f"  {link.title}: {link.url}" for link in content.links]
    lines += ["", footer(content), ""]
    return "\n".join(lines)


def _link(title: str, url: str) -> str:
    # Only web links become clickable: a `javascript:` or `data:` runbook URL from an alert
    # stays visible text.
    if url.lower().startswith(("https://", "http://")):
        return f'<a href="{html.escape(url, quote=True)}">{html.escape(title)}</a>'
    return f"{html.escape(title)}: {html.escape(url)}"


def email_html(content: PageContent) -> str:
    """The HTML body: the same facts as the text, every value escaped."""
    e = html.escape
    colour = SEVERITY_COLOURS.get(content.severity, "#495057")
    rows = "".join(
        f'<tr><th align="left" style="padding-right:12px">{e(label)}</th><td>{e(value)}</td></tr>'
        for label, value in facts(content)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"></head><body style="font-family:sans-serif">',
        f'<p><span style="background:{colour};color:#fff;padding:2px 6px;border-radius:3px">'
        f"{e(content.severity)}</span> <strong>{e(content.title)}</strong></p>",
        f"<p>{e(headline(content))}</p>",
        f"<table>{rows}</table>",
    ]
    if content.runbook_url:
        parts.append(f"<p>Runbook: {_link(content.runbook_url, content.runbook_url)}</p>")
    if content.links:
        items = "".join(f"<li>{_link(link.title, link.url)}</li>" for link in content.links)
        parts.append(f"<p>Links:</p><ul>{items}</ul>")
    parts += [f"<p>{e(footer(content))}</p>", "</body></html>", ""]
    return "\n".join(parts)


def render_email(
    content: PageContent, title: str | None = None, body: str | None = None
) -> EmailParts:
    """The email for a page or change: the default one, or with a template's subject
    (`title`) and text (`body`, shown escaped in `<pre>` in the HTML part)."""
    subject = email_subject(content) if title is None else _one_line(title, MAX_TEMPLATE_SUBJECT)
    if body is None:
        return EmailParts(subject, email_text(content), email_html(content))
    e = html.escape
    page = (
        "<!DOCTYPE html>\n"
        '<html><head><meta charset="utf-8"></head><body style="font-family:sans-serif">\n'
        f'<pre style="font-family:inherit;white-space:pre-wrap">{e(body)}</pre>\n'
        f"<p>{e(footer(content))}</p>\n</body></html>\n"
    )
    return EmailParts(subject, body + "\n", page)


MAX_TEMPLATE_SUBJECT = 200
"""Characters of a subject a template wrote; a mail header must stay short."""


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
