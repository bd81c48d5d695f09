"""A batch of alerts in one unit of work, with per-alert work cut to what the guarantees need.

Each alert still gets its own retry check, rate limit, dedup decision, stored
row and ack, in order. Everything else happens once per incident per batch:
its row is written once (new incidents with one INSERT, merged ones with
one UPDATE each, both as one statement per table), its duplicates are
recorded as one ALERT_MERGED event that lists them all, and paging follows
it once, with what it was before the batch and what it is after. Alert rows
are written together at the end.

A resolve signal needs the stored state (which alerts are open), so the
batch stores what it holds before handling one, then goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from incident_manager.domain.dedup import Fingerprint, alert_fingerprint
from incident_manager.domain.errors import RateLimited
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    AlertAck,
    Incident,
    ReceivedAlert,
)
from incident_manager.domain.paging.model import PagingConfig
from incident_manager.domain.ratelimit import AlertRateLimiter
from incident_manager.service.paging import Before, follow_incident
from incident_manager.service.ports import UnitOfWork


@dataclass
class Batch:
    """What a batch has done and not yet stored; `ingest` each alert, then `store`."""

    uow: UnitOfWork
    window: timedelta
    now: datetime
    limiter: AlertRateLimiter | None
    paging: PagingConfig | None
    touched: dict[str, Incident] = field(default_factory=dict)
    """Every incident the batch changed, by id (also those already stored)."""
    _active: dict[str, Incident] = field(default_factory=dict)
    """By fingerprint: the incident this batch's duplicates of it merge into."""
    _before: dict[str, Before | None] = field(default_factory=dict)
    """By id: each unstored incident as it was before the batch (None: opened by it)."""
    _merged: dict[str, list[tuple[Alert, str]]] = field(default_factory=dict)
    """By id: the duplicates not yet counted, each with what it matched on."""
    _received: dict[tuple[str, str], ReceivedAlert] = field(default_factory=dict)
    """Alerts received and not yet stored, by (source, id): a retry within the batch."""
    _fingerprints: dict[tuple[object, ...], Fingerprint] = field(default_factory=dict)
    """What the batch's alerts' fingerprints are made of, and the fingerprints."""

    def ingest(self, alert: Alert) -> AlertAck:
        """Merge the alert or open an incident for it; RateLimited if it is new and over."""
        key = (alert.source, alert.id)
        earlier = self._received.get(key) or self.uow.alerts.get(alert.source, alert.id)
        if earlier is not None:
            return AlertAck(
                alert_id=alert.id,
                status=earlier.status,
                incident_id=earlier.incident_id,
                message=(
                    f"already received at {earlier.receive_time.isoformat()}; "
                    "counted once (this was a retry)"
                ),
                retry=True,
            )
        if self.limiter is not None:
            # After the retry check: a retry is answered as before, never limited.
            throttled = self.limiter.admit(alert.source, alert.severity)
            if throttled is not None:
                raise RateLimited(alert.source, throttled.retry_after, throttled.scope)
        fingerprint = self._fingerprint(alert)
        incident = self._mergeable(fingerprint.value)
        if incident is not None:
            merged = self._merged.setdefault(incident.id, [])
            merged.append((alert, fingerprint.matched_on))
            status = AckStatus.DUPLICATE
            message = (
                f"merged into incident {incident.id} (matched on {fingerprint.matched_on}); "
                f"{incident.alert_count + len(merged)} alerts so far"
            )
        else:
            incident = Incident.open_for_alert(alert, fingerprint.value, self.now)
            self._active[fingerprint.value] = incident
            self._before[incident.id] = None
            self.touched[incident.id] = incident
            status = AckStatus.ACCEPTED
            message = f"opened incident {incident.id}"
        self._received[key] = ReceivedAlert(
            alert=alert,
            incident_id=incident.id,
            status=status,
            fingerprint=fingerprint.value,
            receive_time=self.now,
        )
        return AlertAck(alert_id=alert.id, status=status, incident_id=incident.id, message=message)

    def _fingerprint(self, alert: Alert) -> Fingerprint:
        """The alert's fingerprint, worked out once per batch for alerts that share it."""
        key: tuple[object, ...] = (
            (alert.dedup_key,)
            if alert.dedup_key is not None
            else (alert.source, alert.type, alert.title, tuple(alert.affected_resources))
        )
        fingerprint = self._fingerprints.get(key)
        if fingerprint is None:
            fingerprint = self._fingerprints[key] = alert_fingerprint(alert)
        return fingerprint

    def _mergeable(self, fingerprint: str) -> Incident | None:
        """The incident a duplicate with this fingerprint merges into, if any.

        Within a batch that is the incident its first alert with the
        fingerprint found or opened: what storage would answer, since the
        batch's own merges and openings are the latest alerts of all.
        """
        incident = self._active.get(fingerprint)
        if incident is None or not incident.state.is_active:
            found = self.uow.incidents.find_mergeable(fingerprint, self.now - self.window)
            if found is None:
                return None
            incident = self.touched.setdefault(found.id, found)
            self._active[fingerprint] = incident
        if incident.id not in self._before:
            # First change since the batch began, or since it last stored.
            self._before[incident.id] = Before.of(incident)
        return incident

    def store(self) -> None:
        """Count the merges, follow each changed incident's paging, write every row."""
        opened: list[Incident] = []
        changed: list[Incident] = []
        for incident_id, before in self._before.items():
            incident = self.touched[incident_id]
            incident.merge_alerts(self._merged.get(incident_id, ()), self.now)
            follow_incident(self.uow.paging, self.paging, incident, before, self.now)
            if before is None:
                opened.append(incident)
            elif incident.pending_events:
                changed.append(incident)
        self.uow.incidents.add_all(opened)
        self.uow.incidents.save_all(changed)
        self.uow.alerts.add_all(list(self._received.values()))
        self._before.clear()
        self._merged.clear()
        self._received.clear()

    def forget_inactive(self) -> None:
        """Drop incidents that are no longer active (a resolve signal closed them)."""
        for fingerprint, incident in list(self._active.items()):
            if not incident.state.is_active:
                del self._active[fingerprint]
