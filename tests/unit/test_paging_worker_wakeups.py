"""When the paging worker runs a pass: a wake-up is never lost, a worker whose sending
slots are all taken waits for one to free instead of spinning, and a stop stops it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.domain.model import IncidentType, Severity
from incident_manager.domain.paging.ledger import Notification
from incident_manager.paging.file import load_paging_config
from incident_manager.service.ports import DeliveryOutcome, T, UnitOfWork
from incident_manager.service.scheduler import PagingWorker
from tests.support import FakeClock, eventually
from tests.support.paging import new_incident, open_paged

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
CONFIG = load_paging_config(
    """
channels:
  - {id: ops-hook, type: webhook, url: "http://127.0.0.1:9/hook"}
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{channel: ops-hook}]
routes:
  - policy: default
""",
    "test.yaml",
)


class Threaded(MemoryStorage):
    """In-memory storage that, like the real ones, gives the event loop a turn per call.

    `during_next_read` runs once, inside the next read, before it answers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.during_next_read: Callable[[], Awaitable[None]] | None = None

    async def write(self, work: Callable[[UnitOfWork], T]) -> T:
        await asyncio.sleep(0)
        return await super().write(work)

    async def read(self, work: Callable[[UnitOfWork], T]) -> T:
        await asyncio.sleep(0)
        result = await super().read(work)
        if self.during_next_read is not None:
            meanwhile, self.during_next_read = self.during_next_read, None
            await meanwhile()
        return result


class Receiver:
    """Records each page; holds every answer until `release` is set."""

    def __init__(self, *, hold: bool = False) -> None:
        self.sent: list[str] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()

    async def send(self, notification: Notification) -> DeliveryOutcome:
        self.sent.append(notification.incident_id)
        await self.release.wait()
        return DeliveryOutcome(sent=True, retry=False)

    async def close(self) -> None:
        pass

    def pages(self, count: int) -> Callable[[], Awaitable[bool]]:
        """A probe for `eventually`: have `count` pages arrived?"""

        async def probe() -> bool:
            return len(self.sent) >= count

        return probe


class NoRetries:
    def delay(self, attempt: int, retry_after: float | None, age: timedelta) -> timedelta | None:
        return None


async def _open(storage: MemoryStorage, title: str) -> str:
    incident = new_incident(
        now=T0,
        title=title,
        severity=Severity.P2,
        type=IncidentType.PERFORMANCE,
        source="llm-sentinel",
        fingerprint=title,
    )
    return await open_paged(storage, CONFIG, incident, T0)


async def test_an_incident_opened_while_the_worker_reads_its_next_due_time_is_paged_at_once() -> (
    None
):
    storage = Threaded()
    receiver = Receiver()
    # An idle poll far longer than the test: only the wake-up can start the pass.
    worker = PagingWorker(
        storage, lambda: CONFIG, receiver, NoRetries(), FakeClock(T0), idle_poll=60.0
    )
    opened: list[str] = []

    async def open_one() -> None:
        opened.append(await _open(storage, "p99 latency above threshold"))

    storage.during_next_read = open_one
    worker.start()
    try:
        await eventually(receiver.pages(1), what="the page", timeout=5.0)
    finally:
        await worker.stop()
    assert receiver.sent == opened


async def test_a_worker_with_every_sending_slot_taken_waits_instead_of_spinning() -> None:
    storage = Threaded()
    receiver = Receiver(hold=True)
    await _open(storage, "first")
    await _open(storage, "second")
    worker = PagingWorker(
        storage, lambda: CONFIG, receiver, NoRetries(), FakeClock(T0), concurrency=1
    )
    worker.start()
    try:
        await eventually(receiver.pages(1), what="the first page")
        passes = worker.passes
        await asyncio.sleep(0.3)
        # The second page is due but has no slot: nothing to do until one frees.
        assert worker.passes - passes <= 1
        assert len(receiver.sent) == 1
        receiver.release.set()
        await eventually(receiver.pages(2), what="the second page")
    finally:
        await worker.stop()


async def test_a_worker_told_to_stop_just_as_it_is_woken_stops() -> None:
    # The stop may land at any point of the wake-up's turns of the event loop; on
    # Python 3.11 asyncio.wait_for returned normally when both landed at once,
    # swallowing the cancellation, and the worker ran on for ever.
    for turns in range(8):
        worker = PagingWorker(
            Threaded(), lambda: CONFIG, Receiver(), NoRetries(), FakeClock(T0), idle_poll=60.0
        )
        worker.start()
        await asyncio.sleep(0.02)  # idle: nothing is due
        worker.wake()
        for _ in range(turns):
            await asyncio.sleep(0)
        stopping = asyncio.ensure_future(worker.stop())
        stopped, _ = await asyncio.wait([stopping], timeout=2)
        if not stopped:
            stopping.cancel()  # which cancels the worker a second time
            await asyncio.wait([stopping])
        assert stopped, f"the worker was still running 2 s after stop ({turns} turns)"
