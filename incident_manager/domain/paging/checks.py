"""The rules a paging configuration must keep, and the warnings it may deserve.

Each problem names its place by path, in the file's key names, so the file
loader can turn it into `FILE:LINE: key.path: message`. Only the values are
checked here; the loader checks the YAML's shape, types and syntax first.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import timedelta
from urllib.parse import urlsplit

from incident_manager.domain.paging.model import (
    CHANNEL_TYPES,
    MAX_REPEAT,
    PAGERDUTY_EVENTS_URL,
    Channel,
    ChannelEvent,
    ConfigPath,
    ConfigProblem,
    EmailChannel,
    EscalationPolicy,
    MessageTemplate,
    PagerDutyChannel,
    Route,
    Schedule,
    SlackChannel,
    Target,
    TargetKind,
    TeamsChannel,
    User,
    WebhookChannel,
)
from incident_manager.domain.paging.templates import template_problem

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Ids appear in logs, metrics and URLs: letters, digits, `_`, `.`, `-`, at most 64."""
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
"""Environment variable names as the file must write them. Upper case only: a secret
pasted where its variable's name belongs (`whsec_3kd...`) is refused."""
EMAIL_ADDRESS = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;.]+")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "user-agent",
        "transfer-encoding",
        "connection",
    }
)
"""Headers the webhook sender sets itself; the file may not replace them."""
MIN_ROTATION = timedelta(hours=1)
MAX_CHANNEL_TIMEOUT = timedelta(minutes=5)


class _Problems:
    def __init__(self) -> None:
        self.found: list[ConfigProblem] = []

    def add(self, path: ConfigPath, message: str, refers_to: str = "") -> None:
        self.found.append(ConfigProblem(path, message, refers_to))


def config_problems(
    *,
    users: Sequence[User],
    channels: Sequence[Channel],
    schedules: Sequence[Schedule],
    escalation_policies: Sequence[EscalationPolicy],
    routes: Sequence[Route],
) -> list[ConfigProblem]:
    """Every rule the parts break, in file order (empty when they make a valid configuration)."""
    out = _Problems()
    user_ids = _ids(out, "users", [u.id for u in users])
    channel_ids = _ids(out, "channels", [c.id for c in channels])
    schedule_ids = _ids(out, "schedules", [s.id for s in schedules])
    policy_ids = _ids(out, "escalation_policies", [p.id for p in escalation_policies])
    channels_by_id = {c.id: c for c in channels}
    # A channel of an unknown type (reported) might be the email one: infer nothing from it.
    has_email_channel = any(
        isinstance(c, EmailChannel) or type(c) not in CHANNEL_TYPES.values() for c in channels
    )

    for i, user in enumerate(users):
        _check_user(out, ("users", i), user, channels_by_id, has_email_channel)
    for i, channel in enumerate(channels):
        _check_channel(out, ("channels", i), channel)
    for i, schedule in enumerate(schedules):
        _check_schedule(out, ("schedules", i), schedule, user_ids)
    if not escalation_policies:
        out.add(("escalation_policies",), "no escalation policy; at least one is needed")
    for i, policy in enumerate(escalation_policies):
        _check_policy(
            out,
            ("escalation_policies", i),
            policy,
            {TargetKind.USER: user_ids, TargetKind.SCHEDULE: schedule_ids},
            channels_by_id,
            channel_ids,
        )
    if not routes:
        out.add(("routes",), "no route; at least one is needed, or nothing is ever paged")
    for i, route in enumerate(routes):
        path: ConfigPath = ("routes", i)
        if route.policy not in policy_ids:
            out.add(
                (*path, "policy"),
                _unknown("escalation policy", route.policy, policy_ids),
                "escalation_policies",
            )
        if route.is_fallback and i != len(routes) - 1:
            out.add(
                path,
                "a route without match catches every incident, so the routes after it never "
                "match; make it the last route",
            )
    return out.found


