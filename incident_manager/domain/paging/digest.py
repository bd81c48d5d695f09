"""Calm during storms: a channel's rate limit, and the digest that carries the pages past it.

A channel with `rate_limit: {per_minute: N}` sends at most N messages in each fixed minute
of the clock (UTC: 09:14:00 up to 09:15:00). The count is one row per channel
(`ChannelWindow`), read and written under a lock in the unit of work that claims
deliveries, so replicas sharing a database share one quota, and every attempt (a retry too)
counts: N is what the receiver sees.

When a window's quota is used up, a page that falls due is not sent and not dropped: it is
*folded* into the channel's open digest, one notification listing the pages folded into it
(id, severity, title; the first `MAX_LISTED`, then "and K more"), due when the next window
starts. A due digest takes its window's first slot; once claimed it is closed (later pages
open the next digest), and its content, fixed as pages were folded, is what every attempt
of it sends. When the digest ends SENT or FAILED, so do the pages folded into it (`settle`).

Only a message's first attempt is folded, and only a message about an incident (a page or a
lifecycle change): a retry, a digest, or an automated action's call waits for the next
window instead. An email channel keeps one open digest per address, so a user's pages never
end up in someone else's inbox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from incident_manager.domain.paging.ledger import (
    Notification,
    NotificationState,
    new_notification_id,
)
from incident_manager.domain.paging.model import TargetKind

WINDOW = timedelta(minutes=1)
MAX_LISTED = 20
"""Pages a digest lists one by one; the rest are counted ("and 3,412 more")."""
FOLDABLE_EVENTS = frozenset({"paged", "acknowledged", "resolved", "reopened"})
"""The messages a digest may stand for: those about an incident's paging or lifecycle."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def window_start(moment: datetime) -> datetime:
    """The start of the minute of the clock (UTC) that `moment` falls in."""
    return moment - (moment - _EPOCH) % WINDOW


@dataclass
class ChannelWindow:
    """A rate-limited channel's count for the current window, and its open digests."""

    channel_id: str
    start: datetime
    """The window the count is for."""
    used: int = 0
    """Messages claimed in that window."""
    open_digests: dict[str, str] = field(default_factory=dict)
    """Recipient -> id of the digest still taking pages for it (not yet claimed)."""

    def roll(self, now: datetime) -> None:
        """Start counting afresh when `now` is in a later window."""
        start = window_start(now)
        # Only forward: a replica whose clock lags must not reset a newer window's count.
        if start > self.start:
            self.start, self.used = start, 0

    @property
    def next_start(self) -> datetime:
        return self.start + WINDOW


@dataclass(frozen=True)
class Rationing:
    """What becomes of the due deliveries of one claim."""

    claim: list[Notification]
    """To send now: within their channel's quota, or of a channel without a limit."""
    fold: list[Notification]
    """Over the quota: to be folded into their channel's digest."""
    defer: list[Notification]
    """Over the quota and not foldable: due again when the channel's next window starts."""


def foldable(notification: Notification) -> bool:
    """Whether a digest may carry this message instead of it being sent on its own."""
    return (
        notification.attempts == 0
        and not notification.digest_id
        and not notification.is_digest
        # An automated action (a kill switch) must be called, not summarised.
        and notification.target_kind is not TargetKind.ACTION
        and notification.content.get("event") in FOLDABLE_EVENTS
    )


def ration(
    due: Sequence[Notification],
    windows: Mapping[str, ChannelWindow],
    limits: Mapping[str, int],
    now: datetime,
) -> Rationing:
    """Share each window's quota among the due deliveries, counting the ones claimed.

    `windows` are the rate-limited channels' rows, locked for this unit of work; `limits`
    their messages a minute. A due digest goes first: it holds the oldest news.
    """
    for each in windows.values():
        each.roll(now)
    claim: list[Notification] = []
    fold: list[Notification] = []
    defer: list[Notification] = []
    for notification in sorted(due, key=lambda n: not n.is_digest):
        window = windows.get(notification.channel_id)
        limit = limits.get(notification.channel_id)
        if window is None or limit is None:
            claim.append(notification)
        elif window.used < limit:
            window.used += 1
            claim.append(notification)
        elif foldable(notification):
            fold.append(notification)
        else:
            defer.append(notification)
    return Rationing(claim, fold, defer)


