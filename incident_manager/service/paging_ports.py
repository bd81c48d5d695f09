"""The storage contract for paging: escalations, the delivery ledger, silences, overrides.

Part of the unit of work (`uow.paging`), so the change that makes a page due
and the rows that say "send this" commit together (the transactional outbox).
"""

from __future__ import annotations

import abc
from datetime import datetime

from incident_manager.domain.paging.ledger import Escalation, Notification, Override, Silence


class PagingRepository(abc.ABC):
    """Paging state, stored with the incidents it is about."""

    # Escalations: one per paged incident.

    @abc.abstractmethod
    def escalation(self, incident_id: str) -> Escalation | None:
        """The incident's escalation, or None if it was never paged."""

    @abc.abstractmethod
    def save_escalation(self, escalation: Escalation) -> None:
        """Insert or update; raises ConcurrentModification if its fence is stale."""

    @abc.abstractmethod
    def claim_due_escalations(self, now: datetime, limit: int) -> list[Escalation]:
        """Up to `limit` escalations due at `now`, earliest first, locked for this unit of work.

        Two replicas asking at once get different rows (SKIP LOCKED); a row
        whose unit of work dies is released with its transaction.
        """

    @abc.abstractmethod
    def held_by(self, silence_id: str) -> list[Escalation]:
        """The escalations a silence is holding."""

    @abc.abstractmethod
    def next_due(self) -> datetime | None:
        """The earliest due time of any escalation step or pending delivery attempt."""

    # Notifications: the outbox and ledger.

    @abc.abstractmethod
    def add_notifications(self, notifications: list[Notification]) -> None: ...

    @abc.abstractmethod
    def save_notification(self, notification: Notification) -> None: ...

    @abc.abstractmethod
    def notification(self, notification_id: str) -> Notification | None: ...

    @abc.abstractmethod
    def pending_notifications(self, incident_id: str) -> list[Notification]:
        """The incident's notifications not yet sent, failed or suppressed."""

    @abc.abstractmethod
    def claim_notifications(
        self, worker: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Notification]:
        """Take up to `limit` pending deliveries whose attempt is due and whose lease
        (if any) has run out: each gets `claimed_by=worker`, `claim_until=lease_until`
        and one more attempt, committed with this unit of work."""

    @abc.abstractmethod
    def release_claims(self) -> int:
        """Forget every lease (SQLite at start: only one process can hold the file)."""

    @abc.abstractmethod
    def list_notifications(
        self, incident_id: str, after: tuple[datetime, int, str] | None, limit: int
    ) -> list[Notification]:
        """The incident's ledger, oldest first, after the `ledger_key` given."""

    # Silences.

    @abc.abstractmethod
    def add_silence(self, silence: Silence) -> None: ...

    @abc.abstractmethod
    def save_silence(self, silence: Silence) -> None: ...

    @abc.abstractmethod
    def silence(self, silence_id: str) -> Silence | None: ...

    @abc.abstractmethod
    def silences_active(self, now: datetime) -> list[Silence]:
        """Silences not yet ended (active or pending), for matching."""

    @abc.abstractmethod
    def list_silences(
        self, include_expired: bool, now: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[Silence]:
        """Newest first (by create time, then id), after the key."""

    # Overrides.

    @abc.abstractmethod
    def add_override(self, override: Override) -> None: ...

    @abc.abstractmethod
    def override(self, override_id: str) -> Override | None: ...

    @abc.abstractmethod
    def delete_override(self, override_id: str) -> bool: ...

    @abc.abstractmethod
    def overrides_between(self, schedule_id: str, start: datetime, end: datetime) -> list[Override]:
        """The schedule's overrides that overlap [start, end)."""

    @abc.abstractmethod
    def list_overrides(
        self,
        schedule_id: str,
        include_ended: bool,
        now: datetime,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Override]:
        """By start time, then id, after the key."""
