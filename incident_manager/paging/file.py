"""The paging configuration file: YAML in, a checked PagingConfig out.

Every mistake is reported at once, each as `FILE:LINE: key.path: what is
wrong, what is expected`. The file is composed into YAML nodes (not loaded
into Python values) so that each key and list item keeps its line, and so
that the raw text of a scalar is at hand: `from: 9:00` unquoted is the time
9:00 here, not the base-60 number YAML 1.1 would make of it; a channel's key `on` is the
name `on`, not the boolean true.

The loader checks the file's shape (keys, types, the syntax of durations,
times, zones, patterns, names); the domain checks the values and the
references between them (incident_manager.domain.paging.checks). A problem
the loader found hides the domain's problems at or under the same path, so one
mistake gives one message.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import TypeVar

import yaml
from yaml.constructor import SafeConstructor

from incident_manager.domain.model import IncidentType, Severity
from incident_manager.domain.paging.checks import config_problems, config_warnings
from incident_manager.domain.paging.model import (
    CHANNEL_TYPES,
    DEFAULT_REPEAT_AFTER,
    Channel,
    ChannelEvent,
    ConfigPath,
    ConfigProblem,
    EmailChannel,
    EscalationPolicy,
    InvalidPagingConfig,
    Layer,
    Level,
    Matcher,
    MessageTemplate,
    PagerDutyChannel,
    PagingConfig,
    RateLimit,
    Restriction,
    Route,
    Schedule,
    SlackChannel,
    SmtpServer,
    Target,
    TargetKind,
    TeamsChannel,
    User,
    WebhookChannel,
    Weekday,
)

T = TypeVar("T")

MAX_NODES = 100_000
"""More keys and items than any real paging file has; anchors and aliases can
otherwise make a small file expand without bound."""
MAX_DURATION = timedelta(days=365)

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_FLOAT = "tag:yaml.org,2002:float"

_DURATION = re.compile(r"(?:(\d{1,6})d)?(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,6})s)?")
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_WEEKDAYS = {day.name.lower(): day for day in Weekday}
_CONSTRUCT = SafeConstructor()

_ROOT_KEYS = ("users", "channels", "schedules", "escalation_policies", "routes")
_USER_KEYS = ("id", "name", "email", "time_zone", "channels")
_CHANNEL_KEYS: Mapping[str, tuple[str, ...]] = {
    WebhookChannel.type: (
        "id",
        "type",
        "url",
        "secret_env",
        "timeout",
        "headers",
        "template",
        "on",
        "rate_limit",
    ),
    EmailChannel.type: ("id", "type", "smtp", "to", "template", "on", "rate_limit"),
    SlackChannel.type: ("id", "type", "url_env", "timeout", "template", "on", "rate_limit"),
    TeamsChannel.type: ("id", "type", "url_env", "timeout", "template", "on", "rate_limit"),
    # rate_limit is accepted here so that the check can say why PagerDuty takes none.
    PagerDutyChannel.type: (
        "id",
        "type",
        "routing_key_env",
        "url",
        "timeout",
        "template",
        "on",
        "rate_limit",
    ),
}
_CHANNEL_EVENTS = {event.value: event for event in ChannelEvent}
_RATE_LIMIT_KEYS = ("per_minute",)
_TEMPLATE_KEYS = ("title", "body")
_SMTP_KEYS = ("host", "port", "from", "starttls", "username", "password_env", "timeout")
_SCHEDULE_KEYS = ("id", "time_zone", "layers")
_LAYER_KEYS = ("users", "rotation", "handoff", "restrict")
_RESTRICTION_KEYS = ("days", "from", "to")
_POLICY_KEYS = ("id", "ack_timeout", "repeat", "repeat_after", "levels")
_LEVEL_KEYS = ("after", "notify")
_TARGET_KEYS = tuple(kind.value for kind in TargetKind)
_ACTION_KEYS = ("webhook", "body")
_ROUTE_KEYS = ("match", "policy")
_MATCH_KEYS = ("severity", "type", "source", "labels", "labels_regex")

FILE_KEYS: Mapping[str, tuple[str, ...]] = {
    "top level": _ROOT_KEYS,
    "users": _USER_KEYS,
    "webhook channels": _CHANNEL_KEYS[WebhookChannel.type],
    "email channels": _CHANNEL_KEYS[EmailChannel.type],
    "slack channels": _CHANNEL_KEYS[SlackChannel.type],
    "teams channels": _CHANNEL_KEYS[TeamsChannel.type],
    "pagerduty channels": _CHANNEL_KEYS[PagerDutyChannel.type],
    "template": _TEMPLATE_KEYS,
    "rate_limit": _RATE_LIMIT_KEYS,
    "smtp": _SMTP_KEYS,
    "schedules": _SCHEDULE_KEYS,
    "layers": _LAYER_KEYS,
    "restrictions": _RESTRICTION_KEYS,
    "escalation policies": _POLICY_KEYS,
    "levels": _LEVEL_KEYS,
    "targets": _TARGET_KEYS,
    "actions": _ACTION_KEYS,
    "routes": _ROUTE_KEYS,
    "match": _MATCH_KEYS,
}
"""Every key the file may use, by where it goes (docs/PAGING.md documents each)."""

_DURATION_HINT = "a duration such as 30s, 10m or 1h30m"


class PagingConfigError(Exception):
    """The file cannot be used; `messages` has one `FILE:LINE: path: problem` line each."""

    def __init__(self, messages: Sequence[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = tuple(messages)


@dataclass(frozen=True)
class LoadedPagingConfig:
    """A configuration that loaded, with what it may not mean (same format, `warning:`)."""

    config: PagingConfig
    warnings: tuple[str, ...]


def load_paging_config(text: str, filename: str) -> PagingConfig:
    """The configuration the YAML text describes; raises PagingConfigError listing every mistake.

    `filename` only names the file in messages.
    """
    return read_paging_config(text, filename).config


def read_paging_config(text: str, filename: str) -> LoadedPagingConfig:
    """Like load_paging_config, and also the warnings (no fallback route, unused parts)."""
    reader = _Reader(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = "; ".join(part for part in (error.context, error.problem) if part)
        raise PagingConfigError([f"{filename}:{line}: not valid YAML: {what}"]) from None
    except yaml.reader.ReaderError as error:
        line = text[: error.position].count("\n") + 1
        raise PagingConfigError(
            [
                f"{filename}:{line}: not valid YAML: the character #x{error.character:04x} is "
                "not allowed in YAML text"
            ]
        ) from None
    except yaml.YAMLError as error:
        raise PagingConfigError([f"{filename}:1: not valid YAML: {error}"]) from None
    except RecursionError:
        raise PagingConfigError(
            [f"{filename}:1: not valid YAML for a paging file: nested too deeply"]
        ) from None
    if root is None:
        raise PagingConfigError(
            [f"{filename}:1: the file is empty; expected escalation_policies and routes"]
        )
    try:
        parts = _read_root(reader, root)
    except _TooLarge:
        raise PagingConfigError(
            [
                f"{filename}:1: the file has more than {MAX_NODES} keys and items; is it the "
                "right file?"
            ]
        ) from None
    reader.add_domain(
        config_problems(
            users=parts.users,
            channels=parts.channels,
            schedules=parts.schedules,
            escalation_policies=parts.escalation_policies,
            routes=parts.routes,
        )
    )
    if reader.errors:
        raise PagingConfigError(reader.messages())
    try:
        config = PagingConfig(
            users=parts.users,
            channels=parts.channels,
            schedules=parts.schedules,
            escalation_policies=parts.escalation_policies,
            routes=parts.routes,
        )
    except InvalidPagingConfig as error:  # only if a problem above was wrongly held back
        raise PagingConfigError([reader.render(p) for p in error.problems]) from None
    warnings = config_warnings(
        schedules=config.schedules,
        escalation_policies=config.escalation_policies,
        routes=config.routes,
    )
    return LoadedPagingConfig(config, tuple(reader.render(w, "warning: ") for w in warnings))


def parse_duration(text: str) -> timedelta:
    """`30s`, `10m`, `1h30m`, `2d`, `0s`: whole numbers of d, h, m, s in that order."""
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not {_DURATION_HINT}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if value > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than 365d")
    return value


def config_summary(config: PagingConfig) -> str:
    """`2 users, 2 channels, 1 schedule, 2 policies, 3 routes`."""

    def count(items: Sized, one: str, many: str) -> str:
        return f"{len(items)} {one if len(items) == 1 else many}"

    return ", ".join(
        (
            count(config.users, "user", "users"),
            count(config.channels, "channel", "channels"),
            count(config.schedules, "schedule", "schedules"),
            count(config.escalation_policies, "policy", "policies"),
            count(config.routes, "route", "routes"),
        )
    )


class _TooLarge(Exception):
    pass


def _kind(node: yaml.Node) -> str:
    """What a node is, for messages: `a string`, `a list`, `true`, `nothing`."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing (null)"
    if node.tag in (_INT, _FLOAT):
        return f"the number {node.value}"
    if node.tag == _BOOL:
        return f"the boolean {node.value}"
    if node.tag == _STR:
        return f"the string {node.value!r}"
    return f"a value tagged {node.tag}"


