"""In-memory storage: the fake that unit tests and the contract tests use.

Work runs synchronously on the event loop; changes are staged in the unit of
work and applied only on commit, so a failed unit of work leaves no trace.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from incident_manager.adapters.memory_paging import MemoryPaging, PagingStaged, PagingState
from incident_manager.domain.errors import ConcurrentModification
from incident_manager.domain.model import (
    Incident,
    IncidentEvent,
    IncidentState,
    Note,
    ReceivedAlert,
    RequestRecord,
    Severity,
)
from incident_manager.domain.query import NOTES_LIMIT, TIMELINE_LIMIT, IncidentPage, IncidentQuery
from incident_manager.service.ports import (
    AlertLog,
    EventLog,
    IncidentRepository,
    RequestLog,
    Storage,
    T,
    UnitOfWork,
)


class _State:
    def __init__(self) -> None:
        self.incidents: dict[str, Incident] = {}
        self.events: list[IncidentEvent] = []
        self.notes: dict[str, list[Note]] = {}
        self.alerts: dict[tuple[str, str], ReceivedAlert] = {}
        self.requests: dict[str, RequestRecord] = {}
        self.paging = PagingState()


class _Staged:
    def __init__(self, last_sequence: int) -> None:
        self.incidents: dict[str, Incident] = {}
        self.events: list[IncidentEvent] = []
        self.notes: list[tuple[str, Note]] = []
        self.alerts: dict[tuple[str, str], ReceivedAlert] = {}
        self.requests: dict[str, RequestRecord] = {}
        self.next_sequence = last_sequence + 1


def _stored_copy(incident: Incident) -> Incident:
    clone = copy.deepcopy(incident)
    clone.pending_events = []
    clone.pending_notes = []
    clone.timeline = []
    clone.notes = []
    return clone


class MemoryIncidents(IncidentRepository):
    def __init__(self, state: _State, staged: _Staged) -> None:
        self._state = state
        self._staged = staged

    def _current(self, incident_id: str) -> Incident | None:
        return self._staged.incidents.get(incident_id) or self._state.incidents.get(incident_id)

    def get(self, incident_id: str, *, with_history: bool = False) -> Incident | None:
        stored = self._current(incident_id)
        if stored is None:
            return None
        incident = copy.deepcopy(stored)
        incident.loaded_version = incident.version
        if with_history:
            events = [e.event for e in self._all_events() if e.incident_id == incident_id]
            incident.timeline = events[-TIMELINE_LIMIT:]
            notes = list(self._state.notes.get(incident_id, [])) + [
                n for iid, n in self._staged.notes if iid == incident_id
            ]
            incident.notes = notes[-NOTES_LIMIT:]
        return incident

    def _all_events(self) -> list[IncidentEvent]:
        return self._state.events + self._staged.events

    def find_mergeable(self, fingerprint: str, last_alert_since: datetime) -> Incident | None:
        candidates = [
            i
            for i in self._merged_view()
            if i.fingerprint == fingerprint
            and i.state.is_active
            and i.last_alert_time >= last_alert_since
        ]
        if not candidates:
            return None
        newest = max(candidates, key=lambda i: (i.last_alert_time, i.id))
        return self.get(newest.id)

    def _merged_view(self) -> list[Incident]:
        merged = dict(self._state.incidents)
        merged.update(self._staged.incidents)
        return list(merged.values())

    def add(self, incident: Incident) -> None:
        if self._current(incident.id) is not None:
            raise ValueError(f"incident {incident.id} already exists")
        self._stage(incident)

    def save(self, incident: Incident) -> None:
        current = self._current(incident.id)
        if current is None or current.version != incident.loaded_version:
            raise ConcurrentModification(incident.id)
        self._stage(incident)

    def _stage(self, incident: Incident) -> None:
        for pending in incident.pending_events:
            self._staged.events.append(pending.with_sequence(self._staged.next_sequence))
            self._staged.next_sequence += 1
        self._staged.notes.extend((incident.id, note) for note in incident.pending_notes)
        incident.pending_events = []
        incident.pending_notes = []
        incident.loaded_version = incident.version
        self._staged.incidents[incident.id] = _stored_copy(incident)

    def get_note(self, note_id: str) -> Note | None:
        for notes in self._state.notes.values():
            for note in notes:
                if note.id == note_id:
                    return note
        return next((n for _, n in self._staged.notes if n.id == note_id), None)

    def count_active(self) -> dict[tuple[Severity, IncidentState], int]:
        counts = Counter((i.severity, i.state) for i in self._merged_view() if i.state.is_active)
        return dict(counts)

    def list(self, query: IncidentQuery) -> IncidentPage:
        matching = [i for i in self._merged_view() if query.filter.matches_incident(i)]
        key = query.ordering.key_of
        matching.sort(key=key, reverse=query.ordering.descending)
        if query.after is not None:
            after = query.after
            if query.ordering.descending:
                matching_page = [i for i in matching if key(i) < after]
            else:
                matching_page = [i for i in matching if key(i) > after]
        else:
            matching_page = matching
        page = matching_page[: query.page_size]
        incidents = [self.get(i.id, with_history=query.with_history) for i in page]
        return IncidentPage(
            incidents=[i for i in incidents if i is not None],
            total_size=len(matching),
            has_more=len(matching_page) > query.page_size,
        )


class MemoryRequests(RequestLog):
    def __init__(self, state: _State, staged: _Staged) -> None:
        self._state = state
        self._staged = staged

    def get(self, request_id: str) -> RequestRecord | None:
        return self._staged.requests.get(request_id) or self._state.requests.get(request_id)

    def add(self, request_id: str, record: RequestRecord) -> None:
        self._staged.requests[request_id] = record


class MemoryAlerts(AlertLog):
    def __init__(self, state: _State, staged: _Staged) -> None:
        self._state = state
        self._staged = staged

    def get(self, source: str, alert_id: str) -> ReceivedAlert | None:
        key = (source, alert_id)
        return self._staged.alerts.get(key) or self._state.alerts.get(key)

    def add(self, received: ReceivedAlert) -> None:
        self._staged.alerts[(received.alert.source, received.alert.id)] = received

    def clear(self, source: str, alert_id: str, when: datetime) -> None:
        received = self.get(source, alert_id)
        if received is not None:
            self._staged.alerts[(source, alert_id)] = replace(received, cleared_time=when)

    def _of(self, incident_id: str) -> list[ReceivedAlert]:
        merged = dict(self._state.alerts)
        merged.update(self._staged.alerts)
        return [r for r in merged.values() if r.incident_id == incident_id]

    def open_count(self, incident_id: str) -> int:
        return sum(1 for r in self._of(incident_id) if r.cleared_time is None)

    def latest(self, incident_id: str) -> tuple[str, str] | None:
        alerts = self._of(incident_id)
        if not alerts:
            return None
        newest = max(alerts, key=lambda r: (r.receive_time, r.alert.id))
        return newest.alert.source, newest.alert.id


class MemoryEvents(EventLog):
    def __init__(self, state: _State, staged: _Staged) -> None:
        self._state = state
        self._staged = staged

    def after(self, sequence: int, limit: int) -> list[IncidentEvent]:
        events = self._state.events + self._staged.events
        return [e for e in events if e.sequence > sequence][:limit]

    def last_sequence(self) -> int:
        events = self._state.events + self._staged.events
        return events[-1].sequence if events else 0


class MemoryUnitOfWork(UnitOfWork):
    def __init__(self, state: _State) -> None:
        super().__init__()
        self._state = state
        self._staged = _Staged(state.events[-1].sequence if state.events else 0)
        self._done = False
        self.committed = False
        self.incidents = MemoryIncidents(state, self._staged)
        self.alerts = MemoryAlerts(state, self._staged)
        self.events = MemoryEvents(state, self._staged)
        self.requests = MemoryRequests(state, self._staged)
        self._paging_staged = PagingStaged()
        self.paging = MemoryPaging(state.paging, self._paging_staged)

    def commit(self) -> None:
        """Mark the work as wanted; the storage applies it once the work has returned."""
        self.committed = True

    def apply(self) -> None:
        if self._done:
            raise RuntimeError("this unit of work has already finished")
        self._state.incidents.update(self._staged.incidents)
        self._state.events.extend(self._staged.events)
        for incident_id, note in self._staged.notes:
            self._state.notes.setdefault(incident_id, []).append(note)
        self._state.alerts.update(self._staged.alerts)
        self._state.requests.update(self._staged.requests)
        self._paging_staged.apply(self._state.paging)
        self.committed_events = list(self._staged.events)
        self._done = True

    def rollback(self) -> None:
        return None  # nothing is applied unless the work committed and returned


class MemoryStorage(Storage):
    """Keeps everything in this process; loses everything when it exits."""

    def __init__(self) -> None:
        super().__init__()
        self._state = _State()

    async def write(self, work: Callable[[UnitOfWork], T]) -> T:
        # Like the SQLite writer: the work is kept only if it committed and
        # then returned normally.
        uow = MemoryUnitOfWork(self._state)
        result = work(uow)
        if uow.committed:
            uow.apply()
            if uow.committed_events:
                self._publish(uow.committed_events)
        return result

    async def read(self, work: Callable[[UnitOfWork], T]) -> T:
        return work(MemoryUnitOfWork(self._state))

    async def close(self) -> None:
        return None