def config_warnings(
    *,
    schedules: Sequence[Schedule],
    escalation_policies: Sequence[EscalationPolicy],
    routes: Sequence[Route],
) -> list[ConfigProblem]:
    """What is allowed but probably not meant: no fallback route, unused policies or schedules."""
    out = _Problems()
    if routes and not any(route.is_fallback for route in routes):
        out.add(
            ("routes",),
            "no fallback route (one without match): incidents that match no route are not paged",
        )
    used_policies = {route.policy for route in routes}
    for i, policy in enumerate(escalation_policies):
        if policy.id not in used_policies:
            out.add(("escalation_policies", i), f"policy {policy.id!r} is used by no route")
    used_schedules = {
        target.id
        for policy in escalation_policies
        for level in policy.levels
        for target in level.targets
        if target.kind is TargetKind.SCHEDULE
    }
    for i, schedule in enumerate(schedules):
        if schedule.id not in used_schedules:
            out.add(("schedules", i), f"schedule {schedule.id!r} is notified by no policy")
    return out.found


def _ids(out: _Problems, section: str, ids: Sequence[str]) -> set[str]:
    """The ids given, each reported if invalid or repeated (references to them are not)."""
    seen: dict[str, int] = {}
    for i, value in enumerate(ids):
        path: ConfigPath = (section, i, "id")
        if value in seen:
            out.add(path, f"duplicate id {value!r}; {section}[{seen[value]}] already has it")
            continue
        seen[value] = i
        if not ID_PATTERN.fullmatch(value):
            out.add(
                path,
                f"{value!r} is not a valid id; expected 1 to 64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit",
            )
    return set(seen)


