"""Rate-limited channels at claim time, and what a digest's outcome does to its pages.

Both run inside the paging worker's units of work (service/scheduler.py): the claim and
the folding commit together, so a page is either claimed, folded into a digest, or left
due, never lost; a digest's pages settle in the unit of work that records the digest's
outcome. The rules are domain/paging/digest.py's.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from incident_manager.domain.model import EventType
from incident_manager.domain.paging import digest
from incident_manager.domain.paging.digest import ChannelWindow
from incident_manager.domain.paging.ledger import Notification, NotificationState
from incident_manager.domain.paging.model import PagingConfig
from incident_manager.service.ports import IncidentRepository, PagingRepository


@dataclass(frozen=True)
class Claim:
    """What one claim did: the deliveries to send now, and the ones it held back."""

    claimed: list[Notification]
    folded: Mapping[str, int] = field(default_factory=dict)
    """Pages folded into a digest, by channel id."""
    deferred: int = 0
    """Deliveries over their channel's quota left for its next window."""

    @property
    def handled(self) -> int:
        """How many due deliveries the claim took care of, one way or another."""
        return len(self.claimed) + sum(self.folded.values()) + self.deferred


def rate_limits(config: PagingConfig | None) -> dict[str, int]:
    """Messages a minute of each rate-limited channel in the configuration."""
    if config is None:
        return {}
    return {c.id: c.rate_limit.per_minute for c in config.channels if c.rate_limit is not None}


def claim_deliveries(
    paging: PagingRepository,
    worker: str,
    now: datetime,
    lease_until: datetime,
    limit: int,
    limits: Mapping[str, int],
) -> Claim:
    """Claim up to `limit` due deliveries, keeping each rate-limited channel to its quota.

    Without limits this is `claim_notifications`. With them, the channels' window rows are
    locked first (in id order), so replicas take turns and count from the same rows.
    """
    if not limits:
        return Claim(paging.claim_notifications(worker, now, lease_until, limit))
    windows = paging.lock_channel_windows(sorted(limits), now)
    as_read = copy.deepcopy(windows)
    due = paging.due_notifications(now, limit)
    due += _due_digests(paging, windows.values(), {n.id for n in due}, now)
    rationing = digest.ration(due, windows, limits, now)
    for notification in rationing.claim:
        window = windows.get(notification.channel_id)
        if window is not None and window.open_digests.get(notification.recipient) == (
            notification.id
        ):
            del window.open_digests[notification.recipient]  # claimed: it takes no more pages
    # Deferred first: a deferred digest may take pages below, and must keep them.
    for notification in rationing.defer:
        notification.next_attempt_time = windows[notification.channel_id].next_start
        paging.save_notification(notification)
    groups: dict[tuple[str, str], list[Notification]] = defaultdict(list)
    for page in rationing.fold:
        groups[(page.channel_id, page.recipient)].append(page)
    for (channel_id, recipient), pages in groups.items():
        window = windows[channel_id]
        open_digest = _open_digest(paging, window.open_digests.get(recipient))
        if open_digest is None:
            open_digest = digest.new_digest(pages[0], limits[channel_id], window.next_start, now)
            digest.fold(open_digest, pages, now)
            paging.add_notifications([open_digest])
            window.open_digests[recipient] = open_digest.id
        else:
            digest.fold(open_digest, pages, now)
            paging.save_digest(open_digest)
        for page in pages:
            paging.save_notification(page)
    for channel_id, window in windows.items():
        if window != as_read[channel_id]:  # an idle pass writes nothing
            paging.save_channel_window(window)
    claimed = paging.claim_these([n.id for n in rationing.claim], worker, lease_until)
    folded = Counter(page.channel_id for page in rationing.fold)
    return Claim(claimed, dict(folded), len(rationing.defer))


def _due_digests(
    paging: PagingRepository, windows: Iterable[ChannelWindow], seen: set[str], now: datetime
) -> list[Notification]:
    """The open digests that are due but not among `seen`: pages that fell due before a
    digest (a backlog) must not push it out of the claim, since it goes first."""
    found: list[Notification] = []
    for window in windows:
        for recipient, digest_id in list(window.open_digests.items()):
            if digest_id in seen:
                continue
            still_open = _open_digest(paging, digest_id)
            if still_open is None:
                del window.open_digests[recipient]  # claimed elsewhere, or gone
            elif still_open.next_attempt_time is not None and still_open.next_attempt_time <= now:
                found.append(still_open)
    return found


def _open_digest(paging: PagingRepository, digest_id: str | None) -> Notification | None:
    """The digest still taking pages, or None if it has been claimed meanwhile (by a replica
    whose configuration has no limit for the channel, during a reload) or is gone."""
    if not digest_id:
        return None
    found = paging.notification(digest_id)
    if (
        found is None
        or found.state is not NotificationState.PENDING
        or found.attempts
        or found.claimed_by
    ):
        return None
    return found


def settle_digest(
    paging: PagingRepository, load: IncidentRepository, sent: Notification, now: datetime
) -> None:
    """A digest ended SENT or FAILED: so do the pages still waiting in it, each with a
    timeline event on its incident like a page sent on its own."""
    outcome = "SENT" if sent.state is NotificationState.SENT else "FAILED"
    for page in paging.folded_into(sent.id):
        digest.settle(page, sent, now)
        paging.save_notification(page)
        incident = load.get(page.incident_id)
        if incident is None:
            continue
        event = str(page.content.get("event", "paged"))
        suffix = "" if outcome == "SENT" else f": {sent.last_error}"
        if event == "paged":
            verb = "paged" if outcome == "SENT" else "could not page"
            what = f"{verb} {page.target} through {page.channel_type} {page.channel_id}"
        else:  # a lifecycle message (docs/PAGING.md, Following an incident)
            verb = "told" if outcome == "SENT" else "could not tell"
            what = f"{verb} channel {page.channel_id} the incident was {event}"
        incident.record_paging(
            EventType.NOTIFICATION_SENT,
            f"{what} in digest {sent.id}{suffix}",
            now,
            {
                "event": event,
                "notification_id": page.id,
                "digest_id": sent.id,
                "target": page.target,
                "channel": page.channel_id,
                "outcome": outcome,
                "attempts": str(sent.attempts),
                "level": str(page.level),
                "round": str(page.round),
            },
        )
        load.save(incident)
