"""The paging worker on in-memory storage, with channels that answer as the test says."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.domain.model import Incident, IncidentType, Severity
from incident_manager.domain.paging.ledger import Notification, NotificationState
from incident_manager.paging.file import load_paging_config
from incident_manager.service import paging
from incident_manager.service.ports import DeliveryOutcome, UnitOfWork
from incident_manager.service.scheduler import PagingWorker
from tests.support import FakeClock, eventually
from tests.support.paging import new_incident, open_paged

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
CONFIG = load_paging_config(
    """
users:
  - {id: alice, email: alice@example.com}
channels:
  - {id: ops-hook, type: webhook, url: "http://127.0.0.1:9/hook"}
  - {id: mail, type: email, smtp: {host: 127.0.0.1, port: 2525, from: pager@example.com}}
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{user: alice}, {channel: ops-hook}]
routes:
  - policy: default
""",
    "test.yaml",
)


class Unavailable:
    """Every receiver answers 503, which is worth a retry."""

    async def send(self, notification: Notification) -> DeliveryOutcome:
        return DeliveryOutcome(sent=False, retry=True, detail="HTTP 503 Service Unavailable")

    async def close(self) -> None:
        pass


class TwoAttempts:
    """Retry once, 30 s later; then give up."""

    def delay(self, attempt: int, retry_after: float | None, age: timedelta) -> timedelta | None:
        return timedelta(seconds=30) if attempt < 2 else None


class Outcomes:
    """What the worker reports for each recorded attempt, as the metrics see it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def delivery_finished(self, channel_type: str, outcome: str) -> None:
        self.seen.append((channel_type, outcome))

    def channel_disabled(self, channel_id: str, disabled: bool) -> None:
        self.seen.append((channel_id, "disabled" if disabled else "enabled"))

    def pages_folded(self, channel_id: str, count: int) -> None:
        pass


async def _open(storage: MemoryStorage) -> str:
    return await open_paged(storage, CONFIG, new_incident(now=T0), T0)


def _recorded(outcomes: Outcomes, count: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return len(outcomes.seen) >= count

    return probe


async def test_a_delivery_whose_retries_ran_out_is_counted_as_failed_not_as_a_retry() -> None:
    storage = MemoryStorage()
    clock = FakeClock(T0)
    outcomes = Outcomes()
    incident_id = await _open(storage)
    worker = PagingWorker(
        storage, lambda: CONFIG, Unavailable(), TwoAttempts(), clock, observer=outcomes
    )
    worker.start()
    try:
        await eventually(_recorded(outcomes, 2), what="the first attempts")
        assert sorted(outcomes.seen) == [("email", "retry"), ("webhook", "retry")]
        clock.advance(seconds=31)
        worker.wake()
        await eventually(_recorded(outcomes, 4), what="the second attempts")
    finally:
        await worker.stop()
    assert sorted(outcomes.seen[2:]) == [("email", "failed"), ("webhook", "failed")]
    ledger = await storage.read(lambda uow: uow.paging.list_notifications(incident_id, None, 10))
    assert [(n.state, n.attempts) for n in ledger] == [(NotificationState.FAILED, 2)] * 2
    assert all(n.last_error.startswith("gave up after 2 attempts: HTTP 503") for n in ledger)


class GoneOnce:
    """The first receiver asked answers 410 Gone (the channel is to be disabled); every
    later call is counted and sent."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def send(self, notification: Notification) -> DeliveryOutcome:
        self.calls.append(notification.channel_id)
        if len(self.calls) == 1:
            return DeliveryOutcome(
                sent=False, retry=False, detail="HTTP 410 Gone", status=410, disable_channel=True
            )
        return DeliveryOutcome(sent=True, retry=False, detail="HTTP 200")

    async def close(self) -> None:
        pass


async def test_a_channel_its_receiver_disabled_fails_at_once_until_a_new_configuration() -> None:
    storage = MemoryStorage()
    outcomes = Outcomes()
    gone = GoneOnce()
    only_hook = load_paging_config(
        """
channels:
  - {id: ops-hook, type: webhook, url: "http://127.0.0.1:9/hook"}
escalation_policies:
  - id: default
    levels: [{after: 0s, notify: [{channel: ops-hook}]}]
routes:
  - policy: default
""",
        "hook.yaml",
    )
    rules = {"now": only_hook}
    worker = PagingWorker(
        storage, lambda: rules["now"], gone, TwoAttempts(), FakeClock(T0), observer=outcomes
    )

    async def ledger(incident_id: str) -> list[Notification]:
        return await storage.read(lambda uow: uow.paging.list_notifications(incident_id, None, 9))

    async def open_incident() -> str:
        incident = Incident.open(
            title=f"GPU node down {len(gone.calls)}",
            description="",
            severity=Severity.P1,
            type=IncidentType.INFRASTRUCTURE,
            source="edge-agent",
            affected_resources=[],
            labels={},
            assignees=[],
            fingerprint=f"fp{len(gone.calls)}",
            actor="edge-agent",
            now=T0,
            alert_count=1,
        )

        def work(uow: UnitOfWork) -> str:
            with uow:
                uow.incidents.add(incident)
                paging.follow_incident(uow.paging, only_hook, incident, None, T0)
                uow.commit()
            return incident.id

        return await storage.write(work)

    def finished(incident_id: str) -> Callable[[], Awaitable[list[Notification] | None]]:
        async def probe() -> list[Notification] | None:
            rows = await ledger(incident_id)
            done = rows and all(n.state is not NotificationState.PENDING for n in rows)
            return rows if done else None

        return probe

    worker.start()
    try:
        first = await open_incident()
        [refused] = await eventually(finished(first), what="the 410")
        assert refused.state is NotificationState.FAILED and "410" in refused.last_error
        assert worker.disabled == {"ops-hook": "HTTP 410 Gone"}
        assert ("ops-hook", "disabled") in outcomes.seen

        second = await open_incident()
        [failed] = await eventually(finished(second), what="the delivery to a disabled channel")
        assert failed.last_error == (
            "channel ops-hook is disabled: the receiver said HTTP 410 Gone; fix it and reload"
            " the paging configuration (SIGHUP)"
        )
        assert gone.calls == ["ops-hook"], "the receiver was not called again"

        rules["now"] = load_paging_config(
            "channels: [{id: ops-hook, type: webhook, url: 'http://127.0.0.1:9/hook'}]\n"
            "escalation_policies: [{id: default, levels: [{after: 0s, notify: [{channel: "
            "ops-hook}]}]}]\nroutes: [{policy: default}]\n",
            "reloaded.yaml",
        )
        third = await open_incident()
        [sent] = await eventually(finished(third), what="a delivery after the reload")
        assert sent.state is NotificationState.SENT
        assert gone.calls == ["ops-hook", "ops-hook"] and worker.disabled == {}
        assert ("ops-hook", "enabled") in outcomes.seen
    finally:
        await worker.stop()
