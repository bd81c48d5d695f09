"""The contract every delivery channel keeps: what a page says, what one attempt sends, and
what came of it.

A channel (webhook, email; Slack, Teams and PagerDuty later) is an *encoder*, which turns a
`Delivery` into what its transport sends, and a *classifier*, which turns the transport's
answer into an `AttemptResult`. Everything else (the outbox row, the retry schedule in
`retry.py`, the ledger) is shared, so a channel never decides when to try again: it only says
SENT, RETRY or FAILED for the attempt it was given.

`Channel.send` never raises for anything the network or the receiver did: every failure is an
`AttemptResult` whose detail is short and redacted, safe to store on the ledger and to show.
"""

from __future__ import annotations

import enum
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, TypeVar

SettingsT = TypeVar("SettingsT")

MAX_DETAIL = 300
"""Characters of an `AttemptResult.detail`; longer details are cut, so a chatty receiver can't
fill the ledger."""

_DELIVERY_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
REDACTED = "[redacted]"


class EventKind(enum.Enum):
    """Which change of an incident a message is about; a channel may follow more than pages."""

    PAGED = "paged"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REOPENED = "reopened"


class Outcome(enum.Enum):
    """What one attempt came to."""

    SENT = "sent"
    """The receiver accepted the message: the delivery is done."""
    RETRY = "retry"
    """It may work later (network errors, timeouts, 408, 429, 5xx, SMTP 4xx)."""
    FAILED = "failed"
    """It will not work by trying again (other 4xx, 3xx, SMTP 5xx, a missing secret)."""


@dataclass(frozen=True)
class Link:
    """A link shown with a message (a dashboard, a trace, the runbook)."""

    title: str
    url: str


@dataclass(frozen=True)
class PageTarget:
    """Someone or something being paged at this level, as a message names it."""

    kind: str
    """`user`, `schedule` or `channel`: what the escalation level named."""
    id: str
    """The id from the paging configuration (`alice`, `primary`, `ops-hook`)."""
    name: str | None = None
    """A display name, when the configuration has one (`Alice Ng`)."""
    via: str | None = None
    """For a user found through a schedule, the schedule's id (`primary`)."""

    @property
    def display(self) -> str:
        """How a human-readable message names this target: `Alice Ng (on call for primary)`."""
        shown = self.name or self.id
        return f"{shown} (on call for {self.via})" if self.via else shown


@dataclass(frozen=True)
class DigestEntry:
    """One page a digest stands for."""

    notification_id: str
    incident_id: str
    severity: str
    title: str
    event: str = "paged"


@dataclass(frozen=True)
class Digest:
    """Pages folded into one message because their channel was over its rate limit."""

    channel_id: str
    per_minute: int
    """The channel's limit, for the message's last line."""
    total: int
    """How many pages it stands for."""
    pages: tuple[DigestEntry, ...]
    """The first of them (domain/paging/digest.py MAX_LISTED); `more` is the rest."""
    first_at: datetime
    last_at: datetime

    @property
    def more(self) -> int:
        """Pages counted but not listed."""
        return max(self.total - len(self.pages), 0)


@dataclass(frozen=True)
class PageContent:
    """What a message says about an incident: a snapshot taken when the page was decided.

    The outbox stores it (see `page_content_to_dict`) so every retry sends the same words and
    the same webhook body, whatever happened to the incident since. Enum-like values are
    names (`P1`, `DETECTED`, `PERFORMANCE`) so this contract does not depend on the domain's
    classes; times must carry a time zone.
    """

    incident_id: str
    title: str
    severity: str
    """`P0` … `P4`."""
    state: str
    """`DETECTED`, `TRIAGED`, …"""
    source: str
    incident_type: str
    """`PERFORMANCE`, `SECURITY`, …"""
    opened_at: datetime
    """When the incident was opened (or re-triggered)."""
    occurred_at: datetime
    """When this paging step (or change) happened; a retry keeps it, it is not the send time."""
    event: EventKind = EventKind.PAGED
    alert_count: int = 1
    level: int = 1
    """The escalation level being run, from 1."""
    round: int = 1
    """1 for the first pass through the levels, 2 for the first `repeat`, and so on."""
    reason: str = "new incident"
    """Why this step happens, for people: `level 2 after 10m`, `acknowledgement timed out`,
    `silence ended`, `severity rose to P0`."""
    targets: tuple[PageTarget, ...] = ()
    """Everyone and everything paged at this level (not only this delivery's recipient)."""
    assignees: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    runbook_url: str | None = None
    links: tuple[Link, ...] = ()
    digest: Digest | None = None
    """Set for a digest message (its `title` is the digest's heading); channels render it
    with `channels/digest.py` instead of the page layout."""

    def __post_init__(self) -> None:
        for name in ("opened_at", "occurred_at"):
            value: datetime = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"PageContent.{name} must carry a time zone, got {value!r}")
        if self.level < 1 or self.round < 1:
            raise ValueError("PageContent.level and .round count from 1")
        # Frozen means frozen: a caller's dict changing later must not change the message.
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "assignees", tuple(self.assignees))
        object.__setattr__(self, "links", tuple(self.links))