def _unknown(what: str, value: str, known: Iterable[str]) -> str:
    names = sorted(known)
    if not names:
        return f"no {what} has the id {value!r}; none is configured"
    close = difflib.get_close_matches(value, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no {what} has the id {value!r}{hint}; expected one of {', '.join(names)}"


def _check_env_name(out: _Problems, path: ConfigPath, value: str | None, secret: str) -> None:
    if value is not None and not ENV_NAME.fullmatch(value):
        out.add(
            path,
            f"expected the name of the environment variable that holds the {secret} (upper case "
            "letters, digits and '_', e.g. OPS_HOOK_SECRET), not the secret itself",
        )


def _check_address(out: _Problems, path: ConfigPath, value: str) -> None:
    if not EMAIL_ADDRESS.fullmatch(value):
        out.add(path, f"{value!r} is not an email address; expected e.g. alice@example.com")


def _check_timeout(out: _Problems, path: ConfigPath, value: timedelta) -> None:
    if not timedelta(0) < value <= MAX_CHANNEL_TIMEOUT:
        out.add(path, "must be longer than 0s and at most 5m")


def _check_user(
    out: _Problems,
    path: ConfigPath,
    user: User,
    channels: dict[str, Channel],
    has_email_channel: bool,
) -> None:
    if user.email is not None:
        _check_address(out, (*path, "email"), user.email)
        if not has_email_channel:
            # An address nobody sends to looks like paging and is not: refuse it.
            out.add(
                (*path, "email"),
                "no channel of type email is configured to send to this address; add one "
                "(type: email) or remove the address",
            )
    counts = Counter(user.channels)
    for j, channel_id in enumerate(user.channels):
        where: ConfigPath = (*path, "channels", j)
        channel = channels.get(channel_id)
        if channel is None:
            out.add(where, _unknown("channel", channel_id, channels), "channels")
        elif counts[channel_id] > 1 and user.channels.index(channel_id) != j:
            out.add(where, f"channel {channel_id!r} is listed twice")
        elif isinstance(channel, EmailChannel) and user.email is None:
            out.add(where, f"{channel_id!r} is an email channel, but this user has no email")
    if user.email is None and not user.channels:
        out.add(
            path,
            f"user {user.id!r} cannot be paged: give an email (sent by the email channel) "
            "or name channels",
        )


def _check_channel(out: _Problems, path: ConfigPath, channel: Channel) -> None:
    _check_on(out, (*path, "on"), channel)
    if isinstance(channel, WebhookChannel):
        url = urlsplit(channel.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            out.add(
                (*path, "url"),
                f"{channel.url!r} is not an http(s) URL; expected e.g. https://example.com/hook",
            )
        elif url.password is not None:
            out.add(
                (*path, "url"),
                "the URL carries a password, and secrets must not be written in this file; "
                "sign requests with secret_env instead",
            )
        _check_env_name(out, (*path, "secret_env"), channel.secret_env, "signing secret")
        _check_timeout(out, (*path, "timeout"), channel.timeout)
        _check_template(out, (*path, "template"), channel.template)
        for name in channel.headers:
            where: ConfigPath = (*path, "headers", name)
            if not HEADER_NAME.fullmatch(name):
                out.add(where, f"{name!r} is not a valid HTTP header name")
            elif name.lower() in RESERVED_HEADERS:
                out.add(where, f"{name} is set by the webhook sender and cannot be replaced")
            elif any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in channel.headers[name]):
                # A line break here would let the file write other headers.
                out.add(where, "the value has control characters; expected one line of text")
    elif isinstance(channel, EmailChannel):
        smtp: ConfigPath = (*path, "smtp")
        if not channel.smtp.host:
            out.add((*smtp, "host"), "must not be empty; expected the SMTP server's host name")
        if not 0 < channel.smtp.port < 65536:
            out.add((*smtp, "port"), f"{channel.smtp.port} is not a port; expected 1 to 65535")
        _check_address(out, (*smtp, "from"), channel.smtp.from_address)
        if (channel.smtp.username is None) != (channel.smtp.password_env is None):
            given = "username" if channel.smtp.username is not None else "password_env"
            out.add((*smtp, given), "username and password_env go together; give both or neither")
        _check_env_name(out, (*smtp, "password_env"), channel.smtp.password_env, "SMTP password")
        _check_timeout(out, (*smtp, "timeout"), channel.smtp.timeout)
        for j, address in enumerate(channel.to):
            _check_address(out, (*path, "to", j), address)
        _check_template(out, (*path, "template"), channel.template)
    elif isinstance(channel, SlackChannel | TeamsChannel):
        what = "Slack webhook URL" if isinstance(channel, SlackChannel) else "Teams webhook URL"
        _check_env_name(out, (*path, "url_env"), channel.url_env, what)
        _check_timeout(out, (*path, "timeout"), channel.timeout)
        _check_template(out, (*path, "template"), channel.template)
    elif isinstance(channel, PagerDutyChannel):
        _check_env_name(out, (*path, "routing_key_env"), channel.routing_key_env, "routing key")
        url = urlsplit(channel.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            out.add(
                (*path, "url"),
                f"{channel.url!r} is not an http(s) URL; expected e.g. {PAGERDUTY_EVENTS_URL}",
            )
        elif url.password is not None:
            out.add((*path, "url"), "the URL carries a password; secrets do not go in this file")
        _check_timeout(out, (*path, "timeout"), channel.timeout)
        _check_template(out, (*path, "template"), channel.template)
    else:
        out.add((*path, "type"), f"unknown channel type {channel.type!r}")
    _check_rate_limit(out, path, channel)


def _check_rate_limit(out: _Problems, path: ConfigPath, channel: Channel) -> None:
    if channel.rate_limit is None:
        return
    where: ConfigPath = (*path, "rate_limit", "per_minute")
    if isinstance(channel, PagerDutyChannel):
        # A digest is one message about many incidents; PagerDuty keys every event by one
        # incident (dedup_key) and groups alerts itself.
        out.add(
            (*path, "rate_limit"),
            "pagerduty channels take no rate_limit: PagerDuty needs one event per incident"
            " (dedup_key) and groups alerts itself; use its Alert Grouping instead",
        )
    elif channel.rate_limit.per_minute < 1:
        out.add(
            where,
            f"{channel.rate_limit.per_minute} is not a rate; expected a whole number of"
            " messages a minute, at least 1",
        )


def _check_on(out: _Problems, path: ConfigPath, channel: Channel) -> None:
    # A channel follows the life of the incidents it paged: one never paged directly would
    # hear of an acknowledgement with nothing before it to acknowledge.
    if ChannelEvent.PAGED not in channel.on:
        named = [e.value for e in ChannelEvent if e in channel.on]
        example = ", ".join(["paged", *(named or ["resolved"])])
        out.add(
            path,
            f"must include paged (it lists {', '.join(named) or 'nothing'}): a channel is told"
            f" how the incidents it paged go on, so it is paged first; e.g. [{example}]",
        )


def _check_template(out: _Problems, path: ConfigPath, template: MessageTemplate | None) -> None:
    if template is None:
        return
    if template.title is None and template.body is None:
        out.add(path, "expected title, body or both (Jinja2 templates)")
    for part in ("title", "body"):
        source: str | None = getattr(template, part)
        problem = template_problem(source) if source is not None else None
        if problem is not None:
            where = f"line {problem.line} of the template: " if problem.line else ""
            out.add((*path, part), f"{where}{problem.reason}")


def _check_schedule(
    out: _Problems, path: ConfigPath, schedule: Schedule, user_ids: set[str]
) -> None:
    if not schedule.layers:
        out.add((*path, "layers"), "no layer; expected at least one")
    for i, layer in enumerate(schedule.layers):
        where: ConfigPath = (*path, "layers", i)
        if not layer.users:
            out.add((*where, "users"), "no user; expected at least one")
        for j, user_id in enumerate(layer.users):
            if user_id not in user_ids:
                out.add((*where, "users", j), _unknown("user", user_id, user_ids), "users")
        if layer.rotation < MIN_ROTATION:
            out.add((*where, "rotation"), "must be at least 1h (or daily, weekly)")
        elif layer.rotation % timedelta(minutes=1):
            out.add((*where, "rotation"), "must be whole minutes")
        for j, restriction in enumerate(layer.restrictions):
            if not restriction.days:
                out.add(
                    (*where, "restrict", j, "days"),
                    "no day; leave days out to mean every day",
                )


def _check_policy(
    out: _Problems,
    path: ConfigPath,
    policy: EscalationPolicy,
    known: dict[TargetKind, set[str]],
    channels: dict[str, Channel],
    channel_ids: set[str],
) -> None:
    if not policy.levels:
        out.add((*path, "levels"), "no level; expected at least one")
    if policy.ack_timeout is not None and policy.ack_timeout <= timedelta(0):
        out.add((*path, "ack_timeout"), "must be longer than 0s; leave it out to never re-page")
    if not 0 <= policy.repeat <= MAX_REPEAT:
        out.add((*path, "repeat"), f"must be 0 to {MAX_REPEAT}")
    if policy.repeat_after <= timedelta(0):
        out.add((*path, "repeat_after"), "must be longer than 0s")
    previous = timedelta(0)
    for i, level in enumerate(policy.levels):
        where: ConfigPath = (*path, "levels", i)
        if level.after < timedelta(0):
            out.add((*where, "after"), "must not be negative")
        elif level.after < previous:
            out.add(
                (*where, "after"),
                "is before the previous level's after; levels are listed in the order they fire",
            )
        previous = max(previous, level.after)
        if not level.targets:
            out.add((*where, "notify"), "nobody to notify; expected at least one target")
        for j, target in enumerate(level.targets):
            at: ConfigPath = (*where, "notify", j, target.kind.value)
            if target.kind is TargetKind.ACTION:
                _check_action(out, at, target, channels)
            elif target.kind is TargetKind.CHANNEL:
                channel = channels.get(target.id)
                if channel is None:
                    out.add(at, _unknown("channel", target.id, channel_ids), "channels")
                elif isinstance(channel, EmailChannel) and not channel.to:
                    out.add(
                        at,
                        f"email channel {target.id!r} has no `to` addresses, so it cannot be "
                        "notified on its own; give it `to`, or notify users",
                    )
            elif target.id not in known[target.kind]:
                out.add(
                    at,
                    _unknown(target.kind.value, target.id, known[target.kind]),
                    "users" if target.kind is TargetKind.USER else "schedules",
                )


def _check_action(
    out: _Problems,
    path: ConfigPath,
    target: Target,
    channels: dict[str, Channel],
) -> None:
    """An action calls a webhook channel with a body template that must be usable."""
    channel = channels.get(target.id)
    webhooks = {c.id for c in channels.values() if isinstance(c, WebhookChannel)}
    if channel is None:
        out.add((*path, "webhook"), _unknown("webhook channel", target.id, webhooks), "channels")
    elif not isinstance(channel, WebhookChannel):
        hint = f"; webhook channels: {', '.join(sorted(webhooks))}" if webhooks else ""
        out.add(
            (*path, "webhook"),
            f"channel {target.id!r} is of type {channel.type}; an action calls a channel of "
            f"type webhook{hint}",
        )
    if target.body is None:
        return
    problem = template_problem(target.body)
    if problem is not None:
        where = f"line {problem.line} of the template: " if problem.line else ""
        out.add((*path, "body"), f"{where}{problem.reason}")
    elif not target.body.strip():
        out.add((*path, "body"), "is empty; expected the request's body (a Jinja2 template)")
