"""The `pagerduty` channel: PagerDuty's Events API v2, for teams that page through PagerDuty.

Each attempt POSTs one event to the channel's `url` (PagerDuty's
https://events.pagerduty.com/v2/enqueue unless the file says otherwise):

- `routing_key`: the integration key, read at each attempt from the environment variable
  `routing_key_env` names (never stored, removed from every detail);
- `event_action`: `trigger` for a page (and a reopening), `acknowledge` and `resolve` for
  those changes of our incident;
- `dedup_key`: our incident id, so every page of one incident is one PagerDuty alert, and
  an acknowledgement or resolution finds it;
- `payload` (trigger only; PagerDuty ignores it otherwise, so it is left out): `summary`
  (the title, at most 1024 characters), `source`, `severity` (P0 `critical`, P1 `error`,
  P2 `warning`, P3 and P4 `info`), `timestamp`, `class` (the incident type), `group` (the
  `team` label, when there is one) and `custom_details` (the incident's facts, the step,
  the targets, and a template's body as `message`);
- `client`, `links` (the runbook and links, http(s) only), for the trigger.

Answers: 2xx SENT (PagerDuty answers 202 with `{"status": "success", "dedup_key": ...}`);
400 FAILED (the event is invalid; PagerDuty's `errors` are quoted in the detail); 408, 429
and 5xx RETRY (with `Retry-After`); other 3xx and 4xx FAILED.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from incident_manager.adapters.channels.base import (
    AttemptResult,
    ChannelMisconfigured,
    Delivery,
    EventKind,
    PageContent,
)
from incident_manager.adapters.channels.http import (
    HttpChannel,
    HttpClient,
    HttpRequest,
    HttpResponse,
    classify_http_status,
)
from incident_manager.adapters.channels.render import timestamp
from incident_manager.adapters.channels.wording import Wording, compose
from incident_manager.domain.paging.model import PAGERDUTY_EVENTS_URL, MessageTemplate

MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255
MAX_MESSAGE = 3000
DEFAULT_TIMEOUT = 10.0
CLIENT = "incident-manager"

SEVERITIES = {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info", "P4": "info"}
"""Our severities as PagerDuty's four."""

EVENT_ACTIONS = {
    EventKind.PAGED: "trigger",
    EventKind.REOPENED: "trigger",
    EventKind.ACKNOWLEDGED: "acknowledge",
    EventKind.RESOLVED: "resolve",
}


@dataclass(frozen=True)
class PagerDutySettings:
    """One configured PagerDuty channel (one PagerDuty service's integration)."""

    channel_id: str
    routing_key_env: str
    url: str = PAGERDUTY_EVENTS_URL
    timeout: float = DEFAULT_TIMEOUT
    template: MessageTemplate | None = None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def default_summary(content: PageContent) -> str:
    """`[P1] p99 latency above 2s on gpt-4o`: PagerDuty shows the severity itself too, but
    the summary is what its notifications (SMS, push) say."""
    return f"[{content.severity}] {' '.join(content.title.split())}"


def pagerduty_event(
    content: PageContent, routing_key: str, wording: Wording | None = None
) -> dict[str, Any]:
    """The Events API v2 body for this change of the incident."""
    action = EVENT_ACTIONS[content.event]
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": content.incident_id[:MAX_DEDUP_KEY],
    }
    if action != "trigger":
        return event
    wording = wording or Wording(default_summary(content))
    details: dict[str, Any] = {
        "incident_id": content.incident_id,
        "state": content.state,
        "alert_count": content.alert_count,
        "assignees": list(content.assignees),
        "level": content.level,
        "round": content.round,
        "reason": content.reason,
        "paging": [t.display for t in content.targets],
        "labels": dict(content.labels),
        "opened_at": timestamp(content.opened_at),
    }
    if wording.body is not None:
        details["message"] = wording.body
    payload: dict[str, Any] = {
        "summary": _cut(wording.title, MAX_SUMMARY),
        "source": content.source or CLIENT,
        "severity": SEVERITIES.get(content.severity, "info"),
        "timestamp": timestamp(content.occurred_at),
        "class": content.incident_type,
        "custom_details": details,
    }
    if content.labels.get("team"):
        payload["group"] = content.labels["team"]
    event["payload"] = payload
    event["client"] = CLIENT
    links = [("Runbook", content.runbook_url)] if content.runbook_url else []
    links += [(link.title, link.url) for link in content.links]
    web = [
        {"href": url, "text": title}
        for title, url in links
        if url.lower().startswith(("https://", "http://"))
    ]
    if web:
        event["links"] = web
    return event


class PagerDutyEncoder:
    """Builds one attempt of a PagerDuty delivery."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def __call__(self, delivery: Delivery[PagerDutySettings]) -> HttpRequest:
        """The request; raises ChannelMisconfigured for an unset routing key or a bad url."""
        settings = delivery.settings
        try:
            scheme = urlsplit(settings.url).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme not in ("http", "https"):
            raise ChannelMisconfigured(
                f"channel {settings.channel_id}: url must start with http:// or https://"
            )
        key = self._environ.get(settings.routing_key_env, "").strip()
        if not key:
            raise ChannelMisconfigured(
                f"channel {settings.channel_id}: environment variable "
                f"{settings.routing_key_env} (the PagerDuty routing key) is not set"
            )
        content = delivery.content
        if content.digest is not None:
            # checks.py refuses rate_limit on pagerduty; a digest here is a stale row.
            raise ChannelMisconfigured(
                f"channel {settings.channel_id}: PagerDuty takes one event per incident, not"
                " a digest"
            )
        wording = None
        if EVENT_ACTIONS[content.event] == "trigger":
            wording = compose(
                content,
                settings.template,
                default_summary(content),
                title_limit=MAX_SUMMARY,
                body_limit=MAX_MESSAGE,
            )
        body = json.dumps(pagerduty_event(content, key, wording), ensure_ascii=False).encode()
        return HttpRequest(
            settings.url,
            body,
            {"content-type": "application/json"},
            settings.timeout,
            (key,),
            wording.note if wording else "",
        )


def _errors(response: HttpResponse) -> str:
    """PagerDuty's `message` and `errors` from a JSON answer, else the start of the body."""
    try:
        answer = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return response.excerpt
    if not isinstance(answer, dict):
        return response.excerpt
    parts = [str(answer.get("message") or "")]
    errors = answer.get("errors")
    if isinstance(errors, list):
        parts += [str(e) for e in errors[:3]]
    return "; ".join(p for p in parts if p) or response.excerpt


def classify_pagerduty(response: HttpResponse) -> AttemptResult:
    """What the Events API's answer means (see the module's docstring)."""
    status = response.status
    if 200 <= status < 300:
        said = _errors(response)
        return AttemptResult.sent(f"HTTP {status}" + (f": {said}" if said else ""), status)
    if status == 400:
        return AttemptResult.failed(
            f"HTTP 400: PagerDuty refused the event: {_errors(response) or 'no reason given'}",
            status,
        )
    return classify_http_status(response)


class PagerDutyChannel(HttpChannel[PagerDutySettings]):
    """The PagerDuty channel: `PagerDutyEncoder` + `classify_pagerduty`."""

    def __init__(
        self, client: HttpClient | None = None, *, environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(PagerDutyEncoder(environ), classify_pagerduty, client)
