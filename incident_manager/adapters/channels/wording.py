"""The words of a chat or PagerDuty message: the channel's template if it has one, else ours.

`template_context` is what a template sees (docs/PAGING.md, Templates, documents it):

- `incident`: `id`, `title`, `severity` (`P0`…`P4`), `state`, `source`, `type`,
  `alert_count`, `assignees` (list), `labels` (mapping), `runbook_url` (or none),
  `opened_at` (RFC 3339, UTC);
- `event`: `paged`, `acknowledged`, `resolved` or `reopened`;
- `level`, `round` (numbers, from 1), `reason` (why this step: `new incident`, …);
- `targets`: everyone paged at this level, each with `kind`, `id`, `name`, `via` and
  `display` (`Alice Ng (on call for primary)`);
- `links`: each with `title` and `url`;
- `occurred_at`: when the step happened (RFC 3339, UTC).

Every string in it went through the channel's `escape` (Slack's mrkdwn needs `&`, `<`, `>`
escaped), so a template's own markup works and an alert's text cannot add any.

`compose` renders a channel's template. If either part fails (a name the context lacks, a
sandbox refusal, an empty title), the whole message falls back to the default wording and
`Wording.note` says why, for the ledger: a template mistake never costs a page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from incident_manager.adapters.channels.base import PageContent
from incident_manager.adapters.channels.render import timestamp
from incident_manager.domain.paging.model import MessageTemplate
from incident_manager.domain.paging.templates import TemplateFailed, render_template

Escape = Callable[[str], str]


def _same(text: str) -> str:
    return text


@dataclass(frozen=True)
class Wording:
    """A message's title and body, as the channel will place them."""

    title: str
    body: str | None = None
    """The template's body; None means the channel's default layout."""
    note: str = ""
    """Why the default wording was used although the channel has a template; else empty."""


def template_context(content: PageContent, escape: Escape = _same) -> dict[str, Any]:
    """The values a template may use (see the module's docstring)."""
    e = escape

    def maybe(text: str | None) -> str | None:
        return e(text) if text is not None else None

    return {
        "incident": {
            "id": e(content.incident_id),
            "title": e(content.title),
            "severity": e(content.severity),
            "state": e(content.state),
            "source": e(content.source),
            "type": e(content.incident_type),
            "alert_count": content.alert_count,
            "assignees": [e(a) for a in content.assignees],
            "labels": {e(k): e(v) for k, v in content.labels.items()},
            "runbook_url": maybe(content.runbook_url),
            "opened_at": timestamp(content.opened_at),
        },
        "event": content.event.value,
        "level": content.level,
        "round": content.round,
        "reason": e(content.reason),
        "targets": [
            {
                "kind": t.kind,
                "id": e(t.id),
                "name": maybe(t.name),
                "via": maybe(t.via),
                "display": e(t.display),
            }
            for t in content.targets
        ],
        "links": [{"title": e(link.title), "url": e(link.url)} for link in content.links],
        "occurred_at": timestamp(content.occurred_at),
    }


def compose(
    content: PageContent,
    template: MessageTemplate | None,
    default_title: str,
    *,
    title_limit: int,
    body_limit: int,
    escape_body: Escape = _same,
) -> Wording:
    """The channel's template rendered (the title with raw values, the body with escaped
    ones), or the default wording with a note saying what went wrong."""
    if template is None or (template.title is None and template.body is None):
        return Wording(default_title)
    part = "title"
    try:
        title = default_title
        if template.title is not None:
            title = " ".join(
                render_template(template.title, template_context(content), title_limit).split()
            )
            if not title:
                raise TemplateFailed("rendered nothing")
        body = None
        if template.body is not None:
            part = "body"
            context = template_context(content, escape_body)
            body = render_template(template.body, context, body_limit)
            if not body:
                raise TemplateFailed("rendered nothing")
    except TemplateFailed as error:
        note = f"{part} template failed ({error}); sent the default message"
        return Wording(default_title, note=note)
    return Wording(title, body)
