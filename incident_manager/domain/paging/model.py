"""The paging configuration as values, and the run-time overrides and silences.

Everything here is a frozen dataclass. A `PagingConfig` checks itself when it
is built (`checks.config_problems`): one that exists has no dangling reference,
no duplicate id and no value the rules in docs/PAGING.md refuse. Fields keep
the order of the file, so a problem's path (`schedules[0].layers[1].users[2]`)
names the same place in the file and in these values.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo

from incident_manager.domain.errors import DomainError, FieldViolation, ValidationError
from incident_manager.domain.model import IncidentType, Severity

ConfigPath = tuple[str | int, ...]
"""Where a value sits in the file: ("schedules", 0, "layers", 1, "users", 2)."""


def render_path(path: ConfigPath) -> str:
    """`schedules[0].layers[1].users[2]`, the way messages name a place in the file."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


@dataclass(frozen=True)
class ConfigProblem:
    """One mistake in a paging configuration: where it is and what is wrong with it."""

    path: ConfigPath
    message: str
    """What is wrong, then what is expected."""
    refers_to: str = ""
    """For a reference to an id nothing has: the section it should be in (`users`)."""

    def __str__(self) -> str:
        where = render_path(self.path)
        return f"{where}: {self.message}" if where else self.message


class InvalidPagingConfig(DomainError):
    """A paging configuration breaks the rules; `problems` lists every mistake."""

    reason = "INVALID_PAGING_CONFIG"

    def __init__(self, problems: list[ConfigProblem]) -> None:
        if not problems:
            raise ValueError("an InvalidPagingConfig needs at least one problem")
        super().__init__("invalid paging configuration:\n" + "\n".join(map(str, problems)))
        self.problems = tuple(problems)


class Weekday(enum.IntEnum):
    """Days as `datetime.weekday()` numbers them; the file writes them `mon` to `sun`."""

    MON = 0
    TUE = 1
    WED = 2
    THU = 3
    FRI = 4
    SAT = 5
    SUN = 6


EVERY_DAY = frozenset(Weekday)


@dataclass(frozen=True)
class User:
    """A person who can be paged."""

    id: str
    name: str = ""
    """For messages; the id when empty."""
    email: str | None = None
    """Where the email channel sends this user's pages."""
    time_zone: ZoneInfo | None = None
    """For showing times to this user; schedules use their own zone."""
    channels: tuple[str, ...] = ()
    """Ids of channels that also page this user (an email channel here carries the email)."""

    @property
    def display_name(self) -> str:
        """The name, or the id when the file gives none."""
        return self.name or self.id


@dataclass(frozen=True)
class RateLimit:
    """At most `per_minute` messages through a channel in each minute of the clock (UTC);
    pages beyond it are folded into one digest message (domain/paging/digest.py)."""

    per_minute: int


@dataclass(frozen=True)
class MessageTemplate:
    """A channel's own words for its messages: Jinja2 sources for the title and the body.

    None keeps the channel's default for that part. The sources are checked when the
    configuration is built (`templates.template_problem`); rendering happens at send time,
    and a failure there sends the default message instead (docs/PAGING.md, Templates).
    """

    title: str | None = None
    body: str | None = None


class ChannelEvent(enum.Enum):
    """A change of an incident a channel may be told about; the value is its name in `on`."""

    PAGED = "paged"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REOPENED = "reopened"


PAGES_ONLY = frozenset({ChannelEvent.PAGED})
"""The default `on` of every channel type but pagerduty."""
EVERY_EVENT = frozenset(ChannelEvent)
"""The default `on` of pagerduty: PagerDuty closes its own alert only when told."""


@dataclass(frozen=True)
class Channel:
    """A way to deliver pages. Each kind is a subclass; `type` is its name in the file."""

    id: str
    on: frozenset[ChannelEvent] = PAGES_ONLY
    """The file's `on`: which changes of an incident it paged this channel is told about
    (docs/PAGING.md, Following an incident)."""
    # Keyword-only, so the subclasses' own fields keep their positions.
    rate_limit: RateLimit | None = field(default=None, kw_only=True)
    """The file's `rate_limit`; None sends every message as it falls due."""
    type: ClassVar[str] = ""

    @property
    def attempt_timeout(self) -> timedelta:
        """How long one delivery attempt through this channel may take."""
        smtp = getattr(self, "smtp", None)
        found = getattr(smtp, "timeout", None) or getattr(self, "timeout", None)
        return found if isinstance(found, timedelta) else timedelta(seconds=10)


