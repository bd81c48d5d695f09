"""The storage contract: what the service layer needs from a database.

The service layer owns these ports; the backends in incident_manager.adapters
implement them, and each passes the same contract tests.

Work runs as a *unit of work*: a synchronous function given a `UnitOfWork`,
executed by the backend inside one transaction (on the backend's own thread,
so the event loop never blocks on disk). The work is kept only if it called
`commit()` and then returned normally; otherwise it leaves no trace. Events
stored by kept work are handed, in sequence order, to the storage's
listeners.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol, TypeVar

from incident_manager.domain.model import (
    Incident,
    IncidentEvent,
    IncidentState,
    Note,
    ReceivedAlert,
    RequestRecord,
    Severity,
)
from incident_manager.domain.paging.digest import ChannelWindow
from incident_manager.domain.paging.ledger import Escalation, Notification
from incident_manager.domain.paging.model import Override, Silence
from incident_manager.domain.query import IncidentPage, IncidentQuery

T = TypeVar("T")
EventListener = Callable[[list[IncidentEvent]], None]


class IncidentRepository(abc.ABC):
    """Incidents, with their timeline events and notes."""

    @abc.abstractmethod
    def get(self, incident_id: str, *, with_history: bool = False) -> Incident | None:
        """The incident, or None. With history, also its latest timeline events and notes."""

    @abc.abstractmethod
    def find_mergeable(self, fingerprint: str, last_alert_since: datetime) -> Incident | None:
        """The active incident with this fingerprint whose last alert arrived at or after
        `last_alert_since`; of several, the one whose last alert is the latest (then the
        greatest id)."""

    @abc.abstractmethod
    def add(self, incident: Incident) -> None:
        """Store a new incident with its pending events and notes."""

    @abc.abstractmethod
    def save(self, incident: Incident) -> None:
        """Store the changes of an incident read in this unit of work.

        Raises ConcurrentModification if another writer stored a newer
        version since it was read.
        """

    def add_all(self, incidents: Sequence[Incident]) -> None:
        """`add` each, in order; a backend may write them with one statement."""
        for incident in incidents:
            self.add(incident)

    def save_all(self, incidents: Sequence[Incident]) -> None:
        """`save` each, in order; a backend may write them with one statement per table."""
        for incident in incidents:
            self.save(incident)

    @abc.abstractmethod
    def list(self, query: IncidentQuery) -> IncidentPage:
        """One page of incidents matching the query, in its order."""

    @abc.abstractmethod
    def get_note(self, note_id: str) -> Note | None:
        """One note by its id, however old."""

    @abc.abstractmethod
    def count_active(self) -> dict[tuple[Severity, IncidentState], int]:
        """How many active incidents there are of each severity and state (none: left out)."""


class AlertLog(abc.ABC):
    """Every accepted alert, keyed by (source, alert id), with the answer it got."""

    @abc.abstractmethod
    def get(self, source: str, alert_id: str) -> ReceivedAlert | None: ...

    @abc.abstractmethod
    def add(self, received: ReceivedAlert) -> None: ...

    def add_all(self, received: Sequence[ReceivedAlert]) -> None:
        """`add` each, in order; a backend may write them with one statement."""
        for one in received:
            self.add(one)

    @abc.abstractmethod
    def clear(self, source: str, alert_id: str, when: datetime) -> None:
        """Mark a stored alert as cleared by a resolve signal."""

    @abc.abstractmethod
    def open_count(self, incident_id: str) -> int:
        """How many of the incident's alerts have not cleared."""

    @abc.abstractmethod
    def latest(self, incident_id: str) -> tuple[str, str] | None:
        """(source, alert id) of the incident's most recently received alert
        (ties broken by the greater id)."""


class RequestLog(abc.ABC):
    """Requests that carried a client-chosen request_id, so that retries are safe."""

    @abc.abstractmethod
    def get(self, request_id: str) -> RequestRecord | None: ...

    @abc.abstractmethod
    def add(self, request_id: str, record: RequestRecord) -> None: ...


