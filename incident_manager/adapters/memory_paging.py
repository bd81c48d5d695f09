"""Paging state in memory, staged per unit of work like the rest of adapters/memory.py."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from incident_manager.domain.errors import ConcurrentModification
from incident_manager.domain.paging.digest import ChannelWindow, window_start
from incident_manager.domain.paging.ledger import (
    Escalation,
    EscalationStatus,
    Notification,
    NotificationState,
)
from incident_manager.domain.paging.model import Override, Silence
from incident_manager.service.ports import PagingRepository


class PagingState:
    """What is committed."""

    def __init__(self) -> None:
        self.escalations: dict[str, Escalation] = {}
        self.notifications: dict[str, Notification] = {}
        self.silences: dict[str, Silence] = {}
        self.overrides: dict[str, Override] = {}
        self.windows: dict[str, ChannelWindow] = {}


class PagingStaged:
    """What one unit of work changed, applied only on commit."""

    def __init__(self) -> None:
        self.escalations: dict[str, Escalation] = {}
        self.notifications: dict[str, Notification] = {}
        self.silences: dict[str, Silence] = {}
        self.overrides: dict[str, Override | None] = {}
        self.windows: dict[str, ChannelWindow] = {}

    def apply(self, state: PagingState) -> None:
        state.windows.update(self.windows)
        state.escalations.update(self.escalations)
        state.notifications.update(self.notifications)
        state.silences.update(self.silences)
        for key, value in self.overrides.items():
            if value is None:
                state.overrides.pop(key, None)
            else:
                state.overrides[key] = value


class MemoryPaging(PagingRepository):
    def __init__(self, state: PagingState, staged: PagingStaged) -> None:
        self._state = state
        self._staged = staged

    def _escalations(self) -> dict[str, Escalation]:
        return self._state.escalations | self._staged.escalations

    def _notifications(self) -> dict[str, Notification]:
        return self._state.notifications | self._staged.notifications

    def _overrides(self) -> dict[str, Override]:
        merged: dict[str, Override | None] = {**self._state.overrides, **self._staged.overrides}
        return {key: value for key, value in merged.items() if value is not None}

    def escalation(self, incident_id: str) -> Escalation | None:
        found = self._escalations().get(incident_id)
        if found is None:
            return None
        clone = copy.deepcopy(found)
        clone.loaded_fence = found.fence
        return clone

    def save_escalation(self, escalation: Escalation) -> None:
        stored = self._escalations().get(escalation.incident_id)
        stored_fence = stored.fence if stored is not None else -1
        if stored_fence != escalation.loaded_fence:
            raise ConcurrentModification(escalation.incident_id)
        kept = copy.deepcopy(escalation)
        kept.fence = stored_fence + 1
        kept.loaded_fence = kept.fence
        escalation.fence = escalation.loaded_fence = kept.fence
        self._staged.escalations[escalation.incident_id] = kept

    def claim_due_escalations(self, now: datetime, limit: int) -> list[Escalation]:
        due = [
            e
            for e in self._escalations().values()
            if e.due_at is not None and e.due_at <= now and e.status is not EscalationStatus.STOPPED
        ]
        due.sort(key=lambda e: (e.due_at or now, e.incident_id))
        return [self.escalation(e.incident_id) for e in due[:limit]]  # type: ignore[misc]

    def held_by(self, silence_id: str) -> list[Escalation]:
        return [
            self.escalation(e.incident_id)  # type: ignore[misc]
            for e in self._escalations().values()
            if e.status is EscalationStatus.SILENCED and e.silenced_by == silence_id
        ]

    def next_due(self) -> datetime | None:
        times = [e.due_at for e in self._escalations().values() if e.due_at is not None]
        times += [
            max(n.next_attempt_time, n.claim_until) if n.claim_until else n.next_attempt_time
            for n in self._notifications().values()
            if n.state is NotificationState.PENDING and n.next_attempt_time is not None
        ]
        return min(times) if times else None

    def add_notifications(self, notifications: list[Notification]) -> None:
        for notification in notifications:
            self._staged.notifications[notification.id] = copy.deepcopy(notification)

    def save_notification(self, notification: Notification) -> None:
        self._staged.notifications[notification.id] = copy.deepcopy(notification)

    def notification(self, notification_id: str) -> Notification | None:
        found = self._notifications().get(notification_id)
        return copy.deepcopy(found) if found is not None else None

    def pending_notifications(self, incident_id: str) -> list[Notification]:
        return [
            copy.deepcopy(n)
            for n in self._notifications().values()
            if n.incident_id == incident_id and n.state is NotificationState.PENDING
        ]

    def live_notifications(self, incident_id: str) -> list[Notification]:
        live = (NotificationState.PENDING, NotificationState.SENT)
        rows = [
            n
            for n in self._notifications().values()
            if n.incident_id == incident_id and n.state in live and n.channel_id
        ]
        return [copy.deepcopy(n) for n in sorted(rows, key=lambda n: n.ledger_key)]

    def claim_notifications(
        self, worker: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Notification]:
        due = [
            n
            for n in self._notifications().values()
            if n.state is NotificationState.PENDING
            and n.next_attempt_time is not None
            and n.next_attempt_time <= now
            and (n.claim_until is None or n.claim_until <= now)
        ]
        due.sort(key=lambda n: (n.next_attempt_time or now, n.id))
        claimed = []
        for n in due[:limit]:
            clone = copy.deepcopy(n)
            clone.claimed_by = worker
            clone.claim_until = lease_until
            clone.attempts += 1
            self._staged.notifications[clone.id] = clone
            claimed.append(copy.deepcopy(clone))
        return claimed

    def release_claims(self) -> int:
        released = 0
        for n in self._notifications().values():
            if n.claimed_by:
                self._staged.notifications[n.id] = replace(n, claimed_by="", claim_until=None)
                released += 1
        return released

    def list_notifications(
        self, incident_id: str, after: tuple[datetime, int, str] | None, limit: int
    ) -> list[Notification]:
        rows = sorted(
            (n for n in self._notifications().values() if n.incident_id == incident_id),
            key=lambda n: n.ledger_key,
        )
        if after is not None:
            rows = [n for n in rows if n.ledger_key > after]
        return [copy.deepcopy(n) for n in rows[:limit]]

    # Units of work run one at a time here, which is the windows' lock.

    def lock_channel_windows(
        self, channel_ids: Sequence[str], now: datetime
    ) -> dict[str, ChannelWindow]:
        windows = self._state.windows | self._staged.windows
        return {
            channel_id: copy.deepcopy(windows.get(channel_id))
            or ChannelWindow(channel_id, window_start(now))
            for channel_id in channel_ids
        }

    def save_channel_window(self, window: ChannelWindow) -> None:
        self._staged.windows[window.channel_id] = copy.deepcopy(window)

    def due_notifications(self, now: datetime, limit: int) -> list[Notification]:
        due = [
            n
            for n in self._notifications().values()
            if n.state is NotificationState.PENDING
            and n.next_attempt_time is not None
            and n.next_attempt_time <= now
            and (n.claim_until is None or n.claim_until <= now)
        ]
        due.sort(key=lambda n: (n.next_attempt_time or now, n.id))
        return [copy.deepcopy(n) for n in due[:limit]]

    def claim_these(
        self, notification_ids: Sequence[str], worker: str, lease_until: datetime
    ) -> list[Notification]:
        notifications = self._notifications()
        claimed = []
        for notification_id in notification_ids:
            clone = copy.deepcopy(notifications[notification_id])
            clone.claimed_by = worker
            clone.claim_until = lease_until
            clone.attempts += 1
            self._staged.notifications[clone.id] = clone
            claimed.append(copy.deepcopy(clone))
        return sorted(claimed, key=lambda n: n.ledger_key)

    def save_digest(self, digest: Notification) -> None:
        self.save_notification(digest)

    def folded_into(self, digest_id: str) -> list[Notification]:
        return sorted(
            (
                copy.deepcopy(n)
                for n in self._notifications().values()
                if digest_id and n.digest_id == digest_id and n.state is NotificationState.PENDING
            ),
            key=lambda n: n.ledger_key,
        )

    def add_silence(self, silence: Silence) -> None:
        self._staged.silences[silence.id] = silence

    def save_silence(self, silence: Silence) -> None:
        self._staged.silences[silence.id] = silence

    def silence(self, silence_id: str) -> Silence | None:
        return (self._state.silences | self._staged.silences).get(silence_id)

    def silences_active(self, now: datetime) -> list[Silence]:
        return [s for s in (self._state.silences | self._staged.silences).values() if s.end > now]

    def list_silences(
        self, include_expired: bool, now: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[Silence]:
        rows = sorted(
            (
                s
                for s in (self._state.silences | self._staged.silences).values()
                if include_expired or s.end > now
            ),
            key=lambda s: (s.create_time or s.start, s.id),
            reverse=True,
        )
        if after is not None:
            rows = [s for s in rows if (s.create_time or s.start, s.id) < after]
        return rows[:limit]

    def add_override(self, override: Override) -> None:
        self._staged.overrides[override.id] = override

    def override(self, override_id: str) -> Override | None:
        return self._overrides().get(override_id)

    def delete_override(self, override_id: str) -> bool:
        if override_id not in self._overrides():
            return False
        self._staged.overrides[override_id] = None
        return True

    def overrides_between(self, schedule_id: str, start: datetime, end: datetime) -> list[Override]:
        return sorted(
            (
                o
                for o in self._overrides().values()
                if o.schedule_id == schedule_id and o.start < end and o.end > start
            ),
            key=lambda o: (o.start, o.id),
        )

    def list_overrides(
        self,
        schedule_id: str,
        include_ended: bool,
        now: datetime,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Override]:
        rows = sorted(
            (
                o
                for o in self._overrides().values()
                if (not schedule_id or o.schedule_id == schedule_id)
                and (include_ended or o.end > now)
            ),
            key=lambda o: (o.start, o.id),
        )
        if after is not None:
            rows = [o for o in rows if (o.start, o.id) > after]
        return rows[:limit]