@dataclass(frozen=True)
class WebhookChannel(Channel):
    """An HTTP POST of a JSON body, signed per the Standard Webhooks convention."""

    url: str = ""
    secret_env: str | None = None
    """The environment variable holding the signing secret; None sends unsigned requests."""
    timeout: timedelta = timedelta(seconds=10)
    """How long one attempt may take."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra request headers (not secrets: the file is not a secret store)."""
    template: MessageTemplate | None = None
    """Fills the body's `message.title` and `message.body`; the other keys never change."""
    type: ClassVar[str] = "webhook"


@dataclass(frozen=True)
class SmtpServer:
    """Where an email channel hands its messages over."""

    host: str
    from_address: str
    """The file's `from`."""
    port: int = 25
    starttls: bool = False
    """Upgrade the connection with STARTTLS before logging in or sending."""
    username: str | None = None
    password_env: str | None = None
    """The environment variable holding the password for `username`."""
    timeout: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class EmailChannel(Channel):
    """Email through an SMTP server. Users' addresses come from the users;
    `to` is only for the channel used as a target on its own."""

    smtp: SmtpServer = field(default_factory=lambda: SmtpServer(host="", from_address=""))
    to: tuple[str, ...] = ()
    template: MessageTemplate | None = None
    """The subject (title) and the text body (body); the HTML part shows the body as is."""
    type: ClassVar[str] = "email"


@dataclass(frozen=True)
class SlackChannel(Channel):
    """A Slack incoming webhook. Its URL is a credential, so the file names the environment
    variable that holds it."""

    url_env: str = ""
    timeout: timedelta = timedelta(seconds=10)
    template: MessageTemplate | None = None
    type: ClassVar[str] = "slack"


@dataclass(frozen=True)
class TeamsChannel(Channel):
    """A Microsoft Teams Workflows webhook ("When a Teams webhook request is received"),
    posting an Adaptive Card. Its URL carries a signature, so it comes from the environment."""

    url_env: str = ""
    timeout: timedelta = timedelta(seconds=10)
    template: MessageTemplate | None = None
    type: ClassVar[str] = "teams"


PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
"""PagerDuty's Events API v2 endpoint."""


@dataclass(frozen=True)
class PagerDutyChannel(Channel):
    """Events API v2 of one PagerDuty service: our incident becomes a PagerDuty alert whose
    dedup_key is our incident id."""

    routing_key_env: str = ""
    """The environment variable holding the integration's routing key."""
    url: str = PAGERDUTY_EVENTS_URL
    timeout: timedelta = timedelta(seconds=10)
    template: MessageTemplate | None = None
    on: frozenset[ChannelEvent] = EVERY_EVENT
    type: ClassVar[str] = "pagerduty"


CHANNEL_TYPES: Mapping[str, type[Channel]] = {
    WebhookChannel.type: WebhookChannel,
    EmailChannel.type: EmailChannel,
    SlackChannel.type: SlackChannel,
    TeamsChannel.type: TeamsChannel,
    PagerDutyChannel.type: PagerDutyChannel,
}
"""The channel types a configuration may use."""


@dataclass(frozen=True)
class Restriction:
    """A span of local time a layer covers, starting on each of `days`.

    A span whose `end` is not after its `start` ends on the next day, so
    22:00-06:00 is overnight and 00:00-00:00 is the whole day.
    """

    start: time
    end: time
    days: frozenset[Weekday] = EVERY_DAY

    @property
    def length(self) -> timedelta:
        """How long the span is on the wall clock (24h when start equals end)."""
        start = timedelta(hours=self.start.hour, minutes=self.start.minute)
        end = timedelta(hours=self.end.hour, minutes=self.end.minute)
        length = (end - start) % timedelta(days=1)
        return length or timedelta(days=1)


@dataclass(frozen=True)
class Layer:
    """Users taking turns: the first turn starts at `handoff`, each lasts `rotation`.

    Both are wall-clock values in the schedule's zone: a daily rotation hands
    off at the same local time every day, whatever daylight saving does.
    """

    users: tuple[str, ...]
    rotation: timedelta
    """`daily` is 1 day and `weekly` 7, measured on the local wall clock."""
    handoff: datetime
    """Naive local time of the first hand-off; the layer covers nothing before it."""
    restrictions: tuple[Restriction, ...] = ()
    """The file's `restrict`; empty means around the clock."""


