"""What the single SQLite writer knows without asking the database.

Only one thread ever writes the database, so it can keep, coherently:
- for each fingerprint, the active incident whose last alert is the latest,
  with that alert's time (the dedup index, moved forward by every merge),
  complete as long as it stays under its size limit, so deciding "duplicate
  or new" is a dictionary lookup;
- recently written incidents, so merging a duplicate does not read its row;
- a Bloom filter of every stored (source, alert id), so the retry check of a
  new alert (the common case) is answered without a lookup; a "maybe" still
  asks the database, so false positives only cost a read.

A job that fails rolls its changes back with its savepoint, and the cache
undoes its own with a per-job journal. A failed group clears the cache.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field

from rbloom import Bloom

from incident_manager.domain.model import Incident

MAX_INCIDENTS = 10_000
MAX_FINGERPRINTS = 100_000
ALERT_KEY_CAPACITY = 10_000_000
"""Alert keys the Bloom filter is sized for at 1% false positives (about 12 MB)."""


def _stored_copy(incident: Incident) -> Incident:
    clone = copy.copy(incident)
    clone.affected_resources = list(incident.affected_resources)
    clone.labels = dict(incident.labels)
    clone.assignees = list(incident.assignees)
    clone.timeline = []
    clone.notes = []
    clone.pending_events = []
    clone.pending_notes = []
    return clone


_MISSING = object()


@dataclass
class _Journal:
    incidents: set[str] = field(default_factory=set)
    fingerprints: dict[str, object] = field(default_factory=dict)


class WriterCache:
    def __init__(
        self,
        *,
        max_incidents: int = MAX_INCIDENTS,
        max_fingerprints: int = MAX_FINGERPRINTS,
        alert_key_capacity: int = ALERT_KEY_CAPACITY,
    ) -> None:
        self.max_incidents = max_incidents
        self.max_fingerprints = max_fingerprints
        self._incidents: OrderedDict[str, Incident] = OrderedDict()
        self._newest: dict[str, tuple[int, str]] = {}
        self.fingerprints_complete = False
        self.warm = False
        self._alert_keys = Bloom(alert_key_capacity, 0.01)
        self._journal: _Journal | None = None

    # -- jobs ------------------------------------------------------------

    def begin_job(self) -> None:
        self._journal = _Journal()

    def end_job(self, *, succeeded: bool) -> None:
        journal, self._journal = self._journal, None
        if succeeded or journal is None:
            return
        for incident_id in journal.incidents:
            self._incidents.pop(incident_id, None)
        for fingerprint, previous in journal.fingerprints.items():
            if previous is _MISSING:
                self._newest.pop(fingerprint, None)
            else:
                self._newest[fingerprint] = previous  # type: ignore[assignment]

    def clear(self) -> None:
        """Forget everything but the alert keys (which only ever grow); warm again later."""
        self._incidents.clear()
        self._newest.clear()
        self.fingerprints_complete = False
        self.warm = False

    # -- incidents -------------------------------------------------------

    def incident(self, incident_id: str) -> Incident | None:
        stored = self._incidents.get(incident_id)
        if stored is None:
            return None
        self._incidents.move_to_end(incident_id)
        return _stored_copy(stored)

    def peek(self, incident_id: str) -> Incident | None:
        """The stored state as last written, not copied: read it, never change it."""
        return self._incidents.get(incident_id)

    def remember(self, incident: Incident) -> None:
        if self._journal is not None:
            self._journal.incidents.add(incident.id)
        self._incidents[incident.id] = _stored_copy(incident)
        self._incidents.move_to_end(incident.id)
        if len(self._incidents) > self.max_incidents:
            self._incidents.popitem(last=False)

    # -- the dedup index -------------------------------------------------

    def newest_active(self, fingerprint: str) -> tuple[int, str] | None:
        """(last alert time in microseconds, id) of the fingerprint's active incident
        with the latest last alert, or None if it has no active incident."""
        return self._newest.get(fingerprint)

    def set_newest(self, fingerprint: str, entry: tuple[int, str] | None) -> None:
        if self._journal is not None and fingerprint not in self._journal.fingerprints:
            self._journal.fingerprints[fingerprint] = self._newest.get(fingerprint, _MISSING)
        if entry is None:
            self._newest.pop(fingerprint, None)
        else:
            self._newest[fingerprint] = entry
        if len(self._newest) > self.max_fingerprints:
            # Too many open incidents to index them all: from now on a miss
            # asks the database. Correct, only slower.
            self._newest.clear()
            self.fingerprints_complete = False

    def load_fingerprints(self, entries: list[tuple[str, int, str]]) -> None:
        """Index (fingerprint, last alert time, id) of every active incident."""
        self._newest.clear()
        if len(entries) > self.max_fingerprints:
            self.fingerprints_complete = False
            return
        for fingerprint, last_alert_time, incident_id in entries:
            current = self._newest.get(fingerprint)
            if current is None or (last_alert_time, incident_id) > current:
                self._newest[fingerprint] = (last_alert_time, incident_id)
        self.fingerprints_complete = True

    @property
    def fingerprint_count(self) -> int:
        return len(self._newest)

    # -- alert keys ------------------------------------------------------

    def maybe_seen(self, source: str, alert_id: str) -> bool:
        return (source, alert_id) in self._alert_keys

    def saw(self, source: str, alert_id: str) -> None:
        self._alert_keys.add((source, alert_id))
