"""Which incidents and events a reader wants, and in what order."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from incident_manager.domain.model import (
    Incident,
    IncidentEvent,
    IncidentState,
    IncidentType,
    Severity,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
TIMELINE_LIMIT = 1000
"""How many of its most recent timeline events an incident carries when read in full."""
NOTES_LIMIT = 100
"""How many of its most recent notes an incident carries when read in full."""
MAX_FULL_PAGE_SIZE = 10
"""Page size cap when incidents come with timelines and notes (keeps a page under 4 MiB)."""


@dataclass(frozen=True)
class IncidentFilter:
    """Kinds of filter are ANDed; the values of one kind are ORed; empty matches all."""

    states: frozenset[IncidentState] = frozenset()
    severities: frozenset[Severity] = frozenset()
    types: frozenset[IncidentType] = frozenset()
    sources: frozenset[str] = frozenset()
    assignee: str = ""
    incident_id: str = ""

    def matches_incident(self, incident: Incident) -> bool:
        return self._matches(
            incident.id,
            incident.state,
            incident.severity,
            incident.type,
            incident.source,
            tuple(incident.assignees),
        )

    def matches_event(self, event: IncidentEvent) -> bool:
        return self._matches(
            event.incident_id,
            event.state,
            event.severity,
            event.type,
            event.source,
            event.assignees,
        )

    def _matches(
        self,
        incident_id: str,
        state: IncidentState,
        severity: Severity,
        type: IncidentType,
        source: str,
        assignees: tuple[str, ...],
    ) -> bool:
        return (
            (not self.incident_id or incident_id == self.incident_id)
            and (not self.states or state in self.states)
            and (not self.severities or severity in self.severities)
            and (not self.types or type in self.types)
            and (not self.sources or source in self.sources)
            and (not self.assignee or self.assignee in assignees)
        )


class SortKey(enum.Enum):
    CREATE_TIME = "create_time"
    UPDATE_TIME = "update_time"
    SEVERITY = "severity"


@dataclass(frozen=True)
class Ordering:
    """Incidents sort by `key`, then by create time, then by id, all in one direction.

    The id makes the order total, so keyset pagination never skips or repeats.
    """

    key: SortKey = SortKey.CREATE_TIME
    descending: bool = True

    def key_of(self, incident: Incident) -> tuple[int | str, ...]:
        """The sort key of an incident: what a page cursor remembers."""
        if self.key is SortKey.CREATE_TIME:
            return (micros(incident.create_time), incident.id)
        if self.key is SortKey.UPDATE_TIME:
            return (micros(incident.update_time), incident.id)
        return (int(incident.severity), micros(incident.create_time), incident.id)


Cursor = tuple[int | str, ...]


@dataclass(frozen=True)
class IncidentQuery:
    filter: IncidentFilter = field(default_factory=IncidentFilter)
    ordering: Ordering = field(default_factory=Ordering)
    page_size: int = DEFAULT_PAGE_SIZE
    after: Cursor | None = None
    """Return incidents strictly after this sort key; None starts at the beginning."""
    with_history: bool = False


@dataclass(frozen=True)
class IncidentPage:
    incidents: list[Incident]
    total_size: int
    has_more: bool


def micros(moment: datetime) -> int:
    """Microseconds since the epoch: how times are stored and compared."""
    # The divisor is a constant: building timedelta(microseconds=1) on each call cost
    # three times the division, and every stored time of every row passes here.
    return (moment - EPOCH) // MICROSECOND


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
