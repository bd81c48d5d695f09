"""The paging worker: wakes for the earliest due step, runs it, and delivers pages.

Nothing here holds a page only in memory. Due steps are rows with a due
time, claimed inside the unit of work that runs them (a replica that dies
mid-step rolls back and releases them). Deliveries are claimed with a lease
and one more attempt in one commit, sent outside any transaction, and their
outcome is stored only if the claim is still ours, so a stale worker whose
lease ran out changes nothing. A page is sent twice only when a process dies
between sending and recording the send; the retry carries the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from incident_manager.domain.errors import StorageUnavailable
from incident_manager.domain.paging.ledger import Notification, NotificationState
from incident_manager.domain.paging.model import PagingConfig
from incident_manager.service import digests, paging
from incident_manager.service.ports import (
    DeliveryOutcome,
    Dispatcher,
    RetrySchedule,
    Storage,
    UnitOfWork,
)

log = logging.getLogger("incident_manager.paging")
T = TypeVar("T")

_OUTCOMES = {NotificationState.SENT: "sent", NotificationState.FAILED: "failed"}
"""The metric's outcome of a recorded attempt, by the state it left the delivery in;
a delivery still PENDING will be retried."""


class PagingObserver(Protocol):
    def delivery_finished(self, channel_type: str, outcome: str) -> None: ...

    def channel_disabled(self, channel_id: str, disabled: bool) -> None:
        """A receiver disabled the channel (True), or a reload enabled it again (False)."""

    def pages_folded(self, channel_id: str, count: int) -> None:
        """`count` pages over a rate-limited channel's quota went into its digest."""


class _NoObserver:
    def delivery_finished(self, channel_type: str, outcome: str) -> None:
        pass

    def channel_disabled(self, channel_id: str, disabled: bool) -> None:
        pass

    def pages_folded(self, channel_id: str, count: int) -> None:
        pass


