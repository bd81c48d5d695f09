"""The incident manager's application service: one async method per use case.

It runs the handlers as units of work on the storage and follows committed
events for StreamIncidents. Transport code (gRPC) calls this and nothing
below it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from typing import Protocol, TypeVar

from incident_manager.domain.autoresolve import AutoResolvePolicies
from incident_manager.domain.dedup import DEFAULT_WINDOW
from incident_manager.domain.errors import (
    RateLimited,
    SequenceOutOfRange,
    ShuttingDown,
    SourceNotAllowed,
    ValidationError,
)
from incident_manager.domain.integrations import ModuleEvent, to_alert
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    AlertAck,
    Clock,
    Incident,
    IncidentEvent,
    IncidentState,
    Note,
    Severity,
)
from incident_manager.domain.model import utc_now as _utc_now
from incident_manager.domain.query import (
    MAX_FULL_PAGE_SIZE,
    IncidentFilter,
    IncidentQuery,
    Ordering,
)
from incident_manager.domain.ratelimit import AlertRateLimiter, OverloadShedder, RateLimit
from incident_manager.service import handlers
from incident_manager.service.commands import (
    AddNote,
    CreateIncident,
    ResolveIncident,
    UpdateIncident,
)
from incident_manager.service.pagination import (
    decode_page_token,
    encode_page_token,
    page_size_or_default,
)
from incident_manager.service.ports import Storage, UnitOfWork
from incident_manager.service.streaming import EventHub

MAX_BATCH = 1000
"""Alerts in one BatchSubmitAlerts call at most."""
REPLAY_PAGE = 500
"""Stored events read per query while a subscriber catches up."""


T = TypeVar("T")


class Observer(Protocol):
    """What the manager reports as it works, for metrics; transport-neutral."""

    def alerts_acked(self, alerts: Sequence[Alert | AlertAck], acks: Sequence[AlertAck]) -> None:
        """Each alert (or an ack made while decoding it) with the ack it got, in order."""

    def storage_written(self, seconds: float) -> None:
        """A unit of work was committed (or failed) after `seconds`, queueing included."""


class _NoObserver:
    def alerts_acked(self, alerts: Sequence[Alert | AlertAck], acks: Sequence[AlertAck]) -> None:
        pass

    def storage_written(self, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class Submitter:
    """The authenticated caller sending alerts, when the server authenticates callers."""

    name: str
    """Named as the actor of the events its alerts cause."""
    sources: frozenset[str] | None = None
    """The alert sources it may send as; None allows any."""


@dataclass(frozen=True)
class ListRequest:
    filter: IncidentFilter
    ordering: Ordering
    page_size: int = 0
    page_token: str = ""
    with_history: bool = False


@dataclass(frozen=True)
class ListResult:
    incidents: list[Incident]
    next_page_token: str
    total_size: int


class IncidentManager:
    def __init__(
        self,
        storage: Storage,
        *,
        dedup_window: timedelta = DEFAULT_WINDOW,
        clock: Clock = _utc_now,
        hub: EventHub | None = None,
        rate_limit: RateLimit | None = None,
        global_rate_limit: RateLimit | None = None,
        max_pending_alerts: int = 0,
        auto_resolve: AutoResolvePolicies | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.storage = storage
        self.dedup_window = dedup_window
        self.clock = clock
        self.rate_limiter = AlertRateLimiter(rate_limit, clock, global_rate_limit)
        self.observer: Observer = observer or _NoObserver()
        self.shedder = OverloadShedder(max_pending_alerts) if max_pending_alerts > 0 else None
        self.catch_ups = 0
        """How often a StreamIncidents subscriber fell behind and caught up from storage."""
        self.pending_alerts = 0
        """Alerts handed to storage and not yet stored (or refused)."""
        self.auto_resolve = auto_resolve or AutoResolvePolicies()
        self.hub = hub or EventHub()
        self.started = time.monotonic()
        storage.add_listener(self.hub.publish)

    async def submit_alert(self, alert: Alert, submitter: Submitter | None = None) -> AlertAck:
        """Store an alert; RateLimited if it is new and over a rate limit, or shed.

        With a `submitter` (the authenticated caller), SourceNotAllowed if it
        may not send as the alert's source; it is named in the events caused.
        """
        if submitter is not None:
            alert = _as_submitted_by(alert, submitter)
        try:
            shed = self._overloaded(alert)
            if shed is not None:
                raise shed
            self.pending_alerts += 1
            try:
                ack = await self._write(
                    partial(
                        handlers.submit_alert,
                        alert=alert,
                        window=self.dedup_window,
                        now=self.clock(),
                        limiter=self.rate_limiter,
                        policies=self.auto_resolve,
                    )
                )
            finally:
                self.pending_alerts -= 1
        except RateLimited as limited:
            self.observer.alerts_acked(
                [alert], [AlertAck(alert.id, AckStatus.RATE_LIMITED, message=limited.message)]
            )
            raise
        self.observer.alerts_acked([alert], [ack])
        return ack

    async def submit_alerts(
        self, alerts: Sequence[Alert | AlertAck], submitter: Submitter | None = None
    ) -> list[AlertAck]:
        """Store a batch in one transaction: one ack per entry, in order.

        Entries that are already acks (refused while decoding) pass through;
        new alerts over their source's rate limit get RATE_LIMITED acks.
        """
        if not alerts:
            raise ValidationError.single("alerts", "must hold at least one alert")
        if len(alerts) > MAX_BATCH:
            raise ValidationError.single(
                "alerts", f"must hold at most {MAX_BATCH} alerts (got {len(alerts)}); split it"
            )
        admitted = [self._admit(item, submitter) for item in alerts]
        count = len(admitted)
        self.pending_alerts += count
        try:
            acks = await self._write(
                partial(
                    handlers.submit_alerts,
                    alerts=admitted,
                    window=self.dedup_window,
                    now=self.clock(),
                    limiter=self.rate_limiter,
                    policies=self.auto_resolve,
                )
            )
        finally:
            self.pending_alerts -= count
        self.observer.alerts_acked(alerts, acks)
        return acks

    def _overloaded(self, alert: Alert) -> RateLimited | None:
        """Why the alert is shed, if too many alerts wait to be stored."""
        if self.shedder is None:
            return None
        throttled = self.shedder.admit(alert.severity, self.pending_alerts)
        if throttled is None:
            return None
        return RateLimited(alert.source, throttled.retry_after, throttled.scope)

    def _admit(self, item: Alert | AlertAck, submitter: Submitter | None) -> Alert | AlertAck:
        """A batch entry as it goes to storage, or the ack refusing it before storage."""
        if isinstance(item, AlertAck):
            return item
        if submitter is not None:
            try:
                item = _as_submitted_by(item, submitter)
            except SourceNotAllowed as refused:
                return AlertAck(item.id, AckStatus.REJECTED, message=refused.message)
        shed = self._overloaded(item)
        if shed is not None:
            return AlertAck(item.id, AckStatus.RATE_LIMITED, message=shed.message)
        return item

    async def submit_module_event(
        self, event: ModuleEvent, submitter: Submitter | None = None
    ) -> AlertAck:
        """Store a monitoring module's event as the alert its mapping rules make of it."""
        return await self.submit_alert(to_alert(event), submitter)

    async def submit_module_events(
        self, events: Sequence[ModuleEvent | AlertAck], submitter: Submitter | None = None
    ) -> list[AlertAck]:
        """Like submit_alerts, for module events; acks (refused while decoding) pass through."""
        return await self.submit_alerts(
            [item if isinstance(item, AlertAck) else to_alert(item) for item in events],
            submitter,
        )

    async def create_incident(self, command: CreateIncident) -> Incident:
        return await self._write(
            partial(handlers.create_incident, command=command, now=self.clock())
        )

    async def get_incident(self, incident_id: str) -> Incident:
        return await self.storage.read(partial(handlers.get_incident, incident_id=incident_id))

    async def update_incident(self, command: UpdateIncident) -> Incident:
        return await self._write(
            partial(handlers.update_incident, command=command, now=self.clock())
        )

    async def resolve_incident(self, command: ResolveIncident) -> Incident:
        return await self._write(
            partial(handlers.resolve_incident, command=command, now=self.clock())
        )

    async def add_note(self, command: AddNote) -> tuple[Note, Incident]:
        return await self._write(partial(handlers.add_note, command=command, now=self.clock()))

    async def list_incidents(self, request: ListRequest) -> ListResult:
        page_size = page_size_or_default(request.page_size)
        if request.with_history:
            page_size = min(page_size, MAX_FULL_PAGE_SIZE)
        after = (
            decode_page_token(request.page_token, request.filter, request.ordering)
            if request.page_token
            else None
        )
        query = IncidentQuery(
            filter=request.filter,
            ordering=request.ordering,
            page_size=page_size,
            after=after,
            with_history=request.with_history,
        )
        page = await self.storage.read(partial(handlers.list_incidents, query=query))
        next_token = ""
        if page.has_more and page.incidents:
            cursor = request.ordering.key_of(page.incidents[-1])
            next_token = encode_page_token(cursor, request.filter, request.ordering)
        return ListResult(page.incidents, next_token, page.total_size)

    async def count_open_incidents(self) -> dict[tuple[Severity, IncidentState], int]:
        """Open incidents by severity and state, in one read (pairs with none are left out)."""
        return await self.storage.read(_count_active)

    async def follow_events(
        self, event_filter: IncidentFilter, after_sequence: int | None
    ) -> AsyncIterator[IncidentEvent]:
        """Matching events: first the stored ones after `after_sequence` (if given), then live.

        The subscription starts before storage is read, so an event committed
        during the replay is either in what storage returns or in the live
        buffer; events already replayed are skipped by sequence. No gap, no
        repeat.

        A subscriber that falls more than its buffer behind is not ended: the
        events it missed are all in storage, so it catches up from there, a
        page at a time, and then follows live events again. Its buffer stays
        bounded whatever it does, so a stalled reader costs the server no
        more memory than a slow one.
        """
        if after_sequence is not None and not 0 <= after_sequence < 2**63:
            raise ValidationError.single("after_sequence", "must be between 0 and 2^63-1")
        if event_filter.incident_id:
            await self.get_incident(event_filter.incident_id)  # NOT_FOUND if it does not exist
        subscription = self.hub.subscribe(event_filter)
        try:
            # Without after_sequence the stream starts at the last committed
            # event; read after subscribing, so nothing later is missed.
            cursor = await self.storage.read(_last_sequence)
            replaying = after_sequence is not None
            if after_sequence is not None:
                if after_sequence > cursor:
                    raise SequenceOutOfRange(after_sequence, cursor)
                cursor = after_sequence
            while True:
                if replaying:
                    page = await self.storage.read(
                        partial(_events_after, sequence=cursor, limit=REPLAY_PAGE)
                    )
                    if subscription.closed:
                        raise ShuttingDown(cursor)
                    for event in page:
                        cursor = event.sequence
                        if event_filter.matches_event(event):
                            yield event
                    if len(page) < REPLAY_PAGE:
                        if subscription.overflowed:
                            # Live events overflowed meanwhile: they are all in
                            # storage, so keep reading from there.
                            subscription.forget_overflow()
                        else:
                            replaying = False
                    continue
                live = await subscription.next()
                if live is None:
                    if subscription.closed:
                        raise ShuttingDown(cursor)
                    # It fell more than its buffer behind: catch up from storage.
                    subscription.forget_overflow()
                    self.catch_ups += 1
                    replaying = True
                    continue
                if live.sequence <= cursor:
                    continue
                cursor = live.sequence
                yield live
        finally:
            self.hub.unsubscribe(subscription)

    async def _write(self, work: Callable[[UnitOfWork], T]) -> T:
        started = time.perf_counter()
        try:
            return await self.storage.write(work)
        finally:
            self.observer.storage_written(time.perf_counter() - started)

    def close_streams(self) -> None:
        self.hub.close()

    def uptime(self) -> float:
        return time.monotonic() - self.started


def _as_submitted_by(alert: Alert, submitter: Submitter) -> Alert:
    """The alert as its authenticated submitter sends it; SourceNotAllowed if it may not."""
    if submitter.sources is not None and alert.source not in submitter.sources:
        raise SourceNotAllowed(alert.source, submitter.name, submitter.sources)
    return replace(alert, submitted_by=submitter.name)


def _events_after(uow: UnitOfWork, sequence: int, limit: int) -> list[IncidentEvent]:
    return uow.events.after(sequence, limit)


def _last_sequence(uow: UnitOfWork) -> int:
    return uow.events.last_sequence()


def _count_active(uow: UnitOfWork) -> dict[tuple[Severity, IncidentState], int]:
    return uow.incidents.count_active()