@dataclass(frozen=True)
class Schedule:
    """Who is on call: layers, where a later layer wins over an earlier one."""

    id: str
    time_zone: ZoneInfo
    layers: tuple[Layer, ...]


class TargetKind(enum.Enum):
    """What a level notifies; the value is the key in the file (`{schedule: primary}`)."""

    USER = "user"
    SCHEDULE = "schedule"
    CHANNEL = "channel"
    ACTION = "action"
    """An automated action: a request to a webhook channel, not a page (docs/PAGING.md)."""


@dataclass(frozen=True)
class Target:
    """One entry of a level's `notify`."""

    kind: TargetKind
    id: str
    """The user, schedule or channel; for an action, the webhook channel it calls."""
    body: str | None = None
    """For an action only: the Jinja2 template of the request's body (domain/paging/actions.py)."""

    def __str__(self) -> str:
        return f"{self.kind.value} {self.id}"


@dataclass(frozen=True)
class Level:
    """A step of an escalation policy: whom to notify, `after` the round started."""

    after: timedelta
    targets: tuple[Target, ...]
    """The file's `notify`."""


DEFAULT_REPEAT_AFTER = timedelta(minutes=10)
MAX_REPEAT = 100


@dataclass(frozen=True)
class EscalationPolicy:
    """Levels notified in turn until someone acknowledges; see escalation.py for the timing."""

    id: str
    levels: tuple[Level, ...]
    ack_timeout: timedelta | None = None
    """Page again from the first level if an acknowledged incident stays untouched this long."""
    repeat: int = 0
    """Run all the levels again this many more times if nobody acknowledges."""
    repeat_after: timedelta = DEFAULT_REPEAT_AFTER
    """From the last level of a round to the first level of the next."""


@dataclass(frozen=True)
class Matcher:
    """What routes and silences match on. Every field given must match (empty = any);
    a list matches if any of its values does; every label given must be present and match."""

    severities: frozenset[Severity] = frozenset()
    types: frozenset[IncidentType] = frozenset()
    sources: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    """Exact values."""
    labels_regex: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    """Patterns that must match the whole value."""

    @property
    def is_empty(self) -> bool:
        """True when it matches everything."""
        return not (
            self.severities or self.types or self.sources or self.labels or self.labels_regex
        )


@dataclass(frozen=True)
class Route:
    """Incidents that `match` are paged with `policy`; no match makes it the fallback."""

    policy: str
    match: Matcher | None = None

    @property
    def is_fallback(self) -> bool:
        """True when it matches every incident."""
        return self.match is None or self.match.is_empty