@dataclass(frozen=True)
class Recipient:
    """Who one delivery is addressed to, for channels that address people (email)."""

    id: str
    """The user's id in the paging configuration."""
    address: str
    """Where this channel reaches them: an email address for email."""
    name: str | None = None


@dataclass(frozen=True)
class Delivery(Generic[SettingsT]):
    """One attempt to send one message through one channel.

    `delivery_id` is the outbox row's id: the same for every attempt, so receivers can drop
    duplicates (it is the `webhook-id` and part of the email's Message-ID). It must be 1-128
    characters of `A-Z a-z 0-9 _ -` (a UUID or ULID fits); the Standard Webhooks scheme
    forbids a `.` in it.
    """

    delivery_id: str
    settings: SettingsT
    """The channel's configuration values (`WebhookSettings`, `SmtpSettings`)."""
    content: PageContent
    recipients: tuple[Recipient, ...] = ()
    """Empty for channels that are their own destination (a webhook)."""
    attempt: int = 1
    """1 for the first attempt, 2 for the first retry, and so on."""

    def __post_init__(self) -> None:
        if not _DELIVERY_ID.fullmatch(self.delivery_id):
            raise ValueError(
                "a delivery id is 1-128 characters of A-Z a-z 0-9 _ -, got "
                f"{self.delivery_id[:40]!r}"
            )
        if self.attempt < 1:
            raise ValueError("attempts count from 1")
        object.__setattr__(self, "recipients", tuple(self.recipients))