def _is_on(node: yaml.ScalarNode) -> bool:
    """A channel's `on:` key as written: YAML 1.1 resolves a plain `on` to true, but no key
    is a boolean, so the text is what was meant."""
    return node.tag == _BOOL and node.value == "on"


def _suggest(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_of(choices: Sequence[str]) -> str:
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


class _Reader:
    """Walks the nodes, remembering the line of every path and every problem found."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lines: dict[ConfigPath, int] = {(): 1}
        self.errors: list[tuple[int, int, str]] = []
        self.reported: set[ConfigPath] = set()
        self.unsure: set[str] = set()
        """Sections with an item whose id could not be read: it may be the one a
        reference names, so such references are not reported as dangling."""
        self.nodes = 0

    def line(self, path: ConfigPath) -> int:
        while path not in self.lines:
            path = path[:-1]
        return self.lines[path]

    def render(self, problem: ConfigProblem, prefix: str = "") -> str:
        return f"{self.filename}:{self.line(problem.path)}: {prefix}{problem}"

    def fail(self, path: ConfigPath, message: str, line: int | None = None) -> None:
        self.reported.add(path)
        problem = ConfigProblem(path, message)
        line = line or self.line(path)
        text = f"{self.filename}:{line}: {problem}"
        self.errors.append((line, len(self.errors), text))

    def lost_id(self, path: ConfigPath) -> None:
        """The item at `path` (a section's entry, or the section) has no readable id."""
        if 1 <= len(path) <= 2 and isinstance(path[0], str):
            self.unsure.add(path[0])

    def hide(self, path: ConfigPath) -> None:
        """A placeholder stands at `path`: the domain's views of it are not worth showing."""
        self.reported.add(path)

    def add_domain(self, problems: Iterable[ConfigProblem]) -> None:
        hidden = set(self.reported)
        for problem in problems:
            if problem.refers_to in self.unsure:
                continue
            if not any(problem.path[: len(p)] == p for p in hidden):
                self.fail(problem.path, problem.message)

    def messages(self) -> list[str]:
        return [message for _, _, message in sorted(self.errors)]

    def _count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge

    # Shapes

    def mapping(
        self,
        node: yaml.Node,
        path: ConfigPath,
        allowed: Sequence[str],
        required: Mapping[str, str] | None = None,
        inline_secrets: Mapping[str, str] | None = None,
    ) -> dict[str, yaml.Node] | None:
        """The mapping's entries by key, after checking its keys.

        `required` maps each required key to a hint of what it holds;
        `inline_secrets` maps keys that would hold a secret to the `_env` key to use.
        """
        if not isinstance(node, yaml.MappingNode):
            self.fail(path, f"expected a mapping (key: value), got {_kind(node)}")
            self.lost_id(path)
            return None
        entries: dict[str, yaml.Node] = {}
        seen: dict[str, int] = {}
        unknown: list[str] = []
        merged = False
        for key_node, value_node in node.value:
            self._count()
            if key_node.tag == "tag:yaml.org,2002:merge":
                key_path = (*path, "<<")
                self.lines[key_path] = key_node.start_mark.line + 1
                self.fail(key_path, "merge keys (<<) are not supported; write the keys out")
                self.hide(path)  # keys it would have brought are missing for that reason
                self.lost_id(path)
                merged = True
                continue
            if not isinstance(key_node, yaml.ScalarNode) or (
                key_node.tag != _STR and not _is_on(key_node)
            ):
                self.lines.setdefault((*path, "?"), key_node.start_mark.line + 1)
                self.fail((*path, "?"), f"a key must be a plain name, got {_kind(key_node)}")
                continue
            key = key_node.value
            key_path = (*path, key)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.fail(
                    key_path,
                    f"duplicate key {key!r}; it is already given on line {seen[key]}",
                    line,
                )
                continue
            seen[key] = line
            self.lines[key_path] = line
            if inline_secrets and key in inline_secrets:
                self.fail(
                    key_path,
                    "a secret must not be written in this file; put it in an environment "
                    f"variable and give that variable's name as {inline_secrets[key]}",
                )
            elif key not in allowed:
                hint = _suggest(key, allowed)
                unknown.append(key)
                self.fail(key_path, f"unknown key {key!r}{hint}; expected {_one_of(allowed)}")
            else:
                entries[key] = value_node
        for key, hint in (required or {}).items():
            if key in entries or (*path, key) in self.reported or merged:
                continue
            self.lines[(*path, key)] = node.start_mark.line + 1
            if key in seen:  # given, but refused above
                self.hide((*path, key))
            elif any(_suggest(other, [key]) for other in unknown):
                self.hide((*path, key))  # misspelt: the unknown key's message says so
            elif any((inline_secrets or {}).get(given) == key for given in seen):
                self.hide((*path, key))  # the secret itself was given: its message says so
            else:
                self.fail((*path, key), f"missing required key {key!r}; expected {hint}")
        return entries

    def sequence(self, node: yaml.Node, path: ConfigPath, example: str) -> list[yaml.Node] | None:
        """The list's items, each with its line remembered."""
        if not isinstance(node, yaml.SequenceNode):
            self.fail(path, f"expected a list (e.g. {example}), got {_kind(node)}")
            self.lost_id(path)
            return None
        for i, item in enumerate(node.value):
            self._count()
            self.lines[(*path, i)] = item.start_mark.line + 1
        return list(node.value)

    def items(
        self,
        node: yaml.Node | None,
        path: ConfigPath,
        example: str,
        read: Callable[[yaml.Node, ConfigPath], T],
    ) -> list[T]:
        """Each item read by `read` (absent key: none); items keep their places."""
        if node is None:
            return []
        found = self.sequence(node, path, example)
        return [read(item, (*path, i)) for i, item in enumerate(found or [])]

    # Scalars

    def string(self, node: yaml.Node, path: ConfigPath, expected: str = "a string") -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
            quote = " (quote it)" if isinstance(node, yaml.ScalarNode) and node.value else ""
            self.fail(path, f"expected {expected}, got {_kind(node)}{quote}")
            return None
        value: str = node.value
        return value

    def text(self, node: yaml.Node, path: ConfigPath, expected: str) -> str | None:
        """A scalar's text as written, whatever type YAML would give it."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            self.fail(path, f"expected {expected}, got {_kind(node)}")
            return None
        value: str = node.value
        return value

    def strings(self, node: yaml.Node | None, path: ConfigPath, example: str) -> list[str]:
        return [s or "" for s in self.items(node, path, example, self.string)]

    def string_map(self, node: yaml.Node, path: ConfigPath, example: str) -> dict[str, str]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(path, f"expected a mapping (e.g. {example}), got {_kind(node)}")
            return {}
        found: dict[str, str] = {}
        for key_node, value_node in node.value:
            self._count()
            key_path: ConfigPath = (*path, str(key_node.value))
            self.lines[key_path] = key_node.start_mark.line + 1
            key = self.string(key_node, key_path, "a name")
            value = self.string(value_node, key_path)
            if key is not None and key in found:
                self.fail(key_path, f"duplicate key {key!r}")
            elif key is not None and value is not None:
                found[key] = value
        return found

    def integer(self, node: yaml.Node, path: ConfigPath, expected: str) -> int | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
            self.fail(path, f"expected {expected}, got {_kind(node)}")
            return None
        value: int = _CONSTRUCT.construct_yaml_int(node)
        return value

    def boolean(self, node: yaml.Node, path: ConfigPath) -> bool | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
            self.fail(path, f"expected true or false, got {_kind(node)}")
            return None
        value: bool = _CONSTRUCT.construct_yaml_bool(node)
        return value

    def duration(self, node: yaml.Node, path: ConfigPath) -> timedelta | None:
        text = self.text(node, path, _DURATION_HINT)
        if text is None:
            return None
        if node.tag in (_INT, _FLOAT):
            self.fail(path, f"{text} has no unit; expected {_DURATION_HINT} (0s for none)")
            return None
        try:
            return parse_duration(text)
        except ValueError as error:
            self.fail(path, f"{error}; d, h, m and s may be combined in that order")
            return None

    def time_of_day(self, node: yaml.Node, path: ConfigPath, *, end: bool) -> time | None:
        expected = 'a time such as "09:00"' + (' (or "24:00")' if end else "")
        text = self.text(node, path, expected)
        if text is None:
            return None
        match = _TIME.fullmatch(text)
        hour, minute = (int(match.group(1)), int(match.group(2))) if match else (99, 99)
        if end and (hour, minute) == (24, 0):
            return time(0, 0)  # midnight at the end of the day; see Restriction
        if hour > 23 or minute > 59:
            self.fail(path, f"{text!r} is not a time of day; expected {expected}")
            return None
        return time(hour, minute)

    def local_datetime(self, node: yaml.Node, path: ConfigPath) -> datetime | None:
        expected = 'a local date and time such as "2026-03-01T09:00"'
        text = self.text(node, path, expected)
        if text is None:
            return None
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            self.fail(path, f"{text!r} is not a date and time; expected {expected}")
            return None
        if value.tzinfo is not None:
            self.fail(
                path,
                f"{text!r} has a UTC offset; expected a local time in the schedule's time zone, "
                "without one",
            )
            return None
        return value

    def zone(self, node: yaml.Node, path: ConfigPath) -> zoneinfo.ZoneInfo | None:
        expected = "an IANA time zone such as Europe/Berlin or UTC"
        name = self.string(node, path, expected)
        if name is None:
            return None
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            hint = _suggest(name, zoneinfo.available_timezones()) if name else ""
            self.fail(path, f"unknown time zone {name!r}{hint}; expected {expected}")
            return None

    def choice(
        self, node: yaml.Node, path: ConfigPath, what: str, choices: Mapping[str, T]
    ) -> T | None:
        names = list(choices)
        value = self.string(node, path, f"{what} ({_one_of(names)})")
        if value is None:
            return None
        if value not in choices:
            # The right value may differ only in case, or be a longer form (Friday for fri).
            variants = (value, value.upper(), value.lower(), value.lower()[:3])
            hint = next(filter(None, (_suggest(v, names) for v in variants)), "")
            self.fail(path, f"unknown {what} {value!r}{hint}; expected {_one_of(names)}")
            return None
        return choices[value]


@dataclass(frozen=True)
class _Parts:
    users: tuple[User, ...]
    channels: tuple[Channel, ...]
    schedules: tuple[Schedule, ...]
    escalation_policies: tuple[EscalationPolicy, ...]
    routes: tuple[Route, ...]


def _read_root(r: _Reader, root: yaml.Node) -> _Parts:
    entries = r.mapping(
        root,
        (),
        _ROOT_KEYS,
        required={
            "escalation_policies": "a list of policies (see docs/PAGING.md)",
            "routes": "a list of routes, e.g. [{policy: default}]",
        },
    )
    if entries is None:
        entries = {}
    return _Parts(
        users=tuple(r.items(entries.get("users"), ("users",), "[{id: alice}]", _user(r))),
        channels=tuple(
            r.items(entries.get("channels"), ("channels",), "[{id: hook, ...}]", _channel(r))
        ),
        schedules=tuple(
            r.items(entries.get("schedules"), ("schedules",), "[{id: primary}]", _schedule(r))
        ),
        escalation_policies=tuple(
            r.items(
                entries.get("escalation_policies"),
                ("escalation_policies",),
                "[{id: default, levels: [...]}]",
                _policy(r),
            )
        ),
        routes=tuple(r.items(entries.get("routes"), ("routes",), "[{policy: default}]", _route(r))),
    )


def _id(r: _Reader, entries: Mapping[str, yaml.Node], path: ConfigPath) -> str:
    node = entries.get("id")
    if node is None:
        r.lost_id(path)
        return ""
    value = r.string(node, (*path, "id"), "an id")
    if value is None and isinstance(node, yaml.ScalarNode):
        # `id: 42` is reported; keeping "42" spares its references a second message.
        return str(node.value)
    if value is None:
        r.lost_id(path)
    return value or ""


def _user(r: _Reader) -> Callable[[yaml.Node, ConfigPath], User]:
    def read(node: yaml.Node, path: ConfigPath) -> User:
        entries = r.mapping(node, path, _USER_KEYS, required={"id": "the user's id"})
        if entries is None:
            return User(id="")
        user = User(id=_id(r, entries, path))
        if "name" in entries:
            user = replace(user, name=r.string(entries["name"], (*path, "name")) or "")
        if "email" in entries:
            # "" stands for an address given but unreadable: not "no address".
            email = r.string(entries["email"], (*path, "email"), "an address")
            user = replace(user, email=email if email is not None else "")
        if "time_zone" in entries:
            user = replace(user, time_zone=r.zone(entries["time_zone"], (*path, "time_zone")))
        if "channels" in entries:
            ids = r.strings(entries["channels"], (*path, "channels"), "[ops-hook]")
            user = replace(user, channels=tuple(ids))
        return user

    return read


def _channel(r: _Reader) -> Callable[[yaml.Node, ConfigPath], Channel]:
    types = list(CHANNEL_TYPES)

    def read(node: yaml.Node, path: ConfigPath) -> Channel:
        if not isinstance(node, yaml.MappingNode):
            r.fail(path, f"expected a mapping (key: value), got {_kind(node)}")
            r.lost_id(path)
            return Channel(id="")
        # The type decides which keys are allowed, so it is read first.
        keys = {k.value: (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)}
        kind = None
        if "type" not in keys:
            r.lines[(*path, "type")] = node.start_mark.line + 1
            r.fail((*path, "type"), f"missing required key 'type'; expected {_one_of(types)}")
        else:
            key_node, value_node = keys["type"]
            r.lines[(*path, "type")] = key_node.start_mark.line + 1
            kind = r.string(value_node, (*path, "type"), f"a channel type ({_one_of(types)})")
            if kind is not None and kind not in CHANNEL_TYPES:
                r.fail(
                    (*path, "type"),
                    f"unknown channel type {kind!r}{_suggest(kind, types)}; expected "
                    f"{_one_of(types)}",
                )
        if kind == WebhookChannel.type:
            return _limited(r, node, path, _events(r, keys, path, _webhook(r, node, path)))
        if kind == EmailChannel.type:
            return _limited(r, node, path, _events(r, keys, path, _email(r, node, path)))
        if kind in (SlackChannel.type, TeamsChannel.type):
            chat = _chat(r, node, path, SlackChannel if kind == SlackChannel.type else TeamsChannel)
            return _limited(r, node, path, _events(r, keys, path, chat))
        if kind == PagerDutyChannel.type:
            return _limited(r, node, path, _events(r, keys, path, _pagerduty(r, node, path)))
        # Keep the id, so that references to the channel are not reported too.
        r.hide(path)
        channel_id = ""
        if "id" in keys:
            key_node, value_node = keys["id"]
            r.lines[(*path, "id")] = key_node.start_mark.line + 1
            channel_id = r.string(value_node, (*path, "id"), "an id") or ""
        if not channel_id:
            r.lost_id(path)
        return Channel(id=channel_id)

    return read


def _events(
    r: _Reader, keys: Mapping[str, tuple[yaml.Node, yaml.Node]], path: ConfigPath, channel: Channel
) -> Channel:
    """The channel's `on`: the changes of the incidents it paged it is told about."""
    if "on" not in keys:
        return channel
    where = (*path, "on")
    names = r.items(
        keys["on"][1],
        where,
        "[paged, acknowledged, resolved]",
        lambda n, p: r.choice(n, p, "event", _CHANNEL_EVENTS),
    )
    events = frozenset(e for e in names if e is not None)
    if len(events) < len(names):
        r.hide(where)  # an unknown name is reported; "must include paged" would only add noise
        events |= {ChannelEvent.PAGED}
    return replace(channel, on=events)


def _limited(r: _Reader, node: yaml.MappingNode, path: ConfigPath, channel: Channel) -> Channel:
    """The channel with its `rate_limit` (any type may carry one; checks.py refuses it where
    a digest cannot be sent)."""
    found = next(
        (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "rate_limit"),
        None,
    )
    if found is None:
        return channel
    where: ConfigPath = (*path, "rate_limit")
    expected = "a whole number of messages a minute, at least 1"
    entries = r.mapping(found, where, _RATE_LIMIT_KEYS, required={"per_minute": expected})
    if not entries or "per_minute" not in entries:
        return channel
    per_minute = r.integer(entries["per_minute"], (*where, "per_minute"), expected)
    if per_minute is None:
        return channel
    return replace(channel, rate_limit=RateLimit(per_minute))


def _webhook(r: _Reader, node: yaml.Node, path: ConfigPath) -> Channel:
    entries = r.mapping(
        node,
        path,
        _CHANNEL_KEYS[WebhookChannel.type],
        required={"id": "the channel's id", "url": "the URL to POST to"},
        inline_secrets={"secret": "secret_env"},
    )
    entries = entries or {}
    channel = WebhookChannel(id=_id(r, entries, path))
    if "url" in entries:
        channel = replace(channel, url=r.string(entries["url"], (*path, "url"), "a URL") or "")
    if "secret_env" in entries:
        name = r.string(entries["secret_env"], (*path, "secret_env"), "an environment variable")
        channel = replace(channel, secret_env=name if name is not None else "")
    if "timeout" in entries:
        timeout = r.duration(entries["timeout"], (*path, "timeout"))
        if timeout is not None:
            channel = replace(channel, timeout=timeout)
    if "headers" in entries:
        headers = r.string_map(entries["headers"], (*path, "headers"), "{X-Team: ops}")
        channel = replace(channel, headers=headers)
    if "template" in entries:
        channel = replace(channel, template=_template(r, entries["template"], (*path, "template")))
    return channel


def _email(r: _Reader, node: yaml.Node, path: ConfigPath) -> Channel:
    entries = r.mapping(
        node,
        path,
        _CHANNEL_KEYS[EmailChannel.type],
        required={"id": "the channel's id", "smtp": "{host: ..., port: ..., from: ...}"},
    )
    entries = entries or {}
    channel = EmailChannel(id=_id(r, entries, path))
    if "smtp" in entries:
        channel = replace(channel, smtp=_smtp(r, entries["smtp"], (*path, "smtp")))
    if "to" in entries:
        to = r.strings(entries["to"], (*path, "to"), "[oncall@example.com]")
        channel = replace(channel, to=tuple(to))
    if "template" in entries:
        channel = replace(channel, template=_template(r, entries["template"], (*path, "template")))
    return channel


def _chat(
    r: _Reader, node: yaml.Node, path: ConfigPath, kind: type[SlackChannel | TeamsChannel]
) -> Channel:
    """A Slack or Teams channel: both are a webhook URL from the environment."""
    service = "Slack incoming webhook" if kind is SlackChannel else "Teams Workflows webhook"
    entries = r.mapping(
        node,
        path,
        _CHANNEL_KEYS[kind.type],
        required={
            "id": "the channel's id",
            "url_env": f"the environment variable holding the {service} URL",
        },
        # The URL is the credential: whoever has it can post to the channel.
        inline_secrets={"url": "url_env"},
    )
    entries = entries or {}
    channel = kind(id=_id(r, entries, path))
    if "url_env" in entries:
        name = r.string(entries["url_env"], (*path, "url_env"), "an environment variable name")
        channel = replace(channel, url_env=name if name is not None else "")
    return _common(r, entries, path, channel)


def _pagerduty(r: _Reader, node: yaml.Node, path: ConfigPath) -> Channel:
    entries = r.mapping(
        node,
        path,
        _CHANNEL_KEYS[PagerDutyChannel.type],
        required={
            "id": "the channel's id",
            "routing_key_env": "the environment variable holding the integration's routing key",
        },
        inline_secrets={"routing_key": "routing_key_env", "integration_key": "routing_key_env"},
    )
    entries = entries or {}
    channel = PagerDutyChannel(id=_id(r, entries, path))
    if "routing_key_env" in entries:
        name = r.string(
            entries["routing_key_env"], (*path, "routing_key_env"), "an environment variable name"
        )
        channel = replace(channel, routing_key_env=name if name is not None else "")
    if "url" in entries:
        url = r.string(entries["url"], (*path, "url"), "a URL")
        channel = replace(channel, url=url if url is not None else "")
    return _common(r, entries, path, channel)


_C = TypeVar("_C", bound=SlackChannel | TeamsChannel | PagerDutyChannel)


def _common(r: _Reader, entries: Mapping[str, yaml.Node], path: ConfigPath, channel: _C) -> _C:
    """The keys Slack, Teams and PagerDuty channels share: `timeout` and `template`."""
    if "timeout" in entries:
        timeout = r.duration(entries["timeout"], (*path, "timeout"))
        if timeout is not None:
            channel = replace(channel, timeout=timeout)
    if "template" in entries:
        template = _template(r, entries["template"], (*path, "template"))
        if template is not None:
            channel = replace(channel, template=template)
    return channel


def _template(r: _Reader, node: yaml.Node, path: ConfigPath) -> MessageTemplate | None:
    expected = "a Jinja2 template (a string)"
    entries = r.mapping(node, path, _TEMPLATE_KEYS)
    if entries is None:
        return None
    title = r.string(entries["title"], (*path, "title"), expected) if "title" in entries else None
    body = r.string(entries["body"], (*path, "body"), expected) if "body" in entries else None
    if ("title" in entries and title is None) or ("body" in entries and body is None):
        r.hide(path)  # reported above; "no title or body" would only repeat it
        return MessageTemplate(title=title or "", body=body)
    return MessageTemplate(title=title, body=body)


def _smtp(r: _Reader, node: yaml.Node, path: ConfigPath) -> SmtpServer:
    entries = r.mapping(
        node,
        path,
        _SMTP_KEYS,
        required={"host": "the SMTP server's host name", "from": "the sender's address"},
        inline_secrets={"password": "password_env"},
    )
    entries = entries or {}

    def get(key: str, read: Callable[[yaml.Node, ConfigPath], T | None]) -> T | None:
        return read(entries[key], (*path, key)) if key in entries else None

    starttls = get("starttls", r.boolean) or False
    port = get("port", lambda n, p: r.integer(n, p, "a port number such as 587"))
    timeout = get("timeout", r.duration)
    return SmtpServer(
        host=get("host", r.string) or "",
        from_address=get("from", lambda n, p: r.string(n, p, "an address")) or "",
        port=port if port is not None else (587 if starttls else 25),
        starttls=starttls,
        username=_given(entries, "username", get("username", r.string)),
        password_env=_given(
            entries,
            "password_env",
            get("password_env", lambda n, p: r.string(n, p, "an environment variable name")),
        ),
        timeout=timeout if timeout is not None else timedelta(seconds=10),
    )


def _given(entries: Mapping[str, yaml.Node], key: str, value: str | None) -> str | None:
    """None if the key is absent; "" if it is given but could not be read (reported)."""
    if key not in entries:
        return None
    return value if value is not None else ""


def _schedule(r: _Reader) -> Callable[[yaml.Node, ConfigPath], Schedule]:
    def read(node: yaml.Node, path: ConfigPath) -> Schedule:
        entries = r.mapping(
            node,
            path,
            _SCHEDULE_KEYS,
            required={
                "id": "the schedule's id",
                "time_zone": "an IANA time zone such as Europe/Berlin",
                "layers": "a list of layers",
            },
        )
        entries = entries or {}
        zone = None
        if "time_zone" in entries:
            zone = r.zone(entries["time_zone"], (*path, "time_zone"))
        layers = r.items(
            entries.get("layers"), (*path, "layers"), "[{users: [alice], ...}]", _layer(r)
        )
        return Schedule(
            id=_id(r, entries, path),
            time_zone=zone or zoneinfo.ZoneInfo("UTC"),
            layers=tuple(layers),
        )

    return read


_PLACEHOLDER_HANDOFF = datetime(2000, 1, 3)


def _layer(r: _Reader) -> Callable[[yaml.Node, ConfigPath], Layer]:
    def read(node: yaml.Node, path: ConfigPath) -> Layer:
        entries = r.mapping(
            node,
            path,
            _LAYER_KEYS,
            required={
                "users": "a list of user ids taking turns, e.g. [alice, bob]",
                "rotation": f"daily, weekly or {_DURATION_HINT}",
                "handoff": 'the local start of the first turn, e.g. "2026-03-01T09:00"',
            },
        )
        entries = entries or {}
        rotation = None
        if "rotation" in entries:
            rotation = _rotation(r, entries["rotation"], (*path, "rotation"))
        handoff = None
        if "handoff" in entries:
            handoff = r.local_datetime(entries["handoff"], (*path, "handoff"))
        if "users" in entries:
            users = r.strings(entries["users"], (*path, "users"), "[alice, bob]")
        else:
            users = []
        return Layer(
            users=tuple(users),
            rotation=rotation if rotation is not None else timedelta(days=1),
            handoff=handoff or _PLACEHOLDER_HANDOFF,
            restrictions=tuple(
                r.items(
                    entries.get("restrict"),
                    (*path, "restrict"),
                    '[{days: [mon, tue], from: "09:00", to: "18:00"}]',
                    _restriction(r),
                )
            ),
        )

    return read


def _rotation(r: _Reader, node: yaml.Node, path: ConfigPath) -> timedelta | None:
    expected = f"daily, weekly or {_DURATION_HINT}"
    text = r.text(node, path, expected)
    if text is None:
        return None
    if text in ("daily", "weekly"):
        return timedelta(days=1 if text == "daily" else 7)
    try:
        return parse_duration(text)
    except ValueError:
        r.fail(path, f"{text!r} is not a rotation; expected {expected}")
        return None


def _restriction(r: _Reader) -> Callable[[yaml.Node, ConfigPath], Restriction]:
    def read(node: yaml.Node, path: ConfigPath) -> Restriction:
        entries = r.mapping(
            node,
            path,
            _RESTRICTION_KEYS,
            required={"from": 'a time such as "09:00"', "to": 'a time such as "18:00"'},
        )
        entries = entries or {}
        start = (
            r.time_of_day(entries["from"], (*path, "from"), end=False)
            if ("from" in entries)
            else None
        )
        end = r.time_of_day(entries["to"], (*path, "to"), end=True) if "to" in entries else None
        days = frozenset(Weekday)
        if "days" in entries:
            names = r.items(
                entries["days"],
                (*path, "days"),
                "[mon, tue, wed, thu, fri]",
                lambda n, p: r.choice(n, p, "weekday", _WEEKDAYS),
            )
            days = frozenset(d for d in names if d is not None)
            if len(days) < len(names):
                r.hide((*path, "days"))
        return Restriction(start=start or time(0), end=end or time(0), days=days)

    return read


def _policy(r: _Reader) -> Callable[[yaml.Node, ConfigPath], EscalationPolicy]:
    def read(node: yaml.Node, path: ConfigPath) -> EscalationPolicy:
        entries = r.mapping(
            node,
            path,
            _POLICY_KEYS,
            required={"id": "the policy's id", "levels": "a list of levels"},
        )
        entries = entries or {}
        policy = EscalationPolicy(
            id=_id(r, entries, path),
            levels=tuple(
                r.items(
                    entries.get("levels"),
                    (*path, "levels"),
                    "[{after: 0s, notify: [...]}]",
                    _level(r),
                )
            ),
        )
        if "ack_timeout" in entries:
            ack = r.duration(entries["ack_timeout"], (*path, "ack_timeout"))
            policy = replace(policy, ack_timeout=ack if ack is not None else timedelta(hours=1))
        if "repeat" in entries:
            repeat = r.integer(entries["repeat"], (*path, "repeat"), "a whole number such as 2")
            policy = replace(policy, repeat=repeat or 0)
        if "repeat_after" in entries:
            after = r.duration(entries["repeat_after"], (*path, "repeat_after"))
            policy = replace(
                policy, repeat_after=after if after is not None else DEFAULT_REPEAT_AFTER
            )
        return policy

    return read


def _level(r: _Reader) -> Callable[[yaml.Node, ConfigPath], Level]:
    def read(node: yaml.Node, path: ConfigPath) -> Level:
        entries = r.mapping(
            node,
            path,
            _LEVEL_KEYS,
            required={
                "after": f"{_DURATION_HINT}, from the start of paging (0s: at once)",
                "notify": "a list of targets, e.g. [{schedule: primary}]",
            },
        )
        entries = entries or {}
        after = r.duration(entries["after"], (*path, "after")) if "after" in entries else None
        targets = r.items(entries.get("notify"), (*path, "notify"), "[{user: alice}]", _target(r))
        return Level(after=after or timedelta(0), targets=tuple(targets))

    return read


def _target(r: _Reader) -> Callable[[yaml.Node, ConfigPath], Target]:
    expected = "exactly one of user, schedule, channel or action, e.g. {schedule: primary}"

    def read(node: yaml.Node, path: ConfigPath) -> Target:
        entries = r.mapping(node, path, _TARGET_KEYS)
        if entries is None:
            return Target(TargetKind.USER, "")
        if len(entries) != 1:
            if path not in r.reported:
                r.fail(path, f"expected {expected}")
            r.hide(path)
            return Target(TargetKind.USER, "")
        key, value = next(iter(entries.items()))
        if key == TargetKind.ACTION.value:
            return _action(r, value, (*path, key))
        target_id = r.string(value, (*path, key), "an id")
        return Target(TargetKind(key), target_id or "")

    return read


def _action(r: _Reader, node: yaml.Node, path: ConfigPath) -> Target:
    """`{webhook: ID, body: TEMPLATE}`: a request to a webhook channel (docs/PAGING.md)."""
    entries = r.mapping(
        node,
        path,
        _ACTION_KEYS,
        required={
            "webhook": "the id of a webhook channel",
            "body": "the request's body, a Jinja2 template",
        },
    )
    if entries is None:
        r.hide(path)
        return Target(TargetKind.ACTION, "", "")
    webhook = (
        r.string(entries["webhook"], (*path, "webhook"), "an id") if "webhook" in entries else None
    )
    body = (
        r.string(entries["body"], (*path, "body"), "a Jinja2 template (a string)")
        if "body" in entries
        else None
    )
    if webhook is None:
        r.hide((*path, "webhook"))
    return Target(TargetKind.ACTION, webhook or "", body)


def _route(r: _Reader) -> Callable[[yaml.Node, ConfigPath], Route]:
    def read(node: yaml.Node, path: ConfigPath) -> Route:
        entries = r.mapping(
            node, path, _ROUTE_KEYS, required={"policy": "the id of an escalation policy"}
        )
        entries = entries or {}
        policy = (
            r.string(entries["policy"], (*path, "policy"), "an id")
            if ("policy" in entries)
            else None
        )
        if policy is None:
            r.hide((*path, "policy"))
        match = _matcher(r, entries["match"], (*path, "match")) if "match" in entries else None
        return Route(policy=policy or "", match=match)

    return read


_UNREADABLE_MATCH = Matcher(sources=frozenset({""}))
"""Stands for a `match` with mistakes (reported): it must not become "match everything"."""


def _matcher(r: _Reader, node: yaml.Node, path: ConfigPath) -> Matcher:
    errors_before = len(r.errors)
    entries = r.mapping(node, path, _MATCH_KEYS)
    if entries is None:
        return _UNREADABLE_MATCH
    severities = {s.name: s for s in Severity}
    types = {t.name: t for t in IncidentType}

    def values(
        key: str, example: str, read: Callable[[yaml.Node, ConfigPath], T | None]
    ) -> frozenset[T]:
        if key not in entries:
            return frozenset()
        found = r.items(entries[key], (*path, key), example, read)
        if isinstance(entries[key], yaml.SequenceNode) and not found:
            r.fail((*path, key), "an empty list matches nothing; leave the key out to match any")
        return frozenset(v for v in found if v is not None)

    labels_regex: dict[str, re.Pattern[str]] = {}
    if "labels_regex" in entries:
        raw = r.string_map(entries["labels_regex"], (*path, "labels_regex"), '{model: "gpt-.*"}')
        for key, pattern in raw.items():
            try:
                labels_regex[key] = re.compile(pattern)
            except re.error as error:
                r.fail(
                    (*path, "labels_regex", key),
                    f"{pattern!r} is not a regular expression: {error}; expected a Python "
                    "pattern matched against the whole value",
                )
    labels: dict[str, str] = {}
    if "labels" in entries:
        labels = r.string_map(entries["labels"], (*path, "labels"), "{region: eu-west-1}")
    matcher = Matcher(
        severities=values(
            "severity", "[P0, P1]", lambda n, p: r.choice(n, p, "severity", severities)
        ),
        types=values("type", "[SECURITY]", lambda n, p: r.choice(n, p, "incident type", types)),
        sources=values("source", "[llm-shield]", r.string),
        labels=labels,
        labels_regex=labels_regex,
    )
    if entries and matcher.is_empty:
        if len(r.errors) == errors_before:
            r.fail(path, "no condition; leave match out to make this the fallback route")
        return _UNREADABLE_MATCH  # every key given was refused: not a fallback either
    return matcher
