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

from incident_manager.domain.access import Principal
from incident_manager.domain.autoresolve import AutoResolvePolicies
from incident_manager.domain.dedup import DEFAULT_WINDOW
from incident_manager.domain.errors import (
    RateLimited,
    SequenceOutOfRange,
    ShuttingDown,
    SourceNotAllowed,
    ValidationError,
)
from incident_manager.domain.integrations import ModuleEvent
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
from incident_manager.domain.validation import Checker
from incident_manager.service import handlers
from incident_manager.service.commands import (
    AddNote,
    CreateIncident,
    ResolveIncident,
    UpdateIncident,
)
from incident_manager.service.pager import Pager, RulesHolder
from incident_manager.service.pagination import (
    decode_page_token,
    encode_page_token,
    page_size_or_default,
)
from incident_manager.service.ports import Storage, UnitOfWork
from incident_manager.service.streaming import EventHub, Subscription

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
        paging: RulesHolder | None = None,
        wake_paging: Callable[[], None] = lambda: None,
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
        self.paging = paging or RulesHolder()
        """The paging configuration in force (None: nobody is paged); read per request,
        so a reload applies to the next one."""
        self.pager = Pager(storage, self.paging, clock, wake_paging)
        """The PagingService use cases."""
        self.started = time.monotonic()
        storage.add_listener(self.hub.publish)

    async def submit_alert(self, alert: Alert, sender: Principal | None = None) -> AlertAck:
        """Store an alert; RateLimited if it is new and over a rate limit, or shed.

        With a `sender` (the authenticated caller), SourceNotAllowed if it
        may not send as the alert's source; it is named in the events caused.
        """
        if sender is not None:
            alert = _as_sent_by(alert, sender)
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
                        paging=self.paging(),
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
        self,
        alerts: Sequence[Alert | AlertAck],
        sender: Principal | None = None,
        *,
        field_prefix: str = "alerts[{}].",
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
        admitted = [self._admit(item, sender) for item in alerts]
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
                    paging=self.paging(),
                    field_prefix=field_prefix,
                )
            )
        finally:
            self.pending_alerts -= count
        self.observer.alerts_acked(alerts, acks)
        return acks

    async def submit_streamed_alerts(
        self, alerts: Sequence[Alert | AlertAck], sender: Principal | None = None
    ) -> list[AlertAck]:
        """Alerts read from one StreamAlerts call, stored together: one ack each, in order.

        Each gets the answer `submit_alert` would give it, its refusal as an
        ack instead of an error: REJECTED (naming `alert.` fields) or
        RATE_LIMITED. Storing them as one batch costs the writer one job, not
        one per alert. They are validated once, in the batch, with `alert.` field names.
        """
        return await self.submit_alerts(alerts, sender, field_prefix="alert.")

    def _overloaded(self, alert: Alert) -> RateLimited | None:
        """Why the alert is shed, if too many alerts wait to be stored."""
        if self.shedder is None:
            return None
        throttled = self.shedder.admit(alert.severity, self.pending_alerts)
        if throttled is None:
            return None
        return RateLimited(alert.source, throttled.retry_after, throttled.scope)

    def _admit(self, item: Alert | AlertAck, sender: Principal | None) -> Alert | AlertAck:
        """A batch entry as it goes to storage, or the ack refusing it before storage."""
        if isinstance(item, AlertAck):
            return item
        if sender is not None:
            try:
                item = _as_sent_by(item, sender)
            except SourceNotAllowed as refused:
                return AlertAck(item.id, AckStatus.REJECTED, message=refused.message)
        shed = self._overloaded(item)
        if shed is not None:
            return AlertAck(item.id, AckStatus.RATE_LIMITED, message=shed.message)
        return item

    async def submit_module_event(
        self, event: ModuleEvent, sender: Principal | None = None
    ) -> AlertAck:
        """Store a monitoring module's event as the alert its mapping rules make of it.

        ValidationError, naming every bad field, if the event breaks a rule.
        """
        checker = Checker("event.")
        event.validate(checker)
        checker.raise_if_any()
        return await self.submit_alert(event.to_alert(), sender)

    async def submit_module_events(
        self, events: Sequence[ModuleEvent | AlertAck], sender: Principal | None = None
    ) -> list[AlertAck]:
        """Like submit_alerts, for module events; an invalid event gets a REJECTED ack.

        Acks (events refused while decoding) pass through.
        """
        return await self.submit_alerts(
            [_alert_of(item, f"events[{index}].") for index, item in enumerate(events)],
            sender,
        )

    async def create_incident(self, command: CreateIncident) -> Incident:
        return await self._write(
            partial(
                handlers.create_incident, command=command, now=self.clock(), paging=self.paging()
            )
        )

    async def get_incident(self, incident_id: str) -> Incident:
        return await self.storage.read(partial(handlers.get_incident, incident_id=incident_id))

    async def update_incident(self, command: UpdateIncident) -> Incident:
        return await self._write(
            partial(
                handlers.update_incident, command=command, now=self.clock(), paging=self.paging()
            )
        )

    async def resolve_incident(self, command: ResolveIncident) -> Incident:
        return await self._write(
            partial(
                handlers.resolve_incident, command=command, now=self.clock(), paging=self.paging()
            )
        )

    async def add_note(self, command: AddNote) -> tuple[Note, Incident]:
        return await self._write(
            partial(handlers.add_note, command=command, now=self.clock(), paging=self.paging())
        )

    async def acknowledge_incident(self, incident_id: str, actor: str) -> Incident:
        return await self._write(
            partial(
                handlers.acknowledge_incident,
                incident_id=incident_id,
                actor=actor,
                now=self.clock(),
                paging=self.paging(),
            )
        )

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

        So a stream goes: replay (only with `after_sequence`), then live;
        from live, each fall behind means a catch-up from storage and back to
        live. Closing the hub ends it with ShuttingDown in either step.
        """
        if after_sequence is not None and not 0 <= after_sequence < 2**63:
            raise ValidationError.single("after_sequence", "must be between 0 and 2^63-1")
        if event_filter.incident_id:
            await self.get_incident(event_filter.incident_id)  # NOT_FOUND if it does not exist
        subscription = self.hub.subscribe(event_filter)
        try:
            stream = _EventStream(
                self.storage, subscription, await self._starting_point(after_sequence)
            )
            if after_sequence is not None:
                async for event in stream.from_storage():
                    yield event
            while True:
                async for event in stream.live():
                    yield event
                # live() ended: the subscriber fell more than its buffer behind.
                self.catch_ups += 1
                async for event in stream.from_storage():
                    yield event
        finally:
            self.hub.unsubscribe(subscription)

    async def _starting_point(self, after_sequence: int | None) -> int:
        """The sequence a stream starts after: `after_sequence`, else the last committed event.

        Read after subscribing, so nothing committed later is missed.
        """
        last = await self.storage.read(_last_sequence)
        if after_sequence is None:
            return last
        if after_sequence > last:
            raise SequenceOutOfRange(after_sequence, last)
        return after_sequence

    async def _write(self, work: Callable[[UnitOfWork], T]) -> T:
        started = time.perf_counter()
        try:
            return await self.storage.write(work)
        finally:
            self.observer.storage_written(time.perf_counter() - started)

    @property
    def storage_available(self) -> bool:
        """Whether the database can be used now; health reports NOT_SERVING while it cannot."""
        return self.storage.available

    def close_streams(self) -> None:
        """End every StreamIncidents stream, each with the point to resume from."""
        self.hub.close()

    async def close(self) -> None:
        """End the streams, let running work finish and release the database."""
        self.hub.close()
        await self.storage.close()

    def uptime(self) -> float:
        return time.monotonic() - self.started


def _as_sent_by(alert: Alert, sender: Principal) -> Alert:
    """The alert as its authenticated sender sends it; SourceNotAllowed if it may not."""
    if not sender.may_send_as(alert.source):
        raise SourceNotAllowed(alert.source, sender.name, sender.sources or frozenset())
    return replace(alert, submitted_by=sender.name)


class _EventStream:
    """Where one StreamIncidents subscriber is, and its two ways forward.

    `cursor` is the sequence of the last event it was given (or skipped as
    not matching); both steps move it on, so switching between them neither
    repeats nor skips an event. The steps hold nothing to release, so a step
    abandoned when the client goes away needs no closing; the subscription is
    follow_events' to end.
    """

    def __init__(self, storage: Storage, subscription: Subscription, cursor: int) -> None:
        self.storage = storage
        self.subscription = subscription
        self.cursor = cursor

    async def from_storage(self) -> AsyncIterator[IncidentEvent]:
        """Matching stored events after the cursor, a page at a time, until it is level.

        Level means storage holds nothing newer and no live event was lost
        meanwhile; if some were (the buffer overflowed again), storage has
        them too, so it reads on.
        """
        while True:
            page = await self.storage.read(
                partial(_events_after, sequence=self.cursor, limit=REPLAY_PAGE)
            )
            if self.subscription.closed:
                raise ShuttingDown(self.cursor)
            for event in page:
                self.cursor = event.sequence
                if self.subscription.filter.matches_event(event):
                    yield event
            if len(page) == REPLAY_PAGE:
                continue
            if not self.subscription.overflowed:
                return
            self.subscription.forget_overflow()

    async def live(self) -> AsyncIterator[IncidentEvent]:
        """Live events after the cursor, until the subscriber falls more than its buffer behind.

        Then the buffer is dropped (storage has every event in it) and this
        returns; ShuttingDown instead if the hub was closed.
        """
        while (event := await self.subscription.next()) is not None:
            if event.sequence > self.cursor:
                self.cursor = event.sequence
                yield event
        if self.subscription.closed:
            raise ShuttingDown(self.cursor)
        self.subscription.forget_overflow()


def _alert_of(item: ModuleEvent | AlertAck, prefix: str) -> Alert | AlertAck:
    """The alert a batch's event stands for, or the ack refusing it."""
    if isinstance(item, AlertAck):
        return item
    checker = Checker(prefix)
    item.validate(checker)
    if checker.violations:
        message = ValidationError(checker.violations).message
        return AlertAck(item.id, AckStatus.REJECTED, message=message)
    return item.to_alert()


def _events_after(uow: UnitOfWork, sequence: int, limit: int) -> list[IncidentEvent]:
    return uow.events.after(sequence, limit)


def _last_sequence(uow: UnitOfWork) -> int:
    return uow.events.last_sequence()


def _count_active(uow: UnitOfWork) -> dict[tuple[Severity, IncidentState], int]:
    return uow.incidents.count_active()
