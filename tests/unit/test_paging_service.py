"""The paging use cases on in-memory storage, with a fixed set of rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from incident_manager.adapters.memory import MemoryStorage
from incident_manager.domain.model import EventType, Incident, IncidentState, IncidentType, Severity
from incident_manager.domain.paging.ledger import EscalationStatus, NotificationState
from incident_manager.domain.paging.model import Matcher, Override, Silence
from incident_manager.paging.file import load_paging_config
from incident_manager.service import paging
from incident_manager.service.paging import Before
from incident_manager.service.ports import DeliveryOutcome, UnitOfWork
from tests.support.paging import open_paged, run_steps

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
CONFIG = load_paging_config(
    """
users:
  - {id: alice, email: alice@example.com}
  - {id: bob, email: bob@example.com}
channels:
  - {id: ops-hook, type: webhook, url: "http://127.0.0.1:9/hook"}
  - {id: mail, type: email, smtp: {host: 127.0.0.1, port: 2525, from: pager@example.com}}
schedules:
  - id: primary
    time_zone: UTC
    layers:
      - {users: [alice], rotation: weekly, handoff: "2026-01-05T00:00"}
escalation_policies:
  - id: critical
    ack_timeout: 30m
    repeat: 1
    repeat_after: 10m
    levels:
      - after: 0s
        notify: [{schedule: primary}, {channel: ops-hook}]
      - after: 10m
        notify: [{user: bob}]
  - id: default
    levels:
      - after: 0s
        notify: [{channel: ops-hook}]
routes:
  - match: {severity: [P0, P1]}
    policy: critical
  - policy: default