def new_digest(first: Notification, per_minute: int, due: datetime, now: datetime) -> Notification:
    """An empty digest for the channel and recipient of `first`, due at `due`."""
    return Notification(
        id=new_notification_id(),
        incident_id="",
        policy_id="",
        level=0,
        round=0,
        target_kind=TargetKind.CHANNEL,
        target_id=first.channel_id,
        user_id="",
        channel_id=first.channel_id,
        channel_type=first.channel_type,
        recipient=first.recipient,
        reason="digest of 0 pages",
        create_time=now,
        update_time=now,
        next_attempt_time=due,
        content=_content(first.channel_id, per_minute, now),
    )


def fold(digest: Notification, pages: Sequence[Notification], now: datetime) -> None:
    """Add `pages` to the digest's content and point each page at the digest."""
    content = dict(digest.content)
    part = dict(content["digest"])  # type: ignore[call-overload]
    listed = list(part["pages"])
    for page in pages:
        if len(listed) < MAX_LISTED:
            listed.append(_entry(page))
        severity = str(page.content.get("severity", ""))
        if severity and (not content["severity"] or severity < str(content["severity"])):
            content["severity"] = severity  # P0 < P1 < ...: the worst one listed
    part["total"] = int(part["total"]) + len(pages)
    part["pages"] = listed
    part["last_at"] = now.isoformat()
    content["digest"] = part
    content["occurred_at"] = now.isoformat()
    content["title"] = digest_title(part["total"], datetime.fromisoformat(part["first_at"]), now)
    content["reason"] = digest.reason = f"digest of {part['total']} pages"
    digest.content = content
    digest.update_time = now
    per_minute = int(part["per_minute"])
    why = (
        f"folded into digest {digest.id}: channel {digest.channel_id} sends at most"
        f" {per_minute} message{'' if per_minute == 1 else 's'} a minute"
    )
    for page in pages:
        page.digest_id = digest.id
        page.next_attempt_time = None
        page.last_error = why
        page.update_time = now


def digest_title(total: int, first: datetime, last: datetime) -> str:
    """`17 more incidents paged in the last minute` (or `since 09:14 UTC`, for a digest
    that took pages over several minutes because it could not be sent sooner)."""
    what = f"{total:,} more incident{'' if total == 1 else 's'} paged"
    if window_start(first) == window_start(last):
        return f"{what} in the last minute"
    return f"{what} since {first.astimezone(UTC):%H:%M} UTC"


def settle(page: Notification, digest: Notification, now: datetime) -> None:
    """A folded page ends as its digest did: SENT, or FAILED with the digest's error."""
    if digest.state is NotificationState.SENT:
        page.sent(now)
        page.last_error = f"SENT in digest {digest.id}"
    else:
        page.failed(f"digest {digest.id} failed: {digest.last_error}", now)


def _entry(page: Notification) -> dict[str, Any]:
    content = page.content
    return {
        "notification_id": page.id,
        "incident_id": page.incident_id,
        "severity": content.get("severity", ""),
        "title": content.get("title", ""),
        "event": content.get("event", "paged"),
    }


def _content(channel_id: str, per_minute: int, now: datetime) -> dict[str, object]:
    """A digest's content: the keys of a page's (so every channel can read it) and `digest`."""
    return {
        "incident_id": "",
        "title": digest_title(0, now, now),
        "severity": "",
        "state": "",
        "source": "",
        "incident_type": "",
        "opened_at": now.isoformat(),
        "occurred_at": now.isoformat(),
        "event": "paged",
        "alert_count": 0,
        "level": 1,
        "round": 1,
        "reason": "digest of 0 pages",
        "targets": [],
        "assignees": [],
        "labels": {},
        "runbook_url": None,
        "links": [],
        "digest": {
            "channel_id": channel_id,
            "per_minute": per_minute,
            "total": 0,
            "pages": [],
            "first_at": now.isoformat(),
            "last_at": now.isoformat(),
        },
    }
