"""Who is on call: rotations, restrictions, layers, overrides, and daylight saving.

The daylight-saving changes of 2026: Europe/Berlin springs forward on 29 March
(02:00 CET -> 03:00 CEST, 01:00 UTC) and falls back on 25 October (03:00 CEST
-> 02:00 CET, 01:00 UTC); America/New_York springs forward on 8 March
(02:00 EST -> 03:00 EDT, 07:00 UTC) and falls back on 1 November (02:00 EDT ->
01:00 EST, 06:00 UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incident_manager.domain.errors import FieldViolation, ValidationError
from incident_manager.domain.paging.model import (
    EscalationPolicy,
    Layer,
    Level,
    Override,
    PagingConfig,
    Restriction,
    Route,
    Schedule,
    Target,
    TargetKind,
    User,
    WebhookChannel,
    Weekday,
)
from incident_manager.domain.paging.schedules import (
    MICROSECOND,
    OnCall,
    local_to_utc,
    on_call,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
DAY = timedelta(days=1)
WEEKDAYS = frozenset({Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI})


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc, arg-type]


def at_local(zone: ZoneInfo, *args: int) -> datetime:
    """An instant given by its (unambiguous) wall-clock time in `zone`."""
    return datetime(*args, tzinfo=zone).astimezone(UTC)  # type: ignore[misc, arg-type]


def layer(
    users: tuple[str, ...] = ("alice", "bob"),
    rotation: timedelta = DAY,
    handoff: datetime = datetime(2026, 3, 1, 9, 0),  # a Sunday
    restrictions: tuple[Restriction, ...] = (),
) -> Layer:
    return Layer(users=users, rotation=rotation, handoff=handoff, restrictions=restrictions)


def schedule(*layers: Layer, zone: ZoneInfo = BERLIN) -> Schedule:
    return Schedule(id="primary", time_zone=zone, layers=layers or (layer(),))


def override(
    user: str,
    start: datetime,
    end: datetime,
    id: str = "ovr-1",
    schedule_id: str = "primary",
) -> Override:
    return Override(
        id=id, schedule_id=schedule_id, user_id=user, start=start, end=end, created_by="carol"
    )


# Local times to instants


def test_a_local_time_that_exists_once_is_that_instant() -> None:
    assert local_to_utc(datetime(2026, 3, 2, 9, 0), BERLIN) == utc(2026, 3, 2, 8, 0)
    assert local_to_utc(datetime(2026, 7, 1, 9, 0), BERLIN) == utc(2026, 7, 1, 7, 0)


@pytest.mark.parametrize(
    ("zone", "skipped", "jump"),
    [
        (BERLIN, datetime(2026, 3, 29, 2, 30), utc(2026, 3, 29, 1, 0)),
        (BERLIN, datetime(2026, 3, 29, 2, 0), utc(2026, 3, 29, 1, 0)),
        (NEW_YORK, datetime(2026, 3, 8, 2, 30), utc(2026, 3, 8, 7, 0)),
    ],
)
def test_a_local_time_the_clocks_skip_is_the_moment_they_jump(
    zone: ZoneInfo, skipped: datetime, jump: datetime
) -> None:
    assert local_to_utc(skipped, zone) == jump


@pytest.mark.parametrize(
    ("zone", "repeated", "first"),
    [
        (BERLIN, datetime(2026, 10, 25, 2, 30), utc(2026, 10, 25, 0, 30)),
        (NEW_YORK, datetime(2026, 11, 1, 1, 30), utc(2026, 11, 1, 5, 30)),
    ],
)
def test_a_local_time_that_happens_twice_is_its_first_occurrence(
    zone: ZoneInfo, repeated: datetime, first: datetime
) -> None:
    assert local_to_utc(repeated, zone) == first


# Rotations


def test_a_daily_rotation_hands_over_at_the_handoff_time_every_day() -> None:
    first = on_call(schedule(), at_local(BERLIN, 2026, 3, 1, 10, 0))
    assert first == OnCall(
        schedule_id="primary",
        user_id="alice",
        since=at_local(BERLIN, 2026, 3, 1, 9, 0),
        until=at_local(BERLIN, 2026, 3, 2, 9, 0),
        layer=0,
    )
    assert on_call(schedule(), at_local(BERLIN, 2026, 3, 2, 8, 59)).user_id == "alice"
    assert on_call(schedule(), at_local(BERLIN, 2026, 3, 2, 9, 0)).user_id == "bob"
    assert on_call(schedule(), at_local(BERLIN, 2026, 3, 3, 12, 0)).user_id == "alice"
    assert on_call(schedule(), at_local(BERLIN, 2026, 3, 1, 10, 0)).source == "layers[0]"


def test_a_weekly_rotation_gives_each_user_seven_days() -> None:
    weekly = schedule(layer(rotation=7 * DAY))
    turn = on_call(weekly, at_local(BERLIN, 2026, 3, 5, 12, 0))
    assert turn.user_id == "alice"
    assert turn.until == at_local(BERLIN, 2026, 3, 8, 9, 0)
    assert on_call(weekly, at_local(BERLIN, 2026, 3, 12, 12, 0)).user_id == "bob"
    assert on_call(weekly, at_local(BERLIN, 2026, 3, 15, 9, 0)).user_id == "alice"


def test_a_12h_rotation_hands_over_twice_a_day() -> None:
    halves = schedule(layer(rotation=timedelta(hours=12)))
    evening = on_call(halves, at_local(BERLIN, 2026, 3, 1, 22, 0))
    assert evening.user_id == "bob"
    assert evening.since == at_local(BERLIN, 2026, 3, 1, 21, 0)
    assert evening.until == at_local(BERLIN, 2026, 3, 2, 9, 0)


def test_before_its_first_handoff_a_layer_covers_nobody() -> None:
    early = on_call(schedule(), at_local(BERLIN, 2026, 2, 20, 12, 0))
    assert early.user_id is None
    assert early.source == "nobody"
    assert early.since is None
    assert early.until == at_local(BERLIN, 2026, 3, 1, 9, 0)


def test_a_layer_of_one_user_never_changes_after_it_starts() -> None:
    alone = on_call(schedule(layer(users=("alice",))), at_local(BERLIN, 2026, 6, 1, 12, 0))
    assert alone.user_id == "alice"
    assert alone.since == at_local(BERLIN, 2026, 3, 1, 9, 0)
    assert alone.until is None


def test_consecutive_turns_of_the_same_user_are_one_stretch() -> None:
    twice = schedule(layer(users=("alice", "alice", "bob")))
    turn = on_call(twice, at_local(BERLIN, 2026, 3, 2, 12, 0))
    assert turn.user_id == "alice"
    assert turn.since == at_local(BERLIN, 2026, 3, 1, 9, 0)
    assert turn.until == at_local(BERLIN, 2026, 3, 3, 9, 0)


def test_a_naive_moment_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        on_call(schedule(), datetime(2026, 3, 2, 12, 0))


# Restrictions

OFFICE_HOURS = Restriction(start=time(9, 0), end=time(18, 0), days=WEEKDAYS)


def test_a_restricted_layer_covers_only_its_days_and_hours() -> None:
    office = schedule(layer(restrictions=(OFFICE_HOURS,)))
    assert on_call(office, at_local(BERLIN, 2026, 3, 2, 8, 59)).user_id is None
    monday = on_call(office, at_local(BERLIN, 2026, 3, 2, 9, 0))
    assert monday.user_id == "bob"
    assert monday.since == at_local(BERLIN, 2026, 3, 2, 9, 0)
    assert monday.until == at_local(BERLIN, 2026, 3, 2, 18, 0)
    friday_night = on_call(office, at_local(BERLIN, 2026, 3, 6, 20, 0))
    assert friday_night.user_id is None
    assert friday_night.since == at_local(BERLIN, 2026, 3, 6, 18, 0)
    assert friday_night.until == at_local(BERLIN, 2026, 3, 9, 9, 0)


def test_an_overnight_restriction_runs_into_the_next_day() -> None:
    nights = Restriction(start=time(22, 0), end=time(6, 0), days=frozenset({Weekday.FRI}))
    weekend = schedule(layer(users=("alice",), restrictions=(nights,)))
    saturday_dawn = on_call(weekend, at_local(BERLIN, 2026, 3, 7, 5, 0))
    assert saturday_dawn.user_id == "alice"
    assert saturday_dawn.since == at_local(BERLIN, 2026, 3, 6, 22, 0)
    assert saturday_dawn.until == at_local(BERLIN, 2026, 3, 7, 6, 0)
    assert on_call(weekend, at_local(BERLIN, 2026, 3, 7, 22, 30)).user_id is None


def test_restrictions_that_touch_make_one_stretch() -> None:
    day = Restriction(start=time(8, 0), end=time(20, 0))
    night = Restriction(start=time(20, 0), end=time(8, 0))
    around = schedule(layer(users=("alice",), restrictions=(day, night)))
    assert on_call(around, at_local(BERLIN, 2026, 3, 10, 19, 0)).until is None


def test_restriction_days_are_the_schedules_local_days() -> None:
    mondays = Restriction(start=time(20, 0), end=time(0, 0), days=frozenset({Weekday.MON}))
    late = schedule(layer(users=("alice",), restrictions=(mondays,)), zone=NEW_YORK)
    # Monday 23:00 in New York is already Tuesday in UTC.
    assert on_call(late, utc(2026, 3, 17, 3, 0)).user_id == "alice"
    assert on_call(late, utc(2026, 3, 17, 4, 0)).user_id is None


# Layers


def test_a_later_layer_wins_where_layers_overlap() -> None:
    weekends = Restriction(
        start=time(0, 0), end=time(0, 0), days=frozenset({Weekday.SAT, Weekday.SUN})
    )
    two = schedule(layer(), layer(users=("carol",), restrictions=(weekends,)))
    saturday = on_call(two, at_local(BERLIN, 2026, 3, 7, 12, 0))
    assert (saturday.user_id, saturday.layer) == ("carol", 1)
    assert saturday.since == at_local(BERLIN, 2026, 3, 7, 0, 0)
    assert saturday.until == at_local(BERLIN, 2026, 3, 9, 0, 0)
    monday = on_call(two, at_local(BERLIN, 2026, 3, 9, 0, 0))
    assert (monday.user_id, monday.layer) == ("bob", 0)
    assert monday.since == at_local(BERLIN, 2026, 3, 9, 0, 0)
    assert monday.until == at_local(BERLIN, 2026, 3, 9, 9, 0)


def test_an_earlier_layer_answers_where_the_later_one_does_not_cover() -> None:
    two = schedule(layer(), layer(users=("carol",), restrictions=(OFFICE_HOURS,)))
    assert on_call(two, at_local(BERLIN, 2026, 3, 3, 12, 0)).user_id == "carol"
    night = on_call(two, at_local(BERLIN, 2026, 3, 3, 20, 0))
    assert (night.user_id, night.layer) == ("alice", 0)
    assert night.since == at_local(BERLIN, 2026, 3, 3, 18, 0)
    assert night.until == at_local(BERLIN, 2026, 3, 4, 9, 0)


def test_the_same_user_from_another_layer_is_another_answer() -> None:
    two = schedule(layer(users=("alice",)), layer(users=("alice",), restrictions=(OFFICE_HOURS,)))
    evening = on_call(two, at_local(BERLIN, 2026, 3, 3, 20, 0))
    assert (evening.user_id, evening.layer) == ("alice", 0)
    assert evening.since == at_local(BERLIN, 2026, 3, 3, 18, 0)


# Overrides


def test_an_override_wins_over_every_layer_for_its_span() -> None:
    tonight = override(
        "carol", at_local(BERLIN, 2026, 3, 2, 20, 0), at_local(BERLIN, 2026, 3, 3, 8, 0)
    )
    covered = on_call(schedule(), at_local(BERLIN, 2026, 3, 2, 23, 0), [tonight])
    assert covered == OnCall(
        schedule_id="primary",
        user_id="carol",
        since=tonight.start,
        until=tonight.end,
        override_id="ovr-1",
    )
    assert covered.source == "override ovr-1"
    after = on_call(schedule(), tonight.end, [tonight])
    assert (after.user_id, after.layer, after.since) == ("bob", 0, tonight.end)
    before = on_call(schedule(), at_local(BERLIN, 2026, 3, 2, 19, 0), [tonight])
    assert (before.user_id, before.until) == ("bob", tonight.start)


def test_the_override_that_started_last_wins_where_overrides_overlap() -> None:
    week = override("carol", utc(2026, 3, 2), utc(2026, 3, 9), id="week")
    evening = override("dave", utc(2026, 3, 4, 18), utc(2026, 3, 4, 22), id="evening")
    during = on_call(schedule(), utc(2026, 3, 4, 19), [evening, week])
    assert (during.user_id, during.override_id) == ("dave", "evening")
    assert during.until == utc(2026, 3, 4, 22)
    back = on_call(schedule(), utc(2026, 3, 4, 22), [evening, week])
    assert (back.user_id, back.override_id, back.since) == ("carol", "week", utc(2026, 3, 4, 22))
    assert back.until == utc(2026, 3, 9)


def test_overrides_of_other_schedules_do_not_count() -> None:
    elsewhere = override("carol", utc(2026, 3, 2), utc(2026, 3, 3), schedule_id="secondary")
    assert on_call(schedule(), utc(2026, 3, 2, 12), [elsewhere]).user_id == "bob"


def test_an_override_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(ValidationError, match="end: must be after start"):
        override("carol", utc(2026, 3, 3), utc(2026, 3, 2))
    with pytest.raises(ValidationError, match="time zone"):
        override("carol", datetime(2026, 3, 2), datetime(2026, 3, 3))


def test_a_configuration_says_why_it_cannot_take_an_override() -> None:
    config = PagingConfig(
        users=(User(id="alice", channels=("hook",)),),
        channels=(WebhookChannel(id="hook", url="https://hooks.example.com/x"),),
        schedules=(schedule(layer(users=("alice",))),),
        escalation_policies=(
            EscalationPolicy(
                id="default",
                levels=(Level(timedelta(0), (Target(TargetKind.SCHEDULE, "primary"),)),),
            ),
        ),
        routes=(Route("default"),),
    )
    assert config.override_problems(override("alice", utc(2026, 3, 2), utc(2026, 3, 3))) == []
    wrong = override("bob", utc(2026, 3, 2), utc(2026, 3, 3), schedule_id="secondary")
    assert config.override_problems(wrong) == [
        FieldViolation("schedule_id", "no schedule 'secondary' is configured"),
        FieldViolation("user_id", "no user 'bob' is configured"),
    ]


# Daylight saving

SPRING_FORWARD = [
    pytest.param(BERLIN, (2026, 3, 28), (2026, 3, 29), id="Europe/Berlin"),
    pytest.param(NEW_YORK, (2026, 3, 7), (2026, 3, 8), id="America/New_York"),
]
FALL_BACK = [
    pytest.param(BERLIN, (2026, 10, 24), (2026, 10, 25), id="Europe/Berlin"),
    pytest.param(NEW_YORK, (2026, 10, 31), (2026, 11, 1), id="America/New_York"),
]


@pytest.mark.parametrize(("zone", "eve", "change"), SPRING_FORWARD)
def test_a_daily_0900_handoff_stays_at_0900_local_when_clocks_spring_forward(
    zone: ZoneInfo, eve: tuple[int, int, int], change: tuple[int, int, int]
) -> None:
    daily = schedule(layer(handoff=datetime(2026, 3, 1, 9, 0)), zone=zone)
    turn = on_call(daily, at_local(zone, *eve, 12, 0))
    assert turn.since == at_local(zone, *eve, 9, 0)
    assert turn.until == at_local(zone, *change, 9, 0)
    assert turn.until is not None and turn.until - turn.since == timedelta(hours=23)
    after = on_call(daily, turn.until)
    assert after.user_id != turn.user_id
    assert after.until == at_local(zone, *change, 9, 0) + timedelta(hours=24)


@pytest.mark.parametrize(("zone", "eve", "change"), FALL_BACK)
def test_a_daily_0900_handoff_stays_at_0900_local_when_clocks_fall_back(
    zone: ZoneInfo, eve: tuple[int, int, int], change: tuple[int, int, int]
) -> None:
    daily = schedule(layer(handoff=datetime(2026, 3, 1, 9, 0)), zone=zone)
    turn = on_call(daily, at_local(zone, *eve, 12, 0))
    assert turn.since == at_local(zone, *eve, 9, 0)
    assert turn.until == at_local(zone, *change, 9, 0)
    assert turn.until is not None and turn.until - turn.since == timedelta(hours=25)


@pytest.mark.parametrize(
    ("zone", "handoff", "jump"),
    [
        pytest.param(BERLIN, datetime(2026, 3, 28, 2, 30), utc(2026, 3, 29, 1, 0), id="Berlin"),
        pytest.param(NEW_YORK, datetime(2026, 3, 7, 2, 30), utc(2026, 3, 8, 7, 0), id="New_York"),
    ],
)
def test_a_0230_handoff_on_the_spring_forward_day_happens_when_the_clocks_jump(
    zone: ZoneInfo, handoff: datetime, jump: datetime
) -> None:
    daily = schedule(layer(handoff=handoff), zone=zone)
    first = on_call(daily, jump - MICROSECOND)
    assert (first.user_id, first.until) == ("alice", jump)
    second = on_call(daily, jump)
    assert second.user_id == "bob"
    # The next day is back at 02:30 local time.
    assert second.until == local_to_utc(handoff + 2 * DAY, zone)
    assert second.until.astimezone(zone).time() == time(2, 30)


@pytest.mark.parametrize(
    ("zone", "handoff", "first_occurrence"),
    [
        pytest.param(BERLIN, datetime(2026, 10, 24, 2, 30), utc(2026, 10, 25, 0, 30), id="Berlin"),
        pytest.param(NEW_YORK, datetime(2026, 10, 31, 1, 30), utc(2026, 11, 1, 5, 30), id="NY"),
    ],
)
def test_a_handoff_in_the_repeated_hour_happens_at_its_first_occurrence(
    zone: ZoneInfo, handoff: datetime, first_occurrence: datetime
) -> None:
    daily = schedule(layer(handoff=handoff), zone=zone)
    assert on_call(daily, first_occurrence - MICROSECOND).user_id == "alice"
    turn = on_call(daily, first_occurrence)
    assert (turn.user_id, turn.since) == ("bob", first_occurrence)
    # The second 02:30 (an hour later) is inside bob's turn, not a second hand-off.
    assert on_call(daily, first_occurrence + timedelta(hours=1)).user_id == "bob"
    assert turn.until == first_occurrence + timedelta(hours=25)


@pytest.mark.parametrize(
    ("zone", "before", "after"),
    [
        pytest.param(BERLIN, (2026, 3, 23), (2026, 3, 30), id="Berlin-March"),
        pytest.param(BERLIN, (2026, 10, 19), (2026, 10, 26), id="Berlin-October"),
        pytest.param(NEW_YORK, (2026, 3, 2), (2026, 3, 9), id="New_York-March"),
        pytest.param(NEW_YORK, (2026, 10, 26), (2026, 11, 2), id="New_York-November"),
    ],
)
def test_restricted_hours_follow_local_time_across_a_change(
    zone: ZoneInfo, before: tuple[int, int, int], after: tuple[int, int, int]
) -> None:
    office = schedule(layer(users=("alice",), restrictions=(OFFICE_HOURS,)), zone=zone)
    for monday in (before, after):
        opened = on_call(office, at_local(zone, *monday, 9, 0))
        assert opened.user_id == "alice"
        assert opened.since == at_local(zone, *monday, 9, 0)
        assert opened.until == at_local(zone, *monday, 18, 0)


def test_a_12h_rotation_keeps_its_local_handoff_times_across_a_change() -> None:
    halves = schedule(layer(rotation=timedelta(hours=12)), zone=BERLIN)
    night = on_call(halves, at_local(BERLIN, 2026, 3, 28, 23, 0))
    assert night.since == at_local(BERLIN, 2026, 3, 28, 21, 0)
    assert night.until == at_local(BERLIN, 2026, 3, 29, 9, 0)
    assert night.until - night.since == timedelta(hours=11)


def test_a_restriction_inside_the_skipped_hour_covers_nothing_that_day() -> None:
    skipped = Restriction(start=time(2, 0), end=time(3, 0), days=frozenset({Weekday.SUN}))
    odd = schedule(layer(users=("alice",), restrictions=(skipped,)))
    gap_day = on_call(odd, utc(2026, 3, 29, 0, 30))
    assert gap_day.user_id is None
    assert gap_day.until == at_local(BERLIN, 2026, 4, 5, 2, 0)


# Properties

ZONES = st.sampled_from(
    [BERLIN, NEW_YORK, ZoneInfo("UTC"), ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Asia/Kolkata")]
)
MOMENTS = st.datetimes(
    min_value=datetime(2025, 12, 1), max_value=datetime(2027, 2, 1), timezones=st.just(UTC)
)
LOCAL_MINUTES = st.datetimes(min_value=datetime(2025, 10, 1), max_value=datetime(2026, 12, 1)).map(
    lambda d: d.replace(second=0, microsecond=0)
)
ROTATIONS = st.sampled_from(
    [timedelta(hours=1), timedelta(minutes=90), timedelta(hours=12), DAY, 7 * DAY, 3 * DAY]
)
TIMES = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
RESTRICTIONS = st.builds(
    Restriction,
    start=TIMES,
    end=TIMES,
    days=st.frozensets(st.sampled_from(list(Weekday)), min_size=1),
)
LAYERS = st.builds(
    Layer,
    users=st.lists(st.sampled_from(["alice", "bob", "carol"]), min_size=1, max_size=4).map(tuple),
    rotation=ROTATIONS,
    handoff=LOCAL_MINUTES,
    restrictions=st.lists(RESTRICTIONS, max_size=2).map(tuple),
)
SCHEDULES = st.builds(
    Schedule,
    id=st.just("primary"),
    time_zone=ZONES,
    layers=st.lists(LAYERS, min_size=1, max_size=3).map(tuple),
)


@st.composite
def overrides(draw: st.DrawFn) -> list[Override]:
    found = []
    for i in range(draw(st.integers(0, 3))):
        start = draw(MOMENTS)
        length = draw(st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=3)))
        user = draw(st.sampled_from(["alice", "dave"]))
        found.append(override(user, start, start + length, id=f"ovr-{i}"))
    return found


def answer(found: OnCall) -> tuple[str | None, int | None, str | None]:
    return (found.user_id, found.layer, found.override_id)


@settings(max_examples=150, deadline=None)
@given(SCHEDULES, MOMENTS, overrides(), st.floats(0, 1))
def test_the_answer_holds_from_since_until_until_and_changes_at_both_ends(
    plan: Schedule, at: datetime, stored: list[Override], fraction: float
) -> None:
    found = on_call(plan, at, stored)
    if found.until is not None:
        assert found.until > at
        assert on_call(plan, found.until - MICROSECOND, stored) == found
        assert answer(on_call(plan, found.until, stored)) != answer(found)
        inside = at + (found.until - at) * fraction
        assert answer(on_call(plan, min(inside, found.until - MICROSECOND), stored)) == answer(
            found
        )
    if found.since is not None:
        assert found.since <= at
        assert on_call(plan, found.since, stored) == found
        assert answer(on_call(plan, found.since - MICROSECOND, stored)) != answer(found)


@settings(max_examples=60, deadline=None)
@given(SCHEDULES, MOMENTS, overrides())
def test_walking_from_until_to_until_finds_every_change_in_order(
    plan: Schedule, at: datetime, stored: list[Override]
) -> None:
    found = on_call(plan, at, stored)
    for _ in range(20):
        if found.until is None:
            break
        following = on_call(plan, found.until, stored)
        assert following.since == found.until
        assert answer(following) != answer(found)
        found = following
