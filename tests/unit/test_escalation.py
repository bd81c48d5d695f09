"""Escalation: when each level of each round is due, and whom a level reaches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from incident_manager.domain.paging.escalation import (
    Delivery,
    EscalationStep,
    Unreached,
    ack_timeout_due,
    contact_methods,
    first_step,
    next_step,
    plan,
    resolve_level,
    round_period,
    step_due,
)
from incident_manager.domain.paging.model import (
    EmailChannel,
    EscalationPolicy,
    Layer,
    Level,
    Override,
    PagingConfig,
    Route,
    Schedule,
    SmtpServer,
    Target,
    TargetKind,
    User,
    WebhookChannel,
)

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday; bob's turn on "primary"
MIN = timedelta(minutes=1)
MAIL = EmailChannel(
    id="mail", smtp=SmtpServer(host="127.0.0.1", port=2525, from_address="incidents@example.com")
)
HOOK = WebhookChannel(id="ops-hook", url="http://127.0.0.1:8099/hook", secret_env="OPS_HOOK_SECRET")


HOOK_TARGET = Target(TargetKind.CHANNEL, "ops-hook")
BOB = User(id="bob", email="bob@example.com")


def levels(*afters: int) -> tuple[Level, ...]:
    return tuple(Level(after=minutes * MIN, targets=(HOOK_TARGET,)) for minutes in afters)


CRITICAL = EscalationPolicy(
    id="critical",
    ack_timeout=30 * MIN,
    repeat=2,
    levels=(
        Level(
            after=timedelta(0),
            targets=(
                Target(TargetKind.SCHEDULE, "primary"),
                Target(TargetKind.CHANNEL, "ops-hook"),
            ),
        ),
        Level(after=10 * MIN, targets=(Target(TargetKind.USER, "bob"),)),
    ),
)


def paging(
    *,
    bob: User = BOB,
    channels: tuple[EmailChannel | WebhookChannel, ...] = (HOOK, MAIL),
    policies: tuple[EscalationPolicy, ...] = (CRITICAL,),
) -> PagingConfig:
    return PagingConfig(
        users=(User(id="alice", name="Alice Ng", email="alice@example.com"), bob),
        channels=channels,
        schedules=(
            Schedule(
                id="primary",
                time_zone=ZoneInfo("Europe/Berlin"),
                layers=(
                    Layer(
                        users=("alice", "bob"),
                        rotation=timedelta(days=1),
                        handoff=datetime(2026, 3, 1, 9, 0),
                    ),
                ),
            ),
        ),
        escalation_policies=policies,
        routes=(Route(policies[0].id),),
    )


# Timing


def test_the_sample_policy_runs_its_levels_three_times_twenty_minutes_apart() -> None:
    assert round_period(CRITICAL) == 20 * MIN
    assert [(s.level, s.round, s.due - START) for s in plan(CRITICAL, START)] == [
        (0, 0, 0 * MIN),
        (1, 0, 10 * MIN),
        (0, 1, 20 * MIN),
        (1, 1, 30 * MIN),
        (0, 2, 40 * MIN),
        (1, 2, 50 * MIN),
    ]


def test_the_next_round_starts_repeat_after_after_the_last_level_of_the_round_before() -> None:
    late_start = EscalationPolicy(id="p", levels=levels(5, 15, 15), repeat=1, repeat_after=7 * MIN)
    steps = plan(late_start, START)
    assert [s.due - START for s in steps] == [
        5 * MIN,
        15 * MIN,
        15 * MIN,
        22 * MIN,
        32 * MIN,
        32 * MIN,
    ]
    last_of_round_0 = steps[2]
    first_of_round_1 = steps[3]
    assert first_of_round_1.due - last_of_round_0.due == late_start.repeat_after


def test_without_repeat_the_levels_run_once() -> None:
    once = EscalationPolicy(id="p", levels=levels(0, 10))
    assert plan(once, START) == (
        EscalationStep(0, 0, START),
        EscalationStep(1, 0, START + 10 * MIN),
    )
    assert next_step(once, START, 1, 0) is None


def test_the_step_after_a_rounds_last_level_is_the_first_level_of_the_next_round() -> None:
    assert first_step(CRITICAL, START) == EscalationStep(0, 0, START)
    assert next_step(CRITICAL, START, 0, 0) == EscalationStep(1, 0, START + 10 * MIN)
    assert next_step(CRITICAL, START, 1, 0) == EscalationStep(0, 1, START + 20 * MIN)
    assert next_step(CRITICAL, START, 1, 2) is None


def test_a_step_the_policy_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="no level 2"):
        step_due(CRITICAL, START, 2, 0)
    with pytest.raises(ValueError, match="no round 3"):
        next_step(CRITICAL, START, 0, 3)


def test_a_restart_measures_every_level_from_the_new_start() -> None:
    retriggered = START + timedelta(hours=3)
    assert plan(CRITICAL, retriggered)[1].due == retriggered + 10 * MIN


def test_an_acknowledgement_times_out_after_ack_timeout_and_never_without_one() -> None:
    acked = START + 5 * MIN
    assert ack_timeout_due(CRITICAL, acked) == acked + 30 * MIN
    assert ack_timeout_due(EscalationPolicy(id="p", levels=levels(0)), acked) is None


# Deliveries


def test_a_schedule_target_pages_whoever_is_on_call_then_by_email() -> None:
    config = paging()
    resolved = resolve_level(config, CRITICAL.levels[0], START)
    schedule = Target(TargetKind.SCHEDULE, "primary")
    hook = Target(TargetKind.CHANNEL, "ops-hook")
    assert resolved.deliveries == (
        Delivery("mail", schedule, user_id="bob", address="bob@example.com"),
        Delivery("ops-hook", hook),
    )
    assert [(o.user_id, o.source) for o in resolved.on_call] == [("bob", "layers[0]")]
    assert resolved.unreached == ()
    tuesday = resolve_level(config, CRITICAL.levels[0], START + timedelta(days=1))
    assert tuesday.deliveries[0].user_id == "alice"


def test_an_override_decides_who_a_schedule_target_pages() -> None:
    cover = Override(
        id="ovr-1",
        schedule_id="primary",
        user_id="alice",
        start=START - timedelta(hours=1),
        end=START + timedelta(hours=1),
        created_by="bob",
        reason="dentist",
    )
    resolved = resolve_level(paging(), CRITICAL.levels[0], START, [cover])
    assert resolved.deliveries[0].address == "alice@example.com"
    assert resolved.on_call[0].override_id == "ovr-1"


def test_a_schedule_with_nobody_on_call_is_reported_unreached() -> None:
    before_first_turn = datetime(2026, 2, 1, tzinfo=UTC)
    resolved = resolve_level(paging(), CRITICAL.levels[0], before_first_turn)
    assert [d.channel_id for d in resolved.deliveries] == ["ops-hook"]
    assert resolved.unreached == (
        Unreached(Target(TargetKind.SCHEDULE, "primary"), "nobody is on call for primary"),
    )


def test_an_override_naming_a_user_no_longer_configured_is_reported_unreached() -> None:
    gone = Override(
        id="ovr-2",
        schedule_id="primary",
        user_id="carol",
        start=START,
        end=START + timedelta(hours=1),
        created_by="bob",
    )
    resolved = resolve_level(paging(), CRITICAL.levels[0], START, [gone])
    assert "carol is on call for primary by override ovr-2" in resolved.unreached[0].reason


def test_a_user_reached_twice_in_one_level_gets_each_message_once() -> None:
    both = Level(
        after=timedelta(0),
        targets=(Target(TargetKind.SCHEDULE, "primary"), Target(TargetKind.USER, "bob")),
    )
    resolved = resolve_level(paging(), both, START)
    assert [(d.channel_id, d.user_id, d.target.kind) for d in resolved.deliveries] == [
        ("mail", "bob", TargetKind.SCHEDULE)
    ]


def test_a_users_email_goes_through_the_first_email_channel_then_their_own_channels() -> None:
    pager = WebhookChannel(id="bob-pager", url="https://pager.example.com/bob")
    config = paging(
        bob=User(id="bob", email="bob@example.com", channels=("bob-pager",)),
        channels=(HOOK, MAIL, pager),
    )
    user = config.user("bob")
    assert user is not None
    target = Target(TargetKind.USER, "bob")
    assert contact_methods(config, user, target) == (
        Delivery("mail", target, user_id="bob", address="bob@example.com"),
        Delivery("bob-pager", target, user_id="bob"),
    )


def test_a_user_naming_an_email_channel_gets_their_email_through_that_one_only() -> None:
    other = EmailChannel(
        id="eu-mail", smtp=SmtpServer(host="smtp.eu.example.com", from_address="eu@example.com")
    )
    config = paging(
        bob=User(id="bob", email="bob@example.com", channels=("eu-mail",)),
        channels=(HOOK, MAIL, other),
    )
    user = config.user("bob")
    assert user is not None
    found = contact_methods(config, user, Target(TargetKind.USER, "bob"))
    assert [(d.channel_id, d.address) for d in found] == [("eu-mail", "bob@example.com")]


def test_a_user_with_only_a_webhook_channel_is_paged_through_it() -> None:
    config = paging(bob=User(id="bob", channels=("ops-hook",)))
    bob = resolve_level(config, Level(timedelta(0), (Target(TargetKind.USER, "bob"),)), START)
    assert bob.deliveries == (Delivery("ops-hook", Target(TargetKind.USER, "bob"), user_id="bob"),)


def test_an_email_channel_as_a_target_writes_to_each_of_its_addresses() -> None:
    team = EmailChannel(
        id="team-mail",
        smtp=MAIL.smtp,
        to=("oncall@example.com", "lead@example.com"),
    )
    notify_team = EscalationPolicy(
        id="team", levels=(Level(timedelta(0), (Target(TargetKind.CHANNEL, "team-mail"),)),)
    )
    config = paging(channels=(HOOK, MAIL, team), policies=(notify_team,))
    resolved = resolve_level(config, notify_team.levels[0], START)
    assert [(d.channel_id, d.user_id, d.address) for d in resolved.deliveries] == [
        ("team-mail", None, "oncall@example.com"),
        ("team-mail", None, "lead@example.com"),
    ]