""",
    "test.yaml",
)


class NeverRetry:
    def delay(self, attempt: int, retry_after: float | None, age: timedelta) -> timedelta | None:
        return timedelta(seconds=30) if attempt < 3 else None


def _incident(severity: Severity = Severity.P1) -> Incident:
    return Incident.open(
        title="GPU node down",
        description="",
        severity=severity,
        type=IncidentType.INFRASTRUCTURE,
        source="edge-agent",
        affected_resources=[],
        labels={"team": "ml"},
        assignees=[],
        fingerprint="fp",
        actor="edge-agent",
        now=T0,
        alert_count=1,
    )


async def _open(storage: MemoryStorage, severity: Severity = Severity.P1) -> str:
    return await open_paged(storage, CONFIG, _incident(severity), T0)


async def _steps(storage: MemoryStorage, now: datetime) -> paging.StepReport:
    return await run_steps(storage, CONFIG, now)


async def _ledger(storage: MemoryStorage, incident_id: str) -> list[tuple[int, int, str, str]]:
    rows = await storage.read(lambda uow: uow.paging.list_notifications(incident_id, None, 100))
    return [(n.level, n.round, n.target, n.state.name) for n in rows]


async def _change(storage: MemoryStorage, incident_id: str, now: datetime, change: str) -> None:
    def work(uow: UnitOfWork) -> None:
        with uow:
            incident = uow.incidents.get(incident_id)
            assert incident is not None
            before = Before.of(incident)
            if change == "ack":
                incident.acknowledge(actor="carol", now=now)
            elif change == "resolve":
                from incident_manager.domain.model import ResolutionMethod

                incident.resolve(
                    method=ResolutionMethod.MANUAL,
                    root_cause="",
                    notes="",
                    resolved_by="carol",
                    now=now,
                )
            elif change == "P0":
                incident.update(actor="carol", now=now, severity=Severity.P0)
            elif change == "note":
                incident.add_note(author="carol", content="looking", now=now)
            uow.incidents.save(incident)
            paging.follow_incident(
                uow.paging, CONFIG, incident, before, now, by_person=change in ("note", "ack")
            )
            uow.commit()

    await storage.write(work)


async def test_a_new_p1_incident_pages_level_one_at_once_and_level_two_after_its_delay() -> None:
    storage = MemoryStorage()
    incident_id = await _open(storage)
    await _steps(storage, T0)
    assert await _ledger(storage, incident_id) == [
        (1, 1, "schedule primary (alice)", "PENDING"),
        (1, 1, "channel ops-hook", "PENDING"),
    ]
    await _steps(storage, T0 + timedelta(minutes=9))
    assert len(await _ledger(storage, incident_id)) == 2
    await _steps(storage, T0 + timedelta(minutes=10))
    assert (await _ledger(storage, incident_id))[2] == (2, 1, "user bob", "PENDING")
    timeline = await storage.read(lambda uow: uow.incidents.get(incident_id, with_history=True))
    assert timeline is not None
    escalated = [e for e in timeline.timeline if e.type is EventType.ESCALATED]
    assert [e.details["level"] for e in escalated] == ["1", "2"]
    assert "level 2 after 10m" in escalated[1].message


async def test_repeat_runs_the_levels_again_then_paging_stops() -> None:
    storage = MemoryStorage()
    incident_id = await _open(storage)
    for minutes in (0, 10, 20, 30, 60, 120):
        await _steps(storage, T0 + timedelta(minutes=minutes))
    rows = await _ledger(storage, incident_id)
    assert [(level, round) for level, round, _, _ in rows] == [
        (1, 1),
        (1, 1),
        (2, 1),
        (1, 2),
        (1, 2),
        (2, 2),
    ]
    escalation = await storage.read(lambda uow: uow.paging.escalation(incident_id))
    assert escalation is not None and escalation.status is EscalationStatus.EXHAUSTED


async def test_an_acknowledgement_stops_paging_and_suppresses_what_was_not_sent() -> None:
    storage = MemoryStorage()
    incident_id = await _open(storage)
    await _steps(storage, T0)
    await _change(storage, incident_id, T0 + timedelta(minutes=1), "ack")
    await _steps(storage, T0 + timedelta(minutes=10))
    rows = await _ledger(storage, incident_id)
    assert [state for *_, state in rows] == ["SUPPRESSED", "SUPPRESSED"]
    incident = await storage.read(lambda uow: uow.incidents.get(incident_id))
    assert incident is not None and incident.state is IncidentState.TRIAGED
    assert incident.acknowledged_by == "carol"


async def test_an_acknowledgement_that_times_out_pages_again_from_the_first_level() -> None:
    storage = MemoryStorage()
    incident_id = await _open(storage)
    await _steps(storage, T0)
    await _change(storage, incident_id, T0 + timedelta(minutes=1), "ack")
    await _steps(storage, T0 + timedelta(minutes=30))
    assert len(await _ledger(storage, incident_id)) == 2
    await _steps(storage, T0 + timedelta(minutes=31))
    rows = await _ledger(storage, incident_id)
    assert rows[2:] == [
        (1, 1, "schedule primary (alice)", "PENDING"),
        (1, 1, "channel ops-hook", "PENDING"),
    ]
    incident = await storage.read(lambda uow: uow.incidents.get(incident_id, with_history=True))
    assert incident is not None
    assert any("acknowledgement timed out" in e.message for e in incident.timeline)


async def test_a_note_by_a_person_re_arms_the_acknowledgement_timeout() -> None:
    storage = MemoryStorage()
    incident_id = await _open(storage)
    await _steps(storage, T0)
    await _change(storage, incident_id, T0 + timedelta(minutes=1), "ack")
    await _change(storage, incident_id, T0 + timedelta(minutes=20), "note")
    await _steps(storage, T0 + timedelta(minutes=35))
    assert len(await _ledger(storage, incident_id)) == 2
    await _steps(storage, T0 + timedelta(minutes=50))
    assert len(await _ledger(storage, incident_id)) == 4


async def test_resolving_stops_everything() -> None:
    storage = MemoryStorage()
    incident_id = await _open(storage)
    await _steps(storage, T0)
    await _change(storage, incident_id, T0 + timedelta(minutes=2), "resolve")
    for minutes in (10, 20, 60):
        await _steps(storage, T0 + timedelta(minutes=minutes))
    assert [state for *_, state in await _ledger(storage, incident_id)] == ["SUPPRESSED"] * 2
    assert await storage.read(lambda uow: uow.paging.next_due()) is None


async def test_a_severity_rise_moves_the_incident_to_the_critical_policy_from_its_first_level() -> (
    None
):
    storage = MemoryStorage()
    incident_id = await _open(storage, Severity.P3)
    await _steps(storage, T0)
    assert await _ledger(storage, incident_id) == [(1, 1, "channel ops-hook", "PENDING")]
    await _change(storage, incident_id, T0 + timedelta(minutes=5), "P0")
    await _steps(storage, T0 + timedelta(minutes=5))
    rows = await _ledger(storage, incident_id)
    assert rows[1:] == [
        (1, 1, "schedule primary (alice)", "PENDING"),
        (1, 1, "channel ops-hook", "PENDING"),
    ]
    incident = await storage.read(lambda uow: uow.incidents.get(incident_id, with_history=True))
    assert incident is not None
    assert any("moving from policy default to critical" in e.message for e in incident.timeline)


async def test_a_silence_holds_paging_and_its_end_starts_it() -> None:
    storage = MemoryStorage()
    silence = Silence(
        id="sil_1",
        matcher=Matcher(sources=frozenset({"edge-agent"})),
        start=T0 - timedelta(minutes=1),
        end=T0 + timedelta(hours=1),
        created_by="carol",
        comment="maintenance",
        create_time=T0,
    )

    def add(uow: UnitOfWork) -> None:
        with uow:
            uow.paging.add_silence(silence)
            uow.commit()

    await storage.write(add)
    incident_id = await _open(storage)
    await _steps(storage, T0)
    assert await _ledger(storage, incident_id) == []
    assert await storage.read(lambda uow: uow.paging.next_due()) == silence.end
    await _steps(storage, silence.end)
    assert [level for level, *_ in await _ledger(storage, incident_id)] == [1, 1]
    incident = await storage.read(lambda uow: uow.incidents.get(incident_id, with_history=True))
    assert incident is not None
    assert any("held by silence sil_1" in e.message for e in incident.timeline)


async def test_a_delivery_outcome_from_a_worker_whose_lease_ran_out_is_ignored() -> None:
    storage = MemoryStorage()
    incident_id = await _open(storage)
    await _steps(storage, T0)

    def claim(worker: str, now: datetime):  # type: ignore[no-untyped-def]
        def work(uow: UnitOfWork):  # type: ignore[no-untyped-def]
            with uow:
                found = uow.paging.claim_notifications(worker, now, now + timedelta(seconds=60), 1)
                uow.commit()
            return found

        return work

    first = (await storage.write(claim("a", T0)))[0]
    second = (await storage.write(claim("b", T0 + timedelta(seconds=61))))[0]
    assert first.id == second.id and second.attempts == 2

    def record(worker: str, attempt: int):  # type: ignore[no-untyped-def]
        def work(uow: UnitOfWork) -> NotificationState | None:
            with uow:
                done = paging.record_delivery(
                    uow.paging,
                    uow.incidents,
                    first.id,
                    worker,
                    attempt,
                    DeliveryOutcome(sent=True, retry=False),
                    NeverRetry(),
                    T0 + timedelta(seconds=62),
                )
                uow.commit()
            return done

        return work

    assert await storage.write(record("a", 1)) is None
    assert await storage.write(record("b", 2)) is NotificationState.SENT
    stored = await storage.read(lambda uow: uow.paging.notification(first.id))
    assert stored is not None and stored.state is NotificationState.SENT and stored.attempts == 2
    incident = await storage.read(lambda uow: uow.incidents.get(incident_id, with_history=True))
    assert incident is not None
    sent = [e for e in incident.timeline if e.type is EventType.NOTIFICATION_SENT]
    assert len(sent) == 1 and sent[0].details["outcome"] == "SENT"


async def test_an_override_pages_whoever_covers_the_schedule() -> None:
    storage = MemoryStorage()
    cover = Override(
        id="ovr_1",
        schedule_id="primary",
        user_id="bob",
        start=T0 - timedelta(hours=1),
        end=T0 + timedelta(hours=8),
        created_by="carol",
        reason="alice is on a plane",
        create_time=T0,
    )

    def add(uow: UnitOfWork) -> None:
        with uow:
            uow.paging.add_override(cover)
            uow.commit()

    await storage.write(add)
    incident_id = await _open(storage)
    await _steps(storage, T0)
    assert (await _ledger(storage, incident_id))[0] == (1, 1, "schedule primary (bob)", "PENDING")


async def test_a_target_removed_by_a_reload_is_recorded_as_unreached_and_the_rest_is_paged() -> (
    None
):
    storage = MemoryStorage()
    incident_id = await _open(storage)  # snapshots `critical`: schedule primary + ops-hook
    reloaded = load_paging_config(
        """
