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
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import TypeVar

from incident_manager.domain.model import (
    Incident,
    IncidentEvent,
    IncidentState,
    Note,
    ReceivedAlert,
    RequestRecord,
    Severity,
)
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


class UnitOfWork(abc.ABC):
    incidents: IncidentRepository
    alerts: AlertLog
    events: EventLog
    requests: RequestLog

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
