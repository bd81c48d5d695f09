"""Local fakes of Slack, Microsoft Teams (Workflows) and PagerDuty (Events API v2).

Each is an aiohttp server on 127.0.0.1 (a free port) that checks every request against
what the service documents, written here from the services' documentation and not from
the code under test, and answers as the service would: a request that breaks a rule gets
the service's refusal (and the rule is recorded in `problems`), a good one gets the next
scripted answer, or the service's success. Tests assert `problems == []` besides what they
look for.

- Slack incoming webhook: JSON body; a `text` (the notification line, at most 40,000
  characters); attachments with a `#RRGGBB` colour and at most 50 blocks; `header` blocks
  plain text of 1-150 characters; `section` blocks with a text of 1-3000 characters and/or
  1-10 fields of at most 2000; `context` blocks of 1-10 elements; in mrkdwn, `<` only opens
  a link `<http(s)://...|text>` (other `<`, `>`, `&` must be escaped). Answers `ok`; an
  unknown path is 404 `no_service`, a bad body 400 `invalid_payload`.
- Teams Workflows: `{"type": "message", "attachments": [...]}` whose attachments have
  contentType `application/vnd.microsoft.card.adaptive` and a `content` card with the
  Adaptive Card schema's required keys `type: AdaptiveCard` and `version` (and `body`);
  elements have a `type`; TextBlock has `text`; FactSet has `facts` of `title`/`value`;
  Container has `items`; Action.OpenUrl has an absolute http(s) `url`; the body at most
  28 KB. Answers 202 Accepted; a bad body 400 with a JSON error.
- PagerDuty Events API v2 at `/v2/enqueue`: `routing_key` (the expected 32-character key),
  `event_action` in trigger/acknowledge/resolve, `dedup_key` (at most 255 characters);
  for a trigger, `payload.summary` (1-1024), `payload.source` (not empty),
  `payload.severity` in critical/error/warning/info, `payload.timestamp` ISO 8601 if given,
  `custom_details` an object, `links` with `href`; the body at most 512 KB. Answers 202
  `{"status": "success", "message": "Event processed", "dedup_key": ...}`; a bad event 400
  `{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]

SLACK_PATH = "/services/T0000TEST/B0000TEST/abcdefghijklmnopqrstuvwx"
TEAMS_PATH = "/workflows/0a1b2c3d/triggers/manual/paths/invoke"
TEAMS_QUERY = "api-version=1&sig=Zm9vYmFyc2lnbmF0dXJlMTIz"
ROUTING_KEY = "R0UT1NGKEY0123456789ABCDEFGHIJKL"

_HEX = re.compile(r"#[0-9a-fA-F]{6}")
_SLACK_LINK = re.compile(r"<(https?://[^|<>\s]+)\|[^<>]*>")
_ENTITY = re.compile(r"&(amp|lt|gt);")


def text_answer(status: int, text: str, **headers: str) -> Answer:
    """Answer with a status and a plain-text body (Slack's way)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=text, headers=headers)

    return answer


def json_answer(status: int, body: Any, **headers: str) -> Answer:
    """Answer with a status and a JSON body (PagerDuty's and Teams' way)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return answer


@dataclass
class Fake:
    """What a fake service got, what was wrong with it, and the answers still to give."""

    url: str = ""
    requests: list[Any] = field(default_factory=list)
    """Each request's JSON body (or None when it was not JSON)."""
    problems: list[str] = field(default_factory=list)
    script: list[Answer] = field(default_factory=list)

    def then(self, *answers: Answer) -> None:
        """Give these answers to the next requests that pass the checks, in order."""
        self.script.extend(answers)

    @property
    def last(self) -> Any:
        """The last request's JSON body."""
        return self.requests[-1]


def _read_json(fake: Fake, raw: bytes, content_type: str) -> Any:
    if not content_type.startswith("application/json"):
        fake.problems.append(f"content-type is {content_type!r}, not application/json")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        fake.problems.append("the body is not UTF-8 JSON")
        return None


# Slack


def _check_mrkdwn(text: str, where: str) -> list[str]:
    rest = _SLACK_LINK.sub("", text)
    problems = []
    if "<" in rest or ">" in rest:
        problems.append(f"{where}: a < or > that is neither a link nor escaped: {text[:80]!r}")
    if "&" in _ENTITY.sub("", rest):
        problems.append(f"{where}: an unescaped & in {text[:80]!r}")
    return problems


def _check_text_object(obj: Any, where: str, limit: int) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in ("mrkdwn", "plain_text"):
        return [f"{where}: not a text object"]
    text = obj.get("text")
    if not isinstance(text, str) or not 1 <= len(text) <= limit:
        return [f"{where}: text must be 1-{limit} characters"]
    return _check_mrkdwn(text, where) if obj["type"] == "mrkdwn" else []


def slack_problems(body: Any) -> list[str]:
    """What breaks Slack's documented message rules (see the module's docstring)."""
    if not isinstance(body, dict):
        return ["the body is not a JSON object"]
    problems: list[str] = []
    text = body.get("text")
    if not isinstance(text, str) or not text or len(text) > 40_000:
        problems.append("text (the notification line) must be 1-40000 characters")
    attachments = body.get("attachments", [])
    if not isinstance(attachments, list):
        return [*problems, "attachments must be a list"]
    for i, attachment in enumerate(attachments):
        if not isinstance(attachment, dict):
            problems.append(f"attachments[{i}] is not an object")
            continue
        if "color" in attachment and not _HEX.fullmatch(str(attachment["color"])):
            problems.append(f"attachments[{i}].color is not #RRGGBB")
        blocks = attachment.get("blocks", [])
        if not isinstance(blocks, list) or len(blocks) > 50:
            problems.append(f"attachments[{i}].blocks must be a list of at most 50")
            continue
        for j, block in enumerate(blocks):
            problems += _block_problems(block, f"attachments[{i}].blocks[{j}]")
    return problems


def _block_problems(block: Any, where: str) -> list[str]:
    if not isinstance(block, dict):
        return [f"{where} is not an object"]
    kind = block.get("type")
    if kind == "header":
        text = block.get("text")
        if not isinstance(text, dict) or text.get("type") != "plain_text":
            return [f"{where}: a header's text must be plain_text"]
        return _check_text_object(text, where, 150)
    if kind == "section":
        if "text" not in block and "fields" not in block:
            return [f"{where}: a section needs text or fields"]
        problems = []
        if "text" in block:
            problems += _check_text_object(block["text"], f"{where}.text", 3000)
        fields = block.get("fields", [])
        if "fields" in block and (not isinstance(fields, list) or not 1 <= len(fields) <= 10):
            problems.append(f"{where}.fields must hold 1-10 text objects")
        elif isinstance(fields, list):
            for k, item in enumerate(fields):
                problems += _check_text_object(item, f"{where}.fields[{k}]", 2000)
        return problems
    if kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
            return [f"{where}: a context block needs 1-10 elements"]
        problems = []
        for k, element in enumerate(elements):
            problems += _check_text_object(element, f"{where}.elements[{k}]", 3000)
        return problems
    if kind == "divider":
        return []
    return [f"{where}: unknown block type {kind!r}"]


async def _slack(fake: Fake, request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = _read_json(fake, raw, request.headers.get("content-type", ""))
    fake.requests.append(body)
    if request.path != SLACK_PATH:
        fake.problems.append(f"posted to {request.path}, which is no webhook")
        return web.Response(status=404, text="no_service")
    problems = slack_problems(body)
    if problems:
        fake.problems.extend(problems)
        return web.Response(status=400, text="invalid_payload")
    if fake.script:
        return await fake.script.pop(0)(request)
    return web.Response(status=200, text="ok")


# Teams


def _element_problems(element: Any, where: str) -> list[str]:
    if not isinstance(element, dict) or not isinstance(element.get("type"), str):
        return [f"{where}: an element needs a type"]
    kind = element["type"]
    if kind == "TextBlock" and not isinstance(element.get("text"), str):
        return [f"{where}: a TextBlock needs text"]
    if kind == "FactSet":
        facts = element.get("facts")
        if not isinstance(facts, list) or not all(
            isinstance(f, dict)
            and isinstance(f.get("title"), str)
            and isinstance(f.get("value"), str)
            for f in facts
        ):
            return [f"{where}: a FactSet needs facts with a title and a value"]
    if kind == "Container":
        items = element.get("items")
        if not isinstance(items, list):
            return [f"{where}: a Container needs items"]
        return [
            p
            for k, item in enumerate(items)
            for p in _element_problems(item, f"{where}.items[{k}]")
        ]
    return []


def adaptive_card_problems(card: Any) -> list[str]:
    """What breaks the Adaptive Card schema's required keys and element rules."""
    if not isinstance(card, dict):
        return ["the card is not an object"]
    problems = []
    if card.get("type") != "AdaptiveCard":
        problems.append("card.type must be AdaptiveCard")
    if not isinstance(card.get("version"), str) or not re.fullmatch(r"\d+\.\d+", card["version"]):
        problems.append("card.version must be a version string such as 1.4")
    body = card.get("body")
    if not isinstance(body, list):
        problems.append("card.body must be a list of elements")
    else:
        for i, element in enumerate(body):
            problems += _element_problems(element, f"card.body[{i}]")
    for i, action in enumerate(card.get("actions", [])):
        if not isinstance(action, dict) or action.get("type") != "Action.OpenUrl":
            problems.append(f"card.actions[{i}]: expected Action.OpenUrl")
        elif not re.match(r"https?://", str(action.get("url", ""))) or not action.get("title"):
            problems.append(f"card.actions[{i}]: needs a title and an absolute http(s) url")
    return problems


def teams_problems(body: Any, size: int) -> list[str]:
    """What a Workflows webhook would refuse in this message (see the module's docstring)."""
    if size > 28 * 1024:
        return [f"the message is {size} bytes; Teams takes at most 28 KB"]
    if not isinstance(body, dict) or body.get("type") != "message":
        return ['the body must be {"type": "message", ...}']
    attachments = body.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return ["attachments must be a non-empty list"]
    problems = []
    for i, attachment in enumerate(attachments):
        if attachment.get("contentType") != "application/vnd.microsoft.card.adaptive":
            problems.append(f"attachments[{i}].contentType is not the Adaptive Card type")
        problems += adaptive_card_problems(attachment.get("content"))
    return problems


async def _teams(fake: Fake, request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = _read_json(fake, raw, request.headers.get("content-type", ""))
    fake.requests.append(body)
    if request.path != TEAMS_PATH or request.query_string != TEAMS_QUERY:
        fake.problems.append("posted to another URL than the workflow's (path and sig)")
        return web.json_response({"error": {"code": "Unauthorized"}}, status=401)
    problems = teams_problems(body, len(raw))
    if problems:
        fake.problems.extend(problems)
        return web.json_response({"error": {"code": "InvalidRequestContent"}}, status=400)
    if fake.script:
        return await fake.script.pop(0)(request)
    return web.Response(status=202)


# PagerDuty


def pagerduty_problems(event: Any, size: int) -> list[str]:
    """What the Events API v2 would refuse in this event (see the module's docstring)."""
    if size > 512 * 1024:
        return [f"the event is {size} bytes; at most 512 KB"]
    if not isinstance(event, dict):
        return ["the event is not a JSON object"]
    problems = []
    if event.get("routing_key") != ROUTING_KEY:
        problems.append("routing_key is missing or not the integration's key")
    action = event.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        problems.append("event_action must be trigger, acknowledge or resolve")
    dedup = event.get("dedup_key")
    if not isinstance(dedup, str) or not 1 <= len(dedup) <= 255:
        problems.append("dedup_key must be 1-255 characters")
    if action != "trigger":
        return problems
    payload = event.get("payload")
    if not isinstance(payload, dict):
        return [*problems, "a trigger needs a payload"]
    summary = payload.get("summary")
    if not isinstance(summary, str) or not 1 <= len(summary) <= 1024:
        problems.append("payload.summary must be 1-1024 characters")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        problems.append("payload.source is required")
    if payload.get("severity") not in ("critical", "error", "warning", "info"):
        problems.append("payload.severity must be critical, error, warning or info")
    if "timestamp" in payload:
        try:
            datetime.fromisoformat(str(payload["timestamp"]).replace("Z", "+00:00"))
        except ValueError:
            problems.append("payload.timestamp is not ISO 8601")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        problems.append("payload.custom_details must be an object")
    for i, link in enumerate(event.get("links", [])):
        if not isinstance(link, dict) or not isinstance(link.get("href"), str):
            problems.append(f"links[{i}] needs an href")
    return problems


async def _pagerduty(fake: Fake, request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    body = _read_json(fake, raw, request.headers.get("content-type", ""))
    fake.requests.append(body)
    if request.path != "/v2/enqueue":
        fake.problems.append(f"posted to {request.path}, not /v2/enqueue")
        return web.Response(status=404)
    problems = pagerduty_problems(body, len(raw))
    if problems:
        fake.problems.extend(problems)
        return web.json_response(
            {"status": "invalid event", "message": "Event object is invalid", "errors": problems},
            status=400,
        )
    if fake.script:
        return await fake.script.pop(0)(request)
    return web.json_response(
        {"status": "success", "message": "Event processed", "dedup_key": body["dedup_key"]},
        status=202,
    )


@asynccontextmanager
async def _serve(
    handler: Callable[[Fake, web.Request], Awaitable[web.StreamResponse]], path: str
) -> AsyncIterator[Fake]:
    fake = Fake()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(fake, request)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    fake.url = str(server.make_url(path))
    try:
        yield fake
    finally:
        await server.close()


def fake_slack() -> AbstractAsyncContextManager[Fake]:
    """A fake Slack; `url` is its incoming webhook URL."""
    return _serve(_slack, SLACK_PATH)


def fake_teams() -> AbstractAsyncContextManager[Fake]:
    """A fake Teams Workflows trigger; `url` is its webhook URL (with its `sig`)."""
    return _serve(_teams, f"{TEAMS_PATH}?{TEAMS_QUERY}")


def fake_pagerduty() -> AbstractAsyncContextManager[Fake]:
    """A fake Events API v2; `url` is its `/v2/enqueue` endpoint."""
    return _serve(_pagerduty, "/v2/enqueue")