users:
  - {id: bob, email: bob@example.com}
channels:
  - {id: ops-hook, type: webhook, url: "http://127.0.0.1:9/hook"}
  - {id: mail, type: email, smtp: {host: 127.0.0.1, port: 2525, from: pager@example.com}}
escalation_policies:
  - id: default
    levels:
      - {after: 0s, notify: [{channel: ops-hook}]}
routes:
  - policy: default
""",
        "reloaded.yaml",
    )

    def step(uow: UnitOfWork) -> None:
        with uow:
            paging.run_due_steps(uow.paging, uow.incidents, reloaded, T0, 100)
            uow.commit()

    await storage.write(step)
    rows = await storage.read(lambda uow: uow.paging.list_notifications(incident_id, None, 10))
    assert [(n.target, n.state.name) for n in rows] == [
        ("channel ops-hook", "PENDING"),
        ("schedule primary", "SUPPRESSED"),
    ]
    assert "no longer in the paging configuration" in rows[1].last_error


def test_a_lease_no_longer_than_a_channel_timeout_is_refused_naming_the_channels() -> None:
    # The webhook and SMTP channels of CONFIG take the default 10 s per attempt.
    problem = CONFIG.lease_problem(timedelta(seconds=10))
    assert "ops-hook (10s)" in problem and "mail (10s)" in problem
    assert "--paging-lease (10s)" in problem
    assert CONFIG.lease_problem(timedelta(seconds=11)) == ""