class EventLog(abc.ABC):
    """All stored timeline events in sequence order, for StreamIncidents replays."""

    @abc.abstractmethod
    def after(self, sequence: int, limit: int) -> list[IncidentEvent]:
        """Up to `limit` events with a greater sequence, in sequence order."""

    @abc.abstractmethod
    def last_sequence(self) -> int:
        """The greatest stored sequence, 0 when there is none."""


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
    def save_notification(self, notification: Notification) -> None:
        """Store a delivery's progress: its state, attempts, error, times and claim.

        The rest (target, content...) is fixed when the delivery is added."""

    @abc.abstractmethod
    def notification(self, notification_id: str) -> Notification | None: ...

    @abc.abstractmethod
    def pending_notifications(self, incident_id: str) -> list[Notification]:
        """The incident's notifications not yet sent, failed or suppressed."""

    @abc.abstractmethod
    def live_notifications(self, incident_id: str) -> list[Notification]:
        """The incident's deliveries through a channel that went out or are on their way
        (SENT or PENDING), in ledger order: whom its later changes are told to."""

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

    # Rate limits and digests (domain/paging/digest.py).

    @abc.abstractmethod
    def lock_channel_windows(
        self, channel_ids: Sequence[str], now: datetime
    ) -> dict[str, ChannelWindow]:
        """Each channel's rate-limit window (a new one, empty, for a channel that has none),
        locked for this unit of work in the order given (FOR UPDATE): another replica's
        claim waits for it, then reads what this one committed. Lock them before any
        delivery, so two claims never wait for each other."""

    @abc.abstractmethod
    def save_channel_window(self, window: ChannelWindow) -> None: ...

    @abc.abstractmethod
    def due_notifications(self, now: datetime, limit: int) -> list[Notification]:
        """The deliveries `claim_notifications` would take, earliest due first, locked for
        this unit of work (SKIP LOCKED) but not claimed yet."""

    @abc.abstractmethod
    def claim_these(
        self, notification_ids: Sequence[str], worker: str, lease_until: datetime
    ) -> list[Notification]:
        """Claim these deliveries (found by `due_notifications` in this unit of work) the
        way `claim_notifications` claims; in ledger order."""

    @abc.abstractmethod
    def save_digest(self, digest: Notification) -> None:
        """Store a digest's progress, content and reason: folding pages changes all three."""

    @abc.abstractmethod
    def folded_into(self, digest_id: str) -> list[Notification]:
        """The pages folded into this digest that are still PENDING, in ledger order."""

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


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one delivery attempt came to, as a channel reports it."""

    sent: bool
    retry: bool
    """Not sent, but worth trying again (network error, 5xx, 429)."""
    detail: str = ""
    """What happened, with every secret removed: shown on the ledger."""
    retry_after: float | None = None
    """Seconds the receiver asked to wait (Retry-After), if it said."""
    status: int | None = None
    """The receiver's status code (HTTP or SMTP), if it answered."""
    disable_channel: bool = False
    """The receiver wants no more messages through this channel (HTTP 410, an archived
    Slack channel): the worker stops using the channel until the next reload."""
    response: str = ""
    """The start of the receiver's answer (at most 300 characters, one line, secrets
    removed), for an action's ACTION_EXECUTED event; empty if it said nothing."""


class Dispatcher(Protocol):
    """The channels: send one attempt of one stored notification."""

    async def send(self, notification: Notification) -> DeliveryOutcome: ...

    async def close(self) -> None: ...


class RetrySchedule(Protocol):
    def delay(self, attempt: int, retry_after: float | None, age: timedelta) -> timedelta | None:
        """How long to wait after failed attempt `attempt` (from 1), `age` after the
        delivery became due; None means give up."""


class UnitOfWork(abc.ABC):
    incidents: IncidentRepository
    alerts: AlertLog
    events: EventLog
    requests: RequestLog
    paging: PagingRepository

    def __init__(self) -> None:
        self.committed_events: list[IncidentEvent] = []

    def __enter__(self) -> UnitOfWork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.rollback()

    @abc.abstractmethod
    def commit(self) -> None:
        """Ask for the work to be kept; afterwards `committed_events` holds its events."""

    @abc.abstractmethod
    def rollback(self) -> None:
        """Discard uncommitted work; does nothing after a commit."""


class Storage(abc.ABC):
    """Runs units of work and tells listeners about committed events."""

    def __init__(self) -> None:
        self._listeners: list[EventListener] = []

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    @property
    def available(self) -> bool:
        """False while the database cannot be reached; the server reports NOT_SERVING meanwhile."""
        return True

    def _publish(self, events: list[IncidentEvent]) -> None:
        for listener in self._listeners:
            listener(events)

    @abc.abstractmethod
    async def write(self, work: Callable[[UnitOfWork], T]) -> T:
        """Run `work` as a read-write unit of work; returns after it committed or failed."""

    @abc.abstractmethod
    async def read(self, work: Callable[[UnitOfWork], T]) -> T:
        """Run `work` against the latest committed state, without writing."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish running work and release the database."""
