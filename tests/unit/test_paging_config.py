"""The paging configuration file: the sample loads, and every mistake names its line and key path.

Each case breaks one thing in a small valid file and checks the message's
line, key path and wording; `check` is run as a real process at the end.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from pathlib import Path

import pytest

from incident_manager.domain.model import IncidentType, Severity
from incident_manager.domain.paging.model import (
    EmailChannel,
    InvalidPagingConfig,
    PagingConfig,
    Restriction,
    Route,
    Target,
    TargetKind,
    User,
    WebhookChannel,
    Weekday,
)
from incident_manager.paging import main
from incident_manager.paging.file import (
    FILE_KEYS,
    MAX_NODES,
    PagingConfigError,
    config_summary,
    load_paging_config,
    parse_duration,
    read_paging_config,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "paging.yaml"

# Line numbers in the comments: the cases below name them.
BASE = """\
users:
  - id: alice
    email: alice@example.com
channels:
  - id: mail
    type: email
    smtp: {host: 127.0.0.1, from: incidents@example.com}
schedules:
  - id: primary
    time_zone: Europe/Berlin
    layers:
      - users: [alice]
        rotation: daily
        handoff: "2026-03-01T09:00"
escalation_policies:
  - id: default
    levels:
      - after: 0s
        notify: [{schedule: primary}]
routes:
  - policy: default