@dataclass(frozen=True)
class PagingConfig:
    """The whole paging configuration, checked when built (raises InvalidPagingConfig)."""

    escalation_policies: tuple[EscalationPolicy, ...]
    routes: tuple[Route, ...]
    users: tuple[User, ...] = ()
    channels: tuple[Channel, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    _users: Mapping[str, User] = field(init=False, repr=False, compare=False)
    _channels: Mapping[str, Channel] = field(init=False, repr=False, compare=False)
    _schedules: Mapping[str, Schedule] = field(init=False, repr=False, compare=False)
    _policies: Mapping[str, EscalationPolicy] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Imported here: the checks need these classes, and this module needs the checks.
        from incident_manager.domain.paging.checks import config_problems

        problems = config_problems(
            users=self.users,
            channels=self.channels,
            schedules=self.schedules,
            escalation_policies=self.escalation_policies,
            routes=self.routes,
        )
        if problems:
            raise InvalidPagingConfig(problems)
        object.__setattr__(self, "_users", {u.id: u for u in self.users})
        object.__setattr__(self, "_channels", {c.id: c for c in self.channels})
        object.__setattr__(self, "_schedules", {s.id: s for s in self.schedules})
        object.__setattr__(self, "_policies", {p.id: p for p in self.escalation_policies})

    def user(self, user_id: str) -> User | None:
        """The user with this id, if the configuration has one."""
        return self._users.get(user_id)

    def channel(self, channel_id: str) -> Channel | None:
        """The channel with this id, if any."""
        return self._channels.get(channel_id)

    def schedule(self, schedule_id: str) -> Schedule | None:
        """The schedule with this id, if any."""
        return self._schedules.get(schedule_id)

    def policy(self, policy_id: str) -> EscalationPolicy | None:
        """The escalation policy with this id, if any."""
        return self._policies.get(policy_id)

    def lease_problem(self, lease: timedelta) -> str:
        """Why a delivery lease of `lease` is too short for these channels, or "".

        A replica holds a claimed delivery for the lease; if one attempt can take
        longer, another replica may take it over while it is still being sent.
        """
        slow = [c for c in self.channels if c.attempt_timeout >= lease]
        if not slow:
            return ""
        named = ", ".join(f"{c.id} ({c.attempt_timeout.total_seconds():g}s)" for c in slow)
        return (
            f"--paging-lease ({lease.total_seconds():g}s) must be longer than every channel's "
            f"timeout, or a slow page could be sent twice by two replicas: {named}; raise "
            "--paging-lease or lower those timeouts"
        )

    @property
    def email_channel(self) -> EmailChannel | None:
        """The channel that carries users' email unless a user names another: the first one."""
        return next((c for c in self.channels if isinstance(c, EmailChannel)), None)

    @property
    def has_fallback_route(self) -> bool:
        """False means incidents that match no route are not paged."""
        return any(route.is_fallback for route in self.routes)

    def override_problems(self, override: Override) -> list[FieldViolation]:
        """Why this configuration cannot take the override (unknown schedule or user)."""
        wrong = []
        if self.schedule(override.schedule_id) is None:
            wrong.append(
                FieldViolation("schedule_id", f"no schedule {override.schedule_id!r} is configured")
            )
        if self.user(override.user_id) is None:
            wrong.append(FieldViolation("user_id", f"no user {override.user_id!r} is configured"))
        return wrong


def _require_aware(what: str, **moments: datetime) -> list[FieldViolation]:
    return [
        FieldViolation(name, f"{what} needs a time zone (got a naive datetime)")
        for name, moment in moments.items()
        if moment.tzinfo is None or moment.utcoffset() is None
    ]


@dataclass(frozen=True)
class Override:
    """Someone else covers a schedule for a while ("bob covers for alice tonight").

    Made at run time and stored; during [start, end) it wins over every layer.
    Where overrides overlap, the one that started last wins (on a tie, the greater id).
    """

    id: str
    schedule_id: str
    user_id: str
    start: datetime
    end: datetime
    created_by: str
    reason: str = ""
    create_time: datetime | None = None
    """When it was made; None only for overrides not stored yet."""

    def __post_init__(self) -> None:
        wrong = _require_aware("an override", start=self.start, end=self.end)
        if not wrong and self.end <= self.start:
            wrong.append(FieldViolation("end", "must be after start"))
        if wrong:
            raise ValidationError(wrong)

    def covers(self, at: datetime) -> bool:
        """Whether it is in force at that moment."""
        return self.start <= at < self.end


@dataclass(frozen=True)
class Silence:
    """Incidents that match are not paged during [start, end) (Alertmanager's idea).

    Their alerts are still ingested and stored; only paging waits. `end` may
    equal `start`: a silence expired before it began.
    """

    id: str
    matcher: Matcher
    start: datetime
    end: datetime
    created_by: str
    comment: str = ""
    create_time: datetime | None = None
    """When it was made; None only for silences not stored yet."""
    expired_by: str = ""
    """Who ended it early (ExpireSilence); empty if it ran, or runs, to its end."""

    def __post_init__(self) -> None:
        wrong = _require_aware("a silence", start=self.start, end=self.end)
        if not wrong and self.end < self.start:
            wrong.append(FieldViolation("end", "must not be before start"))
        if self.matcher.is_empty:
            # A silence on everything would stop all paging: say which incidents.
            wrong.append(FieldViolation("matchers", "a silence needs at least one matcher"))
        if wrong:
            raise ValidationError(wrong)

    def is_active(self, at: datetime) -> bool:
        """Whether it holds matching incidents at that moment."""
        return self.start <= at < self.end

    def expired(self, at: datetime, by: str = "") -> Silence:
        """This silence ended at `at` (or not begun, if it had not started), by `by`."""
        end = min(self.end, max(self.start, at))
        return replace(self, end=end, expired_by=by or self.expired_by)
