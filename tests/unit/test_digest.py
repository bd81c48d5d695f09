"""A rate-limited channel's quota per minute of the clock, and the digest that carries the rest."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from incident_manager.adapters.channels import digest as render
from incident_manager.adapters.channels.base import page_content_from_dict
from incident_manager.adapters.memory import MemoryStorage
from incident_manager.domain.model import Incident, IncidentType, ResolutionMethod, Severity
from incident_manager.domain.paging.digest import (
    MAX_LISTED,
    ChannelWindow,
    digest_title,
    fold,
    new_digest,
    ration,
    settle,
    window_start,
)
from incident_manager.domain.paging.ledger import Notification, NotificationState
from incident_manager.domain.paging.model import TargetKind
from incident_manager.entrypoints.conversions import notification_to_proto
from incident_manager.paging.file import load_paging_config
from incident_manager.service import paging
from incident_manager.service.digests import claim_deliveries
from incident_manager.service.ports import DeliveryOutcome, UnitOfWork
from incident_manager.service.scheduler import PagingWorker
from tests.support import FakeClock, eventually

T0 = datetime(2026, 3, 2, 9, 14, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


class Never:
    """No retries."""

    def delay(self, attempt: int, retry_after: float | None, age: timedelta) -> timedelta | None:
        return None


def page(
    number: int,
    *,
    channel: str = "ops-slack",
    attempts: int = 0,
    severity: str = "P2",
    recipient: str = "",
    at: datetime = T0,
    event: str = "paged",
) -> Notification:
    return Notification(
        id=f"ntf_{number:05d}",
        incident_id=f"inc_{number:05d}",
        policy_id="default",
        level=1,
        round=1,
        target_kind=TargetKind.CHANNEL,
        target_id=channel,
        user_id="",
        channel_id=channel,
        channel_type="slack",
        recipient=recipient or channel,
        reason="new incident",
        create_time=at,
        ordinal=0,
        content={"severity": severity, "title": f"incident number {number}", "event": event},
        attempts=attempts,
        update_time=at,
        next_attempt_time=at,
    )


def test_a_window_is_a_minute_of_the_clock_in_utc() -> None:
    assert window_start(T0 + timedelta(seconds=59, microseconds=999_999)) == T0
    assert window_start(T0 + timedelta(seconds=60)) == T0 + timedelta(minutes=1)
    # Berlin is UTC+1 then: the same moment, whatever the zone it is written in.
    berlin = datetime(2026, 3, 2, 11, 14, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert window_start(berlin) == datetime(2026, 3, 2, 10, 14, tzinfo=UTC)


def test_within_its_quota_a_channel_sends_and_past_it_new_pages_are_folded() -> None:
    window = ChannelWindow("ops-slack", T0)
    due = [page(i) for i in range(7)] + [page(99, channel="other")]
    plan = ration(due, {"ops-slack": window}, {"ops-slack": 3}, T0)
    assert [n.id for n in plan.claim] == ["ntf_00000", "ntf_00001", "ntf_00002", "ntf_00099"]
    assert [n.id for n in plan.fold] == [f"ntf_{i:05d}" for i in range(3, 7)]
    assert plan.defer == []
    assert window.used == 3


def test_the_count_carries_over_within_a_window_and_starts_again_in_the_next(
    clock: FakeClock,
) -> None:
    clock.now = T0 + timedelta(seconds=10)
    window = ChannelWindow("ops-slack", T0)
    first = ration([page(1), page(2)], {"ops-slack": window}, {"ops-slack": 3}, clock())
    clock.advance(seconds=49)
    second = ration([page(3), page(4)], {"ops-slack": window}, {"ops-slack": 3}, clock())
    assert (len(first.claim), len(second.claim), len(second.fold)) == (2, 1, 1)
    clock.advance(seconds=1)  # 09:15:00: a new window
    third = ration([page(5)], {"ops-slack": window}, {"ops-slack": 3}, clock())
    assert (len(third.claim), window.start, window.used) == (1, T0 + timedelta(minutes=1), 1)


def test_a_clock_that_lags_does_not_reset_a_newer_windows_count() -> None:
    window = ChannelWindow("ops-slack", T0 + timedelta(minutes=1), used=3)
    plan = ration([page(1)], {"ops-slack": window}, {"ops-slack": 3}, T0 + timedelta(seconds=59))
    assert (plan.claim, len(plan.fold), window.used) == ([], 1, 3)


def test_retries_digests_and_messages_about_no_incident_wait_for_the_next_window() -> None:
    window = ChannelWindow("ops-slack", T0, used=2)
    retry = page(1, attempts=1)
    action = page(2, event="action")
    the_digest = new_digest(page(3), 2, T0, T0)
    plan = ration([retry, action, the_digest], {"ops-slack": window}, {"ops-slack": 2}, T0)
    assert (plan.claim, plan.fold) == ([], [])
    assert {n.id for n in plan.defer} == {retry.id, action.id, the_digest.id}


def test_an_automated_action_past_the_quota_is_never_folded_only_deferred() -> None:
    window = ChannelWindow("ops-slack", T0, used=2)
    action = replace(page(1), target_kind=TargetKind.ACTION)
    plan = ration([action], {"ops-slack": window}, {"ops-slack": 2}, T0)
    assert (plan.claim, plan.fold, [n.id for n in plan.defer]) == ([], [], [action.id])


def test_a_due_digest_takes_the_first_slot_of_its_window() -> None:
    window = ChannelWindow("ops-slack", T0 - timedelta(minutes=1), used=1)
    the_digest = new_digest(page(0), 1, T0, T0 - timedelta(seconds=30))
    plan = ration([page(1), page(2), the_digest], {"ops-slack": window}, {"ops-slack": 1}, T0)
    assert [n.id for n in plan.claim] == [the_digest.id]
    assert [n.id for n in plan.fold] == ["ntf_00001", "ntf_00002"]


def test_folded_pages_point_at_the_digest_and_wait_for_it() -> None:
    pages = [page(1, severity="P2"), page(2, severity="P0"), page(3, severity="P3")]
    the_digest = new_digest(pages[0], 5, T0 + timedelta(minutes=1), T0)
    fold(the_digest, pages, T0 + timedelta(seconds=20))
    assert (the_digest.reason, the_digest.content["severity"]) == ("digest of 3 pages", "P0")
    assert the_digest.content["title"] == "3 more incidents paged in the last minute"
    assert (the_digest.target_kind, the_digest.target_id, the_digest.incident_id) == (
        TargetKind.CHANNEL, "ops-slack", "",
    )  # fmt: skip
    for folded in pages:
        assert (folded.digest_id, folded.next_attempt_time) == (the_digest.id, None)
        assert folded.state is NotificationState.PENDING
        assert folded.last_error == (
            f"folded into digest {the_digest.id}: channel ops-slack sends at most 5 messages"
            " a minute"
        )


def test_a_digest_lists_its_first_pages_and_counts_the_rest() -> None:
    the_digest = new_digest(page(0), 5, T0 + timedelta(minutes=1), T0)
    fold(the_digest, [page(i) for i in range(1000)], T0)
    fold(the_digest, [page(i) for i in range(1000, 1017)], T0 + timedelta(seconds=3))
    content = page_content_from_dict(the_digest.content)
    assert content.digest is not None
    assert (content.digest.total, len(content.digest.pages)) == (1017, MAX_LISTED)
    lines = render.lines(content)
    assert lines[0] == "P2 inc_00000: incident number 0"
    assert lines[-1] == f"and {1017 - MAX_LISTED} more"
    assert content.title == "1,017 more incidents paged in the last minute"


def test_a_digest_that_gathered_pages_over_several_minutes_says_since_when() -> None:
    assert digest_title(1, T0, T0 + timedelta(seconds=59)) == (
        "1 more incident paged in the last minute"
    )
    assert digest_title(40, T0 + timedelta(seconds=5), T0 + timedelta(minutes=3)) == (
        "40 more incidents paged since 09:14 UTC"
    )


def test_folded_pages_end_as_their_digest_did() -> None:
    the_digest = new_digest(page(0), 5, T0, T0)
    sent, failed = page(1), page(2)
    the_digest.sent(T0)
    settle(sent, the_digest, T0)
    assert (sent.state, sent.last_error, sent.send_time) == (
        NotificationState.SENT, f"SENT in digest {the_digest.id}", T0,
    )  # fmt: skip
    the_digest.failed("HTTP 404 channel_not_found", T0)
    settle(failed, the_digest, T0)
    assert (failed.state, failed.last_error) == (
        NotificationState.FAILED, f"digest {the_digest.id} failed: HTTP 404 channel_not_found",
    )  # fmt: skip


async def _claim(storage: MemoryStorage, now: datetime, limits: dict[str, int]) -> int:
    def work(uow: UnitOfWork) -> int:
        with uow:
            claim = claim_deliveries(uow.paging, "w_1", now, now + LEASE, 100, limits)
            uow.commit()
        return len(claim.claimed)

    return await storage.write(work)


async def test_an_email_channel_keeps_one_digest_per_address() -> None:
    storage = MemoryStorage()
    pages = [page(i, channel="mail", recipient=f"user{i % 2}@example.com") for i in range(6)]

    def add(uow: UnitOfWork) -> None:
        with uow:
            uow.paging.add_notifications(pages)
            uow.commit()

    await storage.write(add)
    assert await _claim(storage, T0, {"mail": 2}) == 2
    digests = await storage.read(
        lambda uow: sorted(
            {n.digest_id for p in pages if (n := uow.paging.notification(p.id)) and n.digest_id}
        )
    )
    assert len(digests) == 2
    for digest_id in digests:
        found = await storage.read(lambda uow, d=digest_id: uow.paging.notification(d))  # type: ignore[misc]
        assert found is not None
        folded = await storage.read(lambda uow, d=digest_id: uow.paging.folded_into(d))  # type: ignore[misc]
        assert {n.recipient for n in folded} == {found.recipient}
        assert found.next_attempt_time == T0 + timedelta(minutes=1)


WORKER_CONFIG = load_paging_config(
    """
