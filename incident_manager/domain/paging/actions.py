"""Automated actions: a level's `{action: {webhook: ID, body: TEMPLATE}}`.

An action is a request to a webhook channel whose body the paging file writes (calling an
LLM gateway's kill switch, rolling back a prompt version), not a page to a person. Its body
is rendered once, when the level runs, in the sandbox of `templates.py`, with the values a
channel template sees (docs/PAGING.md, Templates); the outbox then sends those bytes on every
attempt.

Unlike a page, an action has no default message to fall back to: a request with a guessed
body could switch off the wrong thing. So a body that cannot be rendered, or would be longer
than `MAX_ACTION_BODY`, is not sent at all (`render_action_body` raises `TemplateFailed`).

A body template that starts with `[`, or with a `{` that opens no Jinja2 tag, is a JSON
template: every string value it shows is escaped for a JSON string (`"` becomes `\\"`), so
an alert title cannot close the string and add keys of its own. Other bodies get the values
as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from incident_manager.domain.paging.templates import TemplateFailed, render_template

ACTION_BODY = "action_body"
"""The key of a notification's `content` that holds an action's rendered body."""
MAX_ACTION_BODY = 16_000
"""Characters of a rendered action body; a longer one is refused, never cut (a cut JSON
body is a half-made request)."""

Escape = Callable[[str], str]


def _same(text: str) -> str:
    return text


def json_string_escape(text: str) -> str:
    """`text` as it may stand between the quotes of a JSON string."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def is_json_template(source: str) -> bool:
    """Whether a body template writes JSON: it starts with `[`, or with a `{` that does not
    open a Jinja2 tag (`{{`, `{%`, `{#`)."""
    start = source.lstrip()
    return start.startswith("[") or (start.startswith("{") and start[1:2] not in ("{", "%", "#"))


def _timestamp(text: str) -> str:
    # The stored page keeps ISO times with their offset; templates see RFC 3339 UTC, as
    # channel templates do.
    moment = datetime.fromisoformat(text).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def action_context(page: Mapping[str, Any], escape: Escape = _same) -> dict[str, Any]:
    """What an action's body template sees, made from the page content the level stored
    (service/paging.py `page_content`); the same names as a channel template's context."""
    e = escape

    def maybe(text: str | None) -> str | None:
        return e(text) if text is not None else None

    def display(target: Mapping[str, Any]) -> str:
        shown = target.get("name") or target["id"]
        via = target.get("via")
        return f"{shown} (on call for {via})" if via else str(shown)

    return {
        "incident": {
            "id": e(page["incident_id"]),
            "title": e(page["title"]),
            "severity": e(page["severity"]),
            "state": e(page["state"]),
            "source": e(page["source"]),
            "type": e(page["incident_type"]),
            "alert_count": page["alert_count"],
            "assignees": [e(a) for a in page["assignees"]],
            "labels": {e(k): e(v) for k, v in page["labels"].items()},
            "runbook_url": maybe(page["runbook_url"]),
            "opened_at": _timestamp(page["opened_at"]),
        },
        "event": page["event"],
        "level": page["level"],
        "round": page["round"],
        "reason": e(page["reason"]),
        "targets": [
            {
                "kind": t["kind"],
                "id": e(t["id"]),
                "name": maybe(t.get("name")),
                "via": maybe(t.get("via")),
                "display": e(display(t)),
            }
            for t in page["targets"]
        ],
        "links": [{"title": e(link["title"]), "url": e(link["url"])} for link in page["links"]],
        "occurred_at": _timestamp(page["occurred_at"]),
    }


def render_action_body(source: str, page: Mapping[str, Any]) -> str:
    """The body an action sends, rendered from the level's page content. Raises
    TemplateFailed (with the template's line where known) if it cannot be rendered, renders
    nothing, or is longer than MAX_ACTION_BODY."""
    escape = json_string_escape if is_json_template(source) else _same
    # One character over the limit is enough to know it is too long: the rest is not rendered.
    body = render_template(source, action_context(page, escape), MAX_ACTION_BODY + 1)
    if len(body) > MAX_ACTION_BODY:
        raise TemplateFailed(f"the body is longer than {MAX_ACTION_BODY} characters")
    if not body:
        raise TemplateFailed("the body rendered to nothing")
    return body