@dataclass(frozen=True)
class AttemptResult:
    """What came of one attempt, as the ledger records it.

    `detail` is cut to `MAX_DETAIL` characters, and credentials in URLs (`user:pass@`) and
    query values are redacted on construction, whoever builds it; channels also remove every
    secret they know of before building one.
    """

    outcome: Outcome
    detail: str
    status: int | None = None
    """The HTTP status or SMTP reply code, when the receiver answered."""
    retry_after: float | None = None
    """Seconds the receiver asked us to wait (`Retry-After`), as it said them (uncapped)."""
    disable_channel: bool = False
    """The receiver said it wants no more messages (HTTP 410 Gone, an archived Slack
    channel): worth a prominent log line; the channel's other deliveries will fail too."""
    response: str = ""
    """The start of the receiver's answer body, cut and redacted like `detail`: an action's
    timeline event quotes it. Empty when it sent none (or did not answer)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", _shorten(redact(self.detail)))
        # Redacted whole, then cut: a secret cut in half would no longer be found. A few
        # times MAX_DETAIL is enough to fill MAX_DETAIL once whitespace is collapsed.
        start = " ".join(redact(self.response)[: MAX_DETAIL * 4].split())
        if not start.isprintable():  # rare once whitespace is collapsed: skip the loop
            start = "".join(c if c.isprintable() else " " for c in start)
        object.__setattr__(self, "response", _shorten(start))

    @classmethod
    def sent(cls, detail: str, status: int | None = None) -> AttemptResult:
        """The receiver took it."""
        return cls(Outcome.SENT, detail, status)

    @classmethod
    def retry(
        cls, detail: str, status: int | None = None, retry_after: float | None = None
    ) -> AttemptResult:
        """Worth trying again later."""
        return cls(Outcome.RETRY, detail, status, retry_after)

    @classmethod
    def failed(
        cls, detail: str, status: int | None = None, *, disable_channel: bool = False
    ) -> AttemptResult:
        """Trying again would not help."""
        return cls(Outcome.FAILED, detail, status, disable_channel=disable_channel)


class ChannelMisconfigured(Exception):
    """Raised by an encoder when the channel cannot send as configured (an unset secret
    variable, a URL that is not http). The message must name the problem, never a secret;
    the channel turns it into a FAILED result."""


class Channel(ABC, Generic[SettingsT]):
    """Sends one attempt of a delivery. One instance serves every configured channel of its
    kind (the settings come with each delivery), so a configuration reload changes nothing
    here; `close()` releases what the instance holds (an HTTP session)."""

    @abstractmethod
    async def send(self, delivery: Delivery[SettingsT]) -> AttemptResult:
        """Make one attempt. Never raises for a network or receiver failure; honours
        cancellation."""

    async def close(self) -> None:
        """Release connections; the channel may not be used afterwards. Most channels hold
        nothing to release, so this does nothing unless overridden."""


class Redactor:
    """Removes known secrets from text that may end up on the ledger or in a log.

    Besides the given values (a signing secret, a password, a secret URL and its path), it
    always redacts the password in `scheme://user:password@` and every query value.
    """

    _MIN_SECRET = 4
    """Shorter values are not searched for: replacing every `a` in a detail would only
    garble it; such a secret is too weak to matter anyway."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        values = {s for s in secrets if s and len(s) >= self._MIN_SECRET}
        # Longest first, so a secret URL is removed whole before its path is.
        self._secrets = sorted(values, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return redact(text)


_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")
_QUERY_VALUE = re.compile(r"([?&][^=\s&#?]+=)[^&\s#]+")


def redact(text: str) -> str:
    """Redact URL passwords and query values in free text (`https://u:[redacted]@h/p?k=[redacted]`)."""
    text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    return _QUERY_VALUE.sub(rf"\1{REDACTED}", text)


def _shorten(text: str) -> str:
    # One line: a detail is shown in tables and log fields.
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def page_content_to_dict(content: PageContent) -> dict[str, Any]:
    """A JSON-ready form of the content, for the outbox row (not the webhook body, which is
    `render.webhook_payload`: that one is a public format, this one is ours to change)."""
    return {
        "incident_id": content.incident_id,
        "title": content.title,
        "severity": content.severity,
        "state": content.state,
        "source": content.source,
        "incident_type": content.incident_type,
        "opened_at": content.opened_at.isoformat(),
        "occurred_at": content.occurred_at.isoformat(),
        "event": content.event.value,
        "alert_count": content.alert_count,
        "level": content.level,
        "round": content.round,
        "reason": content.reason,
        "targets": [
            {"kind": t.kind, "id": t.id, "name": t.name, "via": t.via} for t in content.targets
        ],
        "assignees": list(content.assignees),
        "labels": dict(content.labels),
        "runbook_url": content.runbook_url,
        "links": [{"title": link.title, "url": link.url} for link in content.links],
        **({} if content.digest is None else {"digest": _digest_to_dict(content.digest)}),
    }


def _digest_to_dict(digest: Digest) -> dict[str, Any]:
    return {
        "channel_id": digest.channel_id,
        "per_minute": digest.per_minute,
        "total": digest.total,
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
        "first_at": digest.first_at.isoformat(),
        "last_at": digest.last_at.isoformat(),
    }


def _digest_from_dict(data: Mapping[str, Any] | None) -> Digest | None:
    if data is None:
        return None
    return Digest(
        channel_id=data["channel_id"],
        per_minute=int(data["per_minute"]),
        total=int(data["total"]),
        pages=tuple(
            DigestEntry(
                notification_id=p["notification_id"],
                incident_id=p["incident_id"],
                severity=p["severity"],
                title=p["title"],
                event=p.get("event", "paged"),
            )
            for p in data["pages"]
        ),
        first_at=datetime.fromisoformat(data["first_at"]),
        last_at=datetime.fromisoformat(data["last_at"]),
    )


def page_content_from_dict(data: Mapping[str, Any]) -> PageContent:
    """The inverse of `page_content_to_dict`; raises KeyError or ValueError on a bad row."""
    return PageContent(
        incident_id=data["incident_id"],
        title=data["title"],
        severity=data["severity"],
        state=data["state"],
        source=data["source"],
        incident_type=data["incident_type"],
        opened_at=datetime.fromisoformat(data["opened_at"]),
        occurred_at=datetime.fromisoformat(data["occurred_at"]),
        event=EventKind(data["event"]),
        alert_count=int(data["alert_count"]),
        level=int(data["level"]),
        round=int(data["round"]),
        reason=data["reason"],
        targets=tuple(
            PageTarget(kind=t["kind"], id=t["id"], name=t.get("name"), via=t.get("via"))
            for t in data["targets"]
        ),
        assignees=tuple(data["assignees"]),
        labels=dict(data["labels"]),
        runbook_url=data.get("runbook_url"),
        links=tuple(Link(title=link["title"], url=link["url"]) for link in data["links"]),
        digest=_digest_from_dict(data.get("digest")),
    )