class PagingWorker:
    """One per server process; several replicas each run one against the same database."""

    def __init__(
        self,
        storage: Storage,
        rules: Callable[[], PagingConfig | None],
        dispatcher: Dispatcher,
        retries: RetrySchedule,
        clock: Callable[[], datetime],
        *,
        lease: timedelta = timedelta(seconds=60),
        batch: int = 200,
        concurrency: int = 64,
        idle_poll: float = 1.0,
        observer: PagingObserver | None = None,
        release_claims_at_start: bool = False,
    ) -> None:
        self.storage = storage
        self.rules = rules
        self.dispatcher = dispatcher
        self.retries = retries
        self.clock = clock
        self.lease = lease
        self.batch = batch
        self.concurrency = concurrency
        self.idle_poll = idle_poll
        self.observer: PagingObserver = observer or _NoObserver()
        self.release_claims_at_start = release_claims_at_start
        self.worker_id = f"w_{secrets.token_hex(6)}"
        """The claim owner written on deliveries; new for every process start."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.passes = 0
        self.disabled: dict[str, str] = {}
        """Channels a receiver disabled (HTTP 410, an archived Slack channel), with what it
        said. Kept in this process only, until the configuration in force is replaced."""
        self._disabled_under: PagingConfig | None = None

    def wake(self) -> None:
        """New work may be due (called after commits); safe to call often."""
        self._wake.set()

    def start(self) -> None:
        self.storage.add_listener(lambda events: self.wake())
        self._task = asyncio.get_running_loop().create_task(self._run(), name="paging-worker")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming, give deliveries in flight `grace` seconds, then cancel them.

        A cancelled delivery keeps its claim until the lease runs out; then
        another worker (or this one after a restart) sends it again.
        """
        if self._task is not None:
            self._task.cancel()
            # asyncio.wait, not `await task` under suppress(CancelledError): that
            # would also swallow a cancellation of whoever is stopping the worker.
            await asyncio.wait([self._task])
        if self._sending:
            _, late = await asyncio.wait(self._sending, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.dispatcher.close()

    async def _run(self) -> None:
        if self.release_claims_at_start:
            released = await self.storage.write(_kept(lambda uow: uow.paging.release_claims()))
            if released:
                log.warning(
                    "paging: %d deliveries were being sent when the server last stopped;"
                    " sending them again (with the same ids, so receivers can drop duplicates)",
                    released,
                )
        while True:
            # Cleared before the pass reads anything, not before the wait: a commit
            # or a finished delivery during the pass then calls for the next one
            # instead of waiting out the idle poll.
            self._wake.clear()
            try:
                busy = await self._pass()
            except StorageUnavailable as error:
                log.warning("paging: storage unavailable, retrying in 1s: %s", error.message)
                busy = False
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("paging: a scheduler pass failed; retrying in 1s")
                busy = False
                await asyncio.sleep(1.0)
            if busy:
                await asyncio.sleep(0)
                continue
            await self._idle()

    async def _pass(self) -> bool:
        """Run due steps and claim due deliveries; True if there may be more right away."""
        self.passes += 1
        rules = self.rules()
        self._enable_after_reload(rules)
        now = self.clock()
        report = await self.storage.write(
            _kept(
                lambda uow: paging.run_due_steps(uow.paging, uow.incidents, rules, now, self.batch)
            )
        )
        room = self.concurrency - len(self._sending)
        claim = digests.Claim([])
        if room > 0:
            now = self.clock()
            until = now + self.lease
            limits = digests.rate_limits(rules)
            claim = await self.storage.write(
                _kept(
                    lambda uow: digests.claim_deliveries(
                        uow.paging, self.worker_id, now, until, room, limits
                    )
                )
            )
            for channel_id, count in claim.folded.items():
                self.observer.pages_folded(channel_id, count)
            for notification in claim.claimed:
                task = asyncio.get_running_loop().create_task(self._deliver(notification))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        return report.steps >= self.batch or (room > 0 and claim.handled >= room)

    async def _idle(self) -> None:
        if self._wake.is_set():
            return  # something was committed or delivered during the pass
        timeout = self.idle_poll
        # With every sending slot taken, deliveries that are due cannot be claimed
        # yet: waiting for their due time would spin. A delivery that finishes
        # wakes the worker; a step falling due meanwhile waits at most idle_poll.
        if len(self._sending) < self.concurrency:
            next_due = await self.storage.read(lambda uow: uow.paging.next_due())
            if next_due is not None:
                timeout = min(timeout, max((next_due - self.clock()).total_seconds(), 0.0))
        if timeout <= 0:
            return
        # asyncio.timeout, not asyncio.wait_for: on Python 3.11, wait_for returns
        # normally when the event is set in the same turn as the worker is
        # cancelled, which swallowed stop()'s cancellation and kept it running.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def _enable_after_reload(self, rules: PagingConfig | None) -> None:
        """A reload (a new configuration in force) gives disabled channels another chance."""
        if self.disabled and rules is not self._disabled_under:
            for channel_id in self.disabled:
                self.observer.channel_disabled(channel_id, False)
            log.info("paging: channels enabled again by a reload: %s", ", ".join(self.disabled))
            self.disabled.clear()

    def _disable(self, notification: Notification, said: str, rules: PagingConfig | None) -> None:
        channel_id = notification.channel_id
        if channel_id in self.disabled:
            return
        self.disabled[channel_id] = said
        self._disabled_under = rules
        self.observer.channel_disabled(channel_id, True)
        log.warning(
            "PAGING CHANNEL DISABLED: the receiver of %s channel %s wants no more messages"
            " (it said: %s); every delivery through it fails until the paging configuration"
            " is fixed and reloaded (SIGHUP)",
            notification.channel_type,
            channel_id,
            said,
            extra={"channel_id": channel_id, "delivery_id": notification.id},
        )

    async def _send(self, notification: Notification) -> DeliveryOutcome:
        rules = self.rules()
        self._enable_after_reload(rules)
        said = self.disabled.get(notification.channel_id)
        if said is not None:
            return DeliveryOutcome(
                sent=False,
                retry=False,
                detail=f"channel {notification.channel_id} is disabled: the receiver said {said};"
                " fix it and reload the paging configuration (SIGHUP)",
            )
        try:
            outcome = await self.dispatcher.send(notification)
        except Exception as error:  # a channel bug must not lose the page
            log.exception("paging: channel %s raised", notification.channel_id)
            return DeliveryOutcome(sent=False, retry=True, detail=type(error).__name__)
        if outcome.disable_channel:
            self._disable(notification, outcome.detail, rules)
        return outcome

    async def _deliver(self, notification: Notification) -> None:
        outcome = await self._send(notification)
        now = self.clock()
        attempt = notification.attempts
        try:
            stored = await self.storage.write(
                _kept(
                    lambda uow: paging.record_delivery(
                        uow.paging,
                        uow.incidents,
                        notification.id,
                        self.worker_id,
                        attempt,
                        outcome,
                        self.retries,
                        now,
                    )
                )
            )
        except StorageUnavailable:
            # The claim stays; when its lease runs out the page is tried again,
            # with the same id, so a receiver can drop the duplicate.
            log.warning("paging: could not record delivery %s; it will be retried", notification.id)
            return
        if stored is not None:
            # By the state stored, not the attempt's outcome: a retryable failure whose
            # schedule ran out is a delivery given up on.
            self.observer.delivery_finished(
                notification.channel_type, _OUTCOMES.get(stored, "retry")
            )
        self.wake()


def _kept(work: Callable[[UnitOfWork], T]) -> Callable[[UnitOfWork], T]:
    """`work` as a unit of work that is kept (committed) when it returns normally."""

    def unit(uow: UnitOfWork) -> T:
        with uow:
            value = work(uow)
            uow.commit()
        return value

    return unit