"""


def mistakes(text: str) -> list[str]:
    """The messages for a file that must not load, without the file name."""
    with pytest.raises(PagingConfigError) as raised:
        load_paging_config(text, "paging.yaml")
    assert all(m.startswith("paging.yaml:") for m in raised.value.messages)
    return [m.removeprefix("paging.yaml:") for m in raised.value.messages]


def broken(old: str, new: str, text: str = BASE) -> list[str]:
    assert old in text, old
    return mistakes(text.replace(old, new, 1))


def test_the_base_file_of_these_cases_loads() -> None:
    assert config_summary(load_paging_config(BASE, "paging.yaml")) == (
        "1 user, 1 channel, 1 schedule, 1 policy, 1 route"
    )


# The sample from the issue


def test_the_sample_configuration_loads_unchanged() -> None:
    config = load_paging_config(SAMPLE.read_text(encoding="utf-8"), str(SAMPLE))
    assert config_summary(config) == "2 users, 2 channels, 1 schedule, 2 policies, 3 routes"
    alice = config.user("alice")
    assert alice is not None and alice.time_zone is not None
    assert (alice.display_name, alice.email, alice.time_zone.key) == (
        "Alice Ng",
        "alice@example.com",
        "Europe/Berlin",
    )
    bob = config.user("bob")
    assert bob == User(id="bob", email="bob@example.com")
    assert bob.display_name == "bob"


def test_the_sample_channels_carry_their_settings() -> None:
    config = load_paging_config(SAMPLE.read_text(encoding="utf-8"), str(SAMPLE))
    hook = config.channel("ops-hook")
    assert isinstance(hook, WebhookChannel)
    assert (hook.url, hook.secret_env, hook.timeout) == (
        "http://127.0.0.1:8099/hook",
        "OPS_HOOK_SECRET",
        timedelta(seconds=10),
    )
    mail = config.channel("mail")
    assert isinstance(mail, EmailChannel)
    assert (mail.smtp.host, mail.smtp.port, mail.smtp.from_address, mail.smtp.starttls) == (
        "127.0.0.1",
        2525,
        "incidents@example.com",
        False,
    )
    assert config.email_channel is mail


def test_the_sample_schedule_policies_and_routes_are_read_as_written() -> None:
    config = load_paging_config(SAMPLE.read_text(encoding="utf-8"), str(SAMPLE))
    primary = config.schedule("primary")
    assert primary is not None and primary.time_zone.key == "Europe/Berlin"
    (layer,) = primary.layers
    assert layer.users == ("alice", "bob")
    assert (layer.rotation, layer.handoff) == (timedelta(days=1), datetime(2026, 3, 1, 9, 0))
    assert layer.restrictions == (
        Restriction(
            start=time(9, 0),
            end=time(18, 0),
            days=frozenset({Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI}),
        ),
    )
    critical = config.policy("critical")
    assert critical is not None
    assert (critical.ack_timeout, critical.repeat, critical.repeat_after) == (
        timedelta(minutes=30),
        2,
        timedelta(minutes=10),
    )
    assert [(lv.after, lv.targets) for lv in critical.levels] == [
        (
            timedelta(0),
            (Target(TargetKind.SCHEDULE, "primary"), Target(TargetKind.CHANNEL, "ops-hook")),
        ),
        (timedelta(minutes=10), (Target(TargetKind.USER, "bob"),)),
    ]
    default = config.policy("default")
    assert default is not None and (default.ack_timeout, default.repeat) == (None, 0)
    first, second, fallback = config.routes
    assert first.policy == "critical" and first.match is not None
    assert first.match.severities == {Severity.P0, Severity.P1}
    assert second.match is not None
    assert (second.match.sources, second.match.types) == (
        frozenset({"llm-shield"}),
        frozenset({IncidentType.SECURITY}),
    )
    assert fallback == Route("default") and fallback.is_fallback


def test_the_sample_has_nothing_to_warn_about() -> None:
    loaded = read_paging_config(SAMPLE.read_text(encoding="utf-8"), "paging.yaml")
    assert loaded.warnings == ()


# Mistakes: each kind gives its line and key path


def test_a_yaml_syntax_error_names_its_line() -> None:
    assert broken("  - policy: default\n", "  - policy: [default\n") == [
        "22: not valid YAML: while parsing a flow sequence; expected ',' or ']', but got "
        "'<stream end>'"
    ]
    (message,) = broken("    email: alice@example.com", "    email: alice@example.com: x")
    assert message.startswith("3: not valid YAML: mapping values are not allowed here")


def test_characters_yaml_refuses_and_absurd_nesting_are_reported_with_a_line() -> None:
    assert broken("  - id: alice", "  - id: al\x00ice") == [
        "2: not valid YAML: the character #x0000 is not allowed in YAML text"
    ]
    assert mistakes("users: " + "[" * 100_000 + "]" * 100_000) == [
        "1: not valid YAML for a paging file: nested too deeply"
    ]


def test_an_empty_file_or_a_list_at_the_top_is_refused() -> None:
    assert mistakes("") == ["1: the file is empty; expected escalation_policies and routes"]
    assert mistakes("# nothing\n") == [
        "1: the file is empty; expected escalation_policies and routes"
    ]
    assert mistakes("- a\n") == ["1: expected a mapping (key: value), got a list"]


def test_an_unknown_key_is_named_with_the_nearest_known_one() -> None:
    assert broken("    time_zone: Europe/Berlin", "    time_zon: Europe/Berlin") == [
        "10: schedules[0].time_zon: unknown key 'time_zon' (did you mean 'time_zone'?); "
        "expected id, time_zone or layers"
    ]
    assert broken("routes:", "route:") == [
        "20: route: unknown key 'route' (did you mean 'routes'?); expected users, channels, "
        "schedules, escalation_policies or routes"
    ]


def test_an_unknown_key_without_a_near_one_lists_the_keys_expected() -> None:
    assert broken("        rotation: daily", "        rotation: daily\n        colour: red") == [
        "14: schedules[0].layers[0].colour: unknown key 'colour'; expected users, rotation, "
        "handoff or restrict"
    ]


def test_a_value_of_the_wrong_type_says_what_was_expected() -> None:
    assert broken("      - users: [alice]", "      - users: alice") == [
        "12: schedules[0].layers[0].users: expected a list (e.g. [alice, bob]), got the "
        "string 'alice'"
    ]
    assert broken("  - id: alice", "  - id: alice\n    name: 42") == [
        "3: users[0].name: expected a string, got the number 42 (quote it)"
    ]
    assert broken("    email: alice@example.com", "    email:") == [
        "3: users[0].email: expected an address, got nothing (null)"
    ]
    assert broken("users:\n  - id: alice\n    email: alice@example.com\n", "users: {}\n") == [
        "1: users: expected a list (e.g. [{id: alice}]), got a mapping"
    ]


def test_a_missing_required_key_is_named_at_the_line_of_its_mapping() -> None:
    assert broken("        rotation: daily\n", "") == [
        "12: schedules[0].layers[0].rotation: missing required key 'rotation'; expected "
        "daily, weekly or a duration such as 30s, 10m or 1h30m"
    ]
    assert broken("routes:\n  - policy: default\n", "") == [
        "1: routes: missing required key 'routes'; expected a list of routes, e.g. "
        "[{policy: default}]"
    ]


def test_a_misspelt_required_key_gives_one_message_not_two() -> None:
    assert broken("        rotation: daily", "        rotaton: daily") == [
        "13: schedules[0].layers[0].rotaton: unknown key 'rotaton' (did you mean "
        "'rotation'?); expected users, rotation, handoff or restrict"
    ]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("10", "10 has no unit; expected a duration such as 30s, 10m or 1h30m (0s for none)"),
        (
            "5x",
            "'5x' is not a duration such as 30s, 10m or 1h30m; d, h, m and s may be "
            "combined in that order",
        ),
        (
            "30m1h",
            "'30m1h' is not a duration such as 30s, 10m or 1h30m; d, h, m and s may be "
            "combined in that order",
        ),
        (
            "-5m",
            "'-5m' is not a duration such as 30s, 10m or 1h30m; d, h, m and s may be "
            "combined in that order",
        ),
        ("400d", "'400d' is longer than 365d; d, h, m and s may be combined in that order"),
        ("", "expected a duration such as 30s, 10m or 1h30m, got nothing (null)"),
    ],
)
def test_a_bad_duration_is_refused(written: str, message: str) -> None:
    assert broken("      - after: 0s", f"      - after: {written}") == [
        f"18: escalation_policies[0].levels[0].after: {message}"
    ]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0s", timedelta(0)),
        ("10s", timedelta(seconds=10)),
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d12h", timedelta(days=2, hours=12)),
    ],
)
def test_durations_combine_days_hours_minutes_and_seconds(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value


def test_a_duration_out_of_range_for_its_key_is_refused() -> None:
    assert broken("  - id: default", "  - id: default\n    ack_timeout: 0s") == [
        "17: escalation_policies[0].ack_timeout: must be longer than 0s; leave it out to never "
        "re-page"
    ]
    assert broken("  - id: default", "  - id: default\n    repeat_after: 0s") == [
        "17: escalation_policies[0].repeat_after: must be longer than 0s"
    ]
    assert broken("        rotation: daily", "        rotation: 30m") == [
        "13: schedules[0].layers[0].rotation: must be at least 1h (or daily, weekly)"
    ]


def test_levels_out_of_order_are_refused() -> None:
    levels = "      - after: 0s\n        notify: [{schedule: primary}]\n"
    assert broken(
        levels, "      - after: 10m\n        notify: [{schedule: primary}]\n" + levels
    ) == [
        "20: escalation_policies[0].levels[1].after: is before the previous level's after; "
        "levels are listed in the order they fire"
    ]


def test_repeat_must_be_a_small_whole_number() -> None:
    assert broken("  - id: default", "  - id: default\n    repeat: -1") == [
        "17: escalation_policies[0].repeat: must be 0 to 100"
    ]
    assert broken("  - id: default", "  - id: default\n    repeat: yes") == [
        "17: escalation_policies[0].repeat: expected a whole number such as 2, got the boolean yes"
    ]


def test_an_unknown_time_zone_is_named_with_the_nearest_known_one() -> None:
    assert broken("Europe/Berlin", "Europe/Berln") == [
        "10: schedules[0].time_zone: unknown time zone 'Europe/Berln' (did you mean "
        "'Europe/Berlin'?); expected an IANA time zone such as Europe/Berlin or UTC"
    ]
    assert broken("  - id: alice", "  - id: alice\n    time_zone: Mars/Olympus") == [
        "3: users[0].time_zone: unknown time zone 'Mars/Olympus'; expected an IANA time zone "
        "such as Europe/Berlin or UTC"
    ]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (
            '"2026-02-30T09:00"',
            "'2026-02-30T09:00' is not a date and time; expected a local "
            'date and time such as "2026-03-01T09:00"',
        ),
        (
            '"tomorrow"',
            "'tomorrow' is not a date and time; expected a local date and time such "
            'as "2026-03-01T09:00"',
        ),
        (
            '"2026-03-01T09:00+01:00"',
            "'2026-03-01T09:00+01:00' has a UTC offset; expected a "
            "local time in the schedule's time zone, without one",
        ),
    ],
)
def test_a_bad_handoff_is_refused(written: str, message: str) -> None:
    assert broken('"2026-03-01T09:00"', written) == [
        f"14: schedules[0].layers[0].handoff: {message}"
    ]


RESTRICTED = BASE.replace(
    '        handoff: "2026-03-01T09:00"\n',
    '        handoff: "2026-03-01T09:00"\n'
    "        restrict:\n"
    '          - {days: [mon, fri], from: "09:00", to: "18:00"}\n',
)


def test_restriction_times_may_be_written_without_quotes_and_end_at_24_00() -> None:
    config = load_paging_config(
        RESTRICTED.replace('from: "09:00", to: "18:00"', "from: 9:00, to: 24:00"), "p.yaml"
    )
    schedule = config.schedule("primary")
    assert schedule is not None
    (restriction,) = schedule.layers[0].restrictions
    assert (restriction.start, restriction.end, restriction.length) == (
        time(9, 0),
        time(0, 0),
        timedelta(hours=15),
    )


def test_a_bad_time_of_day_is_refused() -> None:
    assert broken('to: "18:00"', 'to: "18:60"', RESTRICTED) == [
        "16: schedules[0].layers[0].restrict[0].to: '18:60' is not a time of day; expected a "
        'time such as "09:00" (or "24:00")'
    ]
    assert broken('from: "09:00"', 'from: "24:00"', RESTRICTED) == [
        "16: schedules[0].layers[0].restrict[0].from: '24:00' is not a time of day; expected a "
        'time such as "09:00"'
    ]


def test_an_unknown_weekday_is_named_with_the_right_spelling() -> None:
    assert broken("[mon, fri]", "[mon, Friday]", RESTRICTED) == [
        "16: schedules[0].layers[0].restrict[0].days[1]: unknown weekday 'Friday' (did you "
        "mean 'fri'?); expected mon, tue, wed, thu, fri, sat or sun"
    ]
    assert broken("[mon, fri]", "[]", RESTRICTED) == [
        "16: schedules[0].layers[0].restrict[0].days: no day; leave days out to mean every day"
    ]


def test_duplicate_ids_name_the_first_one() -> None:
    assert broken(
        "    email: alice@example.com\n",
        "    email: alice@example.com\n  - id: alice\n    email: a2@example.com\n",
    ) == ["4: users[1].id: duplicate id 'alice'; users[0] already has it"]


def test_a_key_given_twice_is_refused() -> None:
    assert broken(
        "    email: alice@example.com", "    email: a@example.com\n    email: b@x.com"
    ) == ["4: users[0].email: duplicate key 'email'; it is already given on line 3"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "      - users: [alice]",
            "      - users: [alice, alcie]",
            "12: schedules[0].layers[0].users[1]: no user has the id 'alcie' (did you mean "
            "'alice'?); expected one of alice",
        ),
        (
            "{schedule: primary}",
            "{schedule: secondary}",
            "19: escalation_policies[0].levels[0].notify[0].schedule: no schedule has the id "
            "'secondary'; expected one of primary",
        ),
        (
            "{schedule: primary}",
            "{schedule: primary}, {channel: hook}",
            "19: escalation_policies[0].levels[0].notify[1].channel: no channel has the id "
            "'hook'; expected one of mail",
        ),
        (
            "{schedule: primary}",
            "{user: bob}",
            "19: escalation_policies[0].levels[0].notify[0].user: no user has the id 'bob'; "
            "expected one of alice",
        ),
        (
            "  - policy: default",
            "  - policy: critical",
            "21: routes[0].policy: no escalation policy has the id 'critical'; expected one of "
            "default",
        ),
        (
            "    email: alice@example.com",
            "    email: alice@example.com\n    channels: [pager]",
            "4: users[0].channels[0]: no channel has the id 'pager'; expected one of mail",
        ),
    ],
)
def test_a_reference_to_nothing_is_refused(old: str, new: str, message: str) -> None:
    assert broken(old, new) == [message]


def test_a_bad_label_pattern_is_refused() -> None:
    assert broken(
        "  - policy: default", '  - match: {labels_regex: {model: "gpt-(4"}}\n    policy: default'
    ) == [
        "21: routes[0].match.labels_regex.model: 'gpt-(4' is not a regular expression: missing "
        "), unterminated subpattern at position 4; expected a Python pattern matched against "
        "the whole value"
    ]


def test_unknown_severity_and_type_names_are_refused_with_the_right_spelling() -> None:
    assert broken(
        "  - policy: default", "  - match: {severity: [p1, P5]}\n    policy: default"
    ) == [
        "21: routes[0].match.severity[0]: unknown severity 'p1' (did you mean 'P1'?); "
        "expected P0, P1, P2, P3 or P4",
        "21: routes[0].match.severity[1]: unknown severity 'P5'; expected P0, P1, P2, P3 or P4",
    ]
    assert broken("  - policy: default", "  - match: {type: [Security]}\n    policy: default") == [
        "21: routes[0].match.type[0]: unknown incident type 'Security' (did you mean "
        "'SECURITY'?); expected INFRASTRUCTURE, APPLICATION, SECURITY, DATA, PERFORMANCE, "
        "AVAILABILITY or COMPLIANCE"
    ]


def test_an_empty_match_list_is_refused_rather_than_matching_nothing() -> None:
    assert broken("  - policy: default", "  - match: {source: []}\n    policy: default") == [
        "21: routes[0].match.source: an empty list matches nothing; leave the key out to match any"
    ]


WEBHOOK = BASE.replace(
    "channels:\n",
    "channels:\n  - id: hook\n    type: webhook\n    url: https://hooks.example.com/x\n",
)


def test_a_secret_written_inline_is_refused() -> None:
    assert broken(
        "    url: https://hooks.example.com/x", "    url: https://x.io\n    secret: s3cr3t", WEBHOOK
    ) == [
        "8: channels[0].secret: a secret must not be written in this file; put it in an "
        "environment variable and give that variable's name as secret_env"
    ]
    assert broken("from: incidents@example.com}", "from: i@example.com, password: hunter2}") == [
        "7: channels[0].smtp.password: a secret must not be written in this file; put it in an "
        "environment variable and give that variable's name as password_env"
    ]


def test_a_secret_pasted_where_its_variables_name_belongs_is_refused() -> None:
    assert broken(
        "    url: https://hooks.example.com/x",
        "    url: https://hooks.example.com/x\n    secret_env: whsec_MfKQ9r8GKYqrTwjUPD8ILPZ",
        WEBHOOK,
    ) == [
        "8: channels[0].secret_env: expected the name of the environment variable that holds "
        "the signing secret (upper case letters, digits and '_', e.g. OPS_HOOK_SECRET), not the "
        "secret itself"
    ]


def test_smtp_login_needs_both_username_and_password_env() -> None:
    assert broken("from: incidents@example.com}", "from: i@example.com, username: bot}") == [
        "7: channels[0].smtp.username: username and password_env go together; give both or neither"
    ]


def test_an_unknown_channel_type_is_refused() -> None:
    assert broken("    type: email", "    type: e-mail") == [
        "6: channels[0].type: unknown channel type 'e-mail' (did you mean 'email'?); expected "
        "webhook, email, slack, teams or pagerduty"
    ]


def test_a_webhook_needs_an_http_url_and_may_not_replace_the_signature_headers() -> None:
    assert broken("https://hooks.example.com/x", "hooks.example.com/x", WEBHOOK) == [
        "7: channels[0].url: 'hooks.example.com/x' is not an http(s) URL; expected e.g. "
        "https://example.com/hook"
    ]
    assert broken(
        "    url: https://hooks.example.com/x",
        "    url: https://hooks.example.com/x\n    headers: {webhook-id: x, X-Team: ops}",
        WEBHOOK,
    ) == [
        "8: channels[0].headers.webhook-id: webhook-id is set by the webhook sender and cannot "
        "be replaced"
    ]


def test_a_webhook_url_with_a_password_or_a_header_with_a_line_break_is_refused() -> None:
    assert broken(
        "https://hooks.example.com/x", "https://bot:hunter2@hooks.example.com/x", WEBHOOK
    ) == [
        "7: channels[0].url: the URL carries a password, and secrets must not be written in "
        "this file; sign requests with secret_env instead"
    ]
    assert broken(
        "    url: https://hooks.example.com/x",
        '    url: https://hooks.example.com/x\n    headers: {X-Team: "ops\\r\\nX-Evil: 1"}',
        WEBHOOK,
    ) == [
        "8: channels[0].headers.X-Team: the value has control characters; expected one line of text"
    ]


def test_an_invalid_id_is_reported_once_not_again_where_it_is_used() -> None:
    assert (
        broken("  - id: alice", "  - id: al ice").count(
            "2: users[0].id: 'al ice' is not a valid id; expected 1 to 64 letters, digits, '_', "
            "'.' or '-', starting with a letter or digit"
        )
        == 1
    )
    assert broken("alice", "al ice", BASE.replace("[alice]", "[al ice]")) == [
        "2: users[0].id: 'al ice' is not a valid id; expected 1 to 64 letters, digits, '_', "
        "'.' or '-', starting with a letter or digit"
    ]


def test_a_user_with_an_email_but_no_email_channel_is_refused() -> None:
    assert broken(
        "  - id: mail\n    type: email\n    smtp: {host: 127.0.0.1, from: incidents@example.com}\n",
        "  - id: hook\n    type: webhook\n    url: https://x.io/h\n",
    ) == [
        "3: users[0].email: no channel of type email is configured to send to this address; "
        "add one (type: email) or remove the address"
    ]


def test_a_user_without_any_contact_method_is_refused() -> None:
    assert broken("    email: alice@example.com\n", "") == [
        "2: users[0]: user 'alice' cannot be paged: give an email (sent by the email channel) "
        "or name channels"
    ]


def test_a_notify_entry_must_name_exactly_one_target() -> None:
    assert broken("{schedule: primary}", "{schedule: primary, user: alice}") == [
        "19: escalation_policies[0].levels[0].notify[0]: expected exactly one of user, schedule, "
        "channel or action, e.g. {schedule: primary}"
    ]


def test_an_email_channel_notified_on_its_own_needs_addresses() -> None:
    assert broken("{schedule: primary}", "{channel: mail}") == [
        "19: escalation_policies[0].levels[0].notify[0].channel: email channel 'mail' has no "
        "`to` addresses, so it cannot be notified on its own; give it `to`, or notify users"
    ]


def test_a_fallback_route_that_is_not_last_is_refused() -> None:
    assert broken(
        "  - policy: default",
        "  - policy: default\n  - match: {severity: [P0]}\n    policy: default",
    ) == [
        "21: routes[0]: a route without match catches every incident, so the routes after it "
        "never match; make it the last route"
    ]


def test_no_fallback_route_loads_with_a_warning() -> None:
    loaded = read_paging_config(
        BASE.replace("  - policy: default", "  - match: {severity: [P0]}\n    policy: default"),
        "paging.yaml",
    )
    assert loaded.warnings == (
        "paging.yaml:20: warning: routes: no fallback route (one without match): incidents that "
        "match no route are not paged",
    )


def test_every_mistake_is_listed_at_once_in_line_order() -> None:
    text = (
        BASE.replace("  - policy: default", "  - policy: nothing")
        .replace("rotation: daily", "rotation: sometimes")
        .replace("  - id: alice", "  - id: alice\n    phone: 123")
    )
    found = mistakes(text)
    assert [m.split(":")[0] for m in found] == ["3", "14", "22"]
    assert [m.split(": ")[1] for m in found] == [
        "users[0].phone",
        "schedules[0].layers[0].rotation",
        "routes[0].policy",
    ]


def test_a_file_that_expands_without_bound_is_refused() -> None:
    # 100 aliases of a schedule of 100 layers of 100 restrictions of 100 days: 10^8 items.
    days = "&d [" + ", ".join(["mon"] * 100) + "]"
    restriction = f'&r {{days: {days}, from: "09:00", to: "10:00"}}'
    restrictions = "[" + ", ".join([restriction] + ["*r"] * 99) + "]"
    turns = 'users: [alice], rotation: daily, handoff: "2026-03-01T09:00"'
    layer = f"&l {{{turns}, restrict: {restrictions}}}"
    layers = "[" + ", ".join([layer] + ["*l"] * 99) + "]"
    schedule = f"&s {{id: primary, time_zone: UTC, layers: {layers}}}"
    bomb = "schedules: [" + ", ".join([schedule] + ["*s"] * 99) + "]\n"
    assert mistakes(bomb) == [
        f"1: the file has more than {MAX_NODES} keys and items; is it the right file?"
    ]


def test_merge_keys_are_refused_rather_than_guessed() -> None:
    assert broken("  - id: alice", "  - <<: {id: alice}") == [
        "2: users[0].<<: merge keys (<<) are not supported; write the keys out"
    ]


def test_starttls_without_a_port_uses_the_submission_port() -> None:
    config = load_paging_config(
        BASE.replace("from: incidents@example.com}", "from: i@example.com, starttls: true}"),
        "p.yaml",
    )
    mail = config.channel("mail")
    assert isinstance(mail, EmailChannel)
    assert (mail.smtp.starttls, mail.smtp.port) == (True, 587)


def test_a_config_built_in_code_is_checked_too() -> None:
    with pytest.raises(InvalidPagingConfig, match=r"routes\[0\]\.policy: no escalation policy"):
        PagingConfig(escalation_policies=(), routes=(Route("x"),))


def test_every_key_the_file_may_use_is_documented() -> None:
    guide = (ROOT / "docs" / "PAGING.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `\{?([a-z_]+)", guide, flags=re.MULTILINE))
    for where, keys in FILE_KEYS.items():
        missing = [key for key in keys if key not in documented]
        assert not missing, f"docs/PAGING.md has no table row for {where} keys {missing}"


# The check command


def test_check_prints_a_summary_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(SAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{SAMPLE}: 2 users, 2 channels, 1 schedule, 2 policies, 3 routes\n"
    assert err == ""


def test_check_prints_every_mistake_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("daily", "sometimes").replace("0s", "0"), encoding="utf-8")
    assert main(["check", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad}:13: schedules[0].layers[0].rotation: 'sometimes' is not a rotation; expected "
        "daily, weekly or a duration such as 30s, 10m or 1h30m",
        f"{bad}:18: escalation_policies[0].levels[0].after: 0 has no unit; expected a duration "
        "such as 30s, 10m or 1h30m (0s for none)",
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, r"^{path}: no such file$"),
        (b"users: [\xff]\n", r"^{path}:1: not UTF-8 text \(byte 0xff\); save the file as UTF-8$"),
    ],
)
def test_check_explains_a_file_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, expected: str
) -> None:
    path = tmp_path / "paging.yaml"
    if content is not None:
        path.write_bytes(content)
    assert main(["check", str(path)]) == 2
    assert re.match(expected.format(path=re.escape(str(path))), capsys.readouterr().err.strip())