channels:
  - {id: ops-hook, type: webhook, url: "http://127.0.0.1:9/hook", rate_limit: {per_minute: 2}}
escalation_policies:
  - id: default
    levels: [{after: 0s, notify: [{channel: ops-hook}]}]
routes:
  - policy: default
""",
    "worker.yaml",
)


class Accepting:
    """Every receiver takes every message; what was sent is kept."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> DeliveryOutcome:
        self.sent.append(notification)
        return DeliveryOutcome(sent=True, retry=False, detail="HTTP 200")

    async def close(self) -> None:
        pass


class Folds:
    def __init__(self) -> None:
        self.folded: dict[str, int] = {}

    def delivery_finished(self, channel_type: str, outcome: str) -> None:
        pass

    def channel_disabled(self, channel_id: str, disabled: bool) -> None:
        pass

    def pages_folded(self, channel_id: str, count: int) -> None:
        self.folded[channel_id] = self.folded.get(channel_id, 0) + count


def _until(done: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return done()

    return probe


async def _open_incidents(storage: MemoryStorage, count: int, now: datetime) -> list[Incident]:
    incidents = [
        Incident.open(
            title=f"GPU node {n} down",
            description="",
            severity=Severity.P1,
            type=IncidentType.INFRASTRUCTURE,
            source="edge-agent",
            affected_resources=[],
            labels={},
            assignees=[],
            fingerprint=f"fp-{n}",
            actor="edge-agent",
            now=now,
            alert_count=1,
        )
        for n in range(count)
    ]

    def work(uow: UnitOfWork) -> None:
        with uow:
            for incident in incidents:
                uow.incidents.add(incident)
                paging.follow_incident(uow.paging, WORKER_CONFIG, incident, None, now)
            uow.commit()

    await storage.write(work)
    return incidents


async def test_the_worker_folds_pages_past_the_quota_and_sends_the_digest_next_minute() -> None:
    storage = MemoryStorage()
    clock = FakeClock(T0 + timedelta(seconds=30))
    channels, folds = Accepting(), Folds()
    incidents = await _open_incidents(storage, 6, clock())
    worker = PagingWorker(
        storage, lambda: WORKER_CONFIG, channels, Never(), clock, idle_poll=0.02, observer=folds
    )
    worker.start()
    try:
        await eventually(_until(lambda: folds.folded.get("ops-hook") == 4), what="4 folded")
        await eventually(_until(lambda: len(channels.sent) == 2), what="2 pages sent")
        # The incident of a folded page is resolved before the digest goes.
        pages = await storage.read(
            lambda uow: [uow.paging.list_notifications(i.id, None, 1)[0] for i in incidents]
        )
        folded = [n.incident_id for n in pages if n.digest_id]
        resolved = next(i for i in incidents if i.id == folded[0])

        def resolve(uow: UnitOfWork) -> None:
            with uow:
                incident = uow.incidents.get(resolved.id)
                assert incident is not None
                before = paging.Before.of(incident)
                incident.resolve(
                    method=ResolutionMethod.MANUAL, root_cause="rc", notes="", resolved_by="bob",
                    now=clock(),
                )  # fmt: skip
                uow.incidents.save(incident)
                paging.follow_incident(uow.paging, WORKER_CONFIG, incident, before, clock())
                uow.commit()

        await storage.write(resolve)
        clock.advance(seconds=30)  # 09:15:00, the next window
        worker.wake()
        await eventually(_until(lambda: len(channels.sent) == 3), what="the digest")
    finally:
        await worker.stop()
    digest = channels.sent[2]
    assert digest.is_digest and digest.reason == "digest of 4 pages"

    def ledger(uow: UnitOfWork) -> dict[str, tuple[NotificationState, str]]:
        rows = [uow.paging.list_notifications(i.id, None, 10)[0] for i in incidents]
        return {n.incident_id: (n.state, n.last_error) for n in rows}

    states = await storage.read(ledger)
    assert states.pop(resolved.id) == (NotificationState.SUPPRESSED, "incident resolved")
    assert sorted(states.values()) == [
        (NotificationState.SENT, ""),
        (NotificationState.SENT, ""),
        *[(NotificationState.SENT, f"SENT in digest {digest.id}")] * 3,
    ]
    timeline = await storage.read(lambda uow: uow.incidents.get(folded[1], with_history=True))
    assert timeline is not None
    assert timeline.timeline[-1].message == (
        f"paged channel ops-hook through webhook ops-hook in digest {digest.id}"
    )


def test_the_ledger_shows_the_digest_a_page_was_folded_into() -> None:
    folded = page(1)
    the_digest = new_digest(folded, 5, T0 + timedelta(minutes=1), T0)
    fold(the_digest, [folded], T0)
    message = notification_to_proto(folded)
    assert (message.digest_id, message.HasField("next_attempt_time")) == (the_digest.id, False)
    assert message.last_error.startswith(f"folded into digest {the_digest.id}")
    assert notification_to_proto(page(2)).digest_id == ""
