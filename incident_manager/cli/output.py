"""How answers look: proto3 JSON or YAML for scripts, tables and lines for people.

JSON is the proto3 JSON mapping (`MessageToJson`), field names in lowerCamelCase
as grpcurl prints them, so `imctl ... -o json | jq` sees what the API returns.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.text import Text

from generated.incident_manager.v1 import incident_pb2
from incident_manager.cli.failures import usage

FORMATS = ("table", "json", "yaml")

SEVERITY_STYLES: dict[int, str] = {
    incident_pb2.SEVERITY_P0: "bold white on red",
    incident_pb2.SEVERITY_P1: "bold red",
    incident_pb2.SEVERITY_P2: "yellow",
    incident_pb2.SEVERITY_P3: "cyan",
    incident_pb2.SEVERITY_P4: "dim",
}


def console(stderr: bool = False) -> Console:
    """A console fitted to the terminal; piped output is not cut to 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and not os.environ.get("COLUMNS"):
        width = 200
    return Console(file=stream, width=width, highlight=False, soft_wrap=True)


def to_json(message: Message, indent: int | None = 2) -> str:
    """`message` in the proto3 JSON mapping."""
    return json_format.MessageToJson(message, indent=indent, ensure_ascii=False)


def emit_data(message: Message, fmt: str) -> None:
    """Print `message` as JSON or YAML (the same mapping, as YAML)."""
    if fmt == "json":
        click.echo(to_json(message))
    else:
        data = json_format.MessageToDict(message)
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


def short_name(value: int, enum: EnumDescriptor) -> str:
    """`SEVERITY_P1` -> `P1`, `INCIDENT_STATE_INVESTIGATING` -> `investigating`."""
    if value not in enum.values_by_number:
        return str(value)
    name = enum.values_by_number[value].name
    prefix = _prefix(enum)
    rest = name[len(prefix) :] if name.startswith(prefix) else name
    return rest if enum.name == "Severity" else rest.lower().replace("_", "-")


def _prefix(enum: EnumDescriptor) -> str:
    # Our enums are prefixed with the enum's name in UPPER_SNAKE (buf's rule).
    snake = "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(enum.name))
    return snake.upper() + "_"


def parse_enum(text: str, enum: EnumDescriptor, option: str) -> Any:
    """`p1`, `P1` or `SEVERITY_P1` -> the value; anything else a usage error listing the choices.

    Typed Any: the stubs type each enum's values as its own NewType of int."""
    wanted = text.strip().upper().replace("-", "_")
    prefix = _prefix(enum)
    for value in enum.values:
        if value.number == 0:
            continue
        if wanted in (value.name, value.name[len(prefix) :]):
            return int(value.number)
    choices = ", ".join(short_name(v.number, enum) for v in enum.values if v.number)
    raise usage(f"{option} {text!r}: choose one of {choices}")


def parse_enums(texts: Iterable[str], enum: EnumDescriptor, option: str) -> list[Any]:
    """Repeated and comma-separated values (`--severity P0,P1 --severity P2`)."""
    return [
        parse_enum(part, enum, option) for text in texts for part in text.split(",") if part.strip()
    ]


def severity_text(severity: int) -> Text:
    """The severity, coloured."""
    return Text(
        short_name(severity, incident_pb2.Severity.DESCRIPTOR),
        style=SEVERITY_STYLES.get(severity, ""),
    )


def state_text(state: int) -> str:
    """The state in lower case (`investigating`)."""
    return short_name(state, incident_pb2.IncidentState.DESCRIPTOR)


def moment(timestamp: Timestamp) -> datetime | None:
    """A set timestamp as an aware datetime; None if unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return None
    return timestamp.ToDatetime(tzinfo=UTC)


def span(delta: timedelta) -> str:
    """A short duration: `45s`, `12m`, `3h`, `2d`."""
    seconds = int(abs(delta.total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def age(timestamp: Timestamp, now: datetime | None = None) -> str:
    """How long ago (`12m`), or `-` if unset."""
    when = moment(timestamp)
    if when is None:
        return "-"
    return span((now or datetime.now(UTC)) - when)


def relative(timestamp: Timestamp, now: datetime | None = None) -> str:
    """`12m ago` or `in 3h`."""
    when = moment(timestamp)
    if when is None:
        return "-"
    delta = (now or datetime.now(UTC)) - when
    return f"{span(delta)} ago" if delta >= timedelta(0) else f"in {span(delta)}"


def absolute(timestamp: Timestamp) -> str:
    """The local time with its offset: `2026-03-01 10:02:03 +0100`."""
    when = moment(timestamp)
    if when is None:
        return "-"
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def both(timestamp: Timestamp) -> str:
    """`12m ago (2026-03-01 10:02:03 +0100)`."""
    if moment(timestamp) is None:
        return "-"
    return f"{relative(timestamp)} ({absolute(timestamp)})"


def parse_duration(text: str, option: str) -> timedelta:
    """`90s`, `30m`, `1h30m`, `2d` -> a timedelta; anything else a usage error."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    rest = text.strip().lower()
    total = 0
    number = ""
    if not rest:
        raise usage(f"{option}: give a duration such as 30m, 1h or 2d")
    for char in rest:
        if char.isdigit():
            number += char
        elif char in units and number:
            total += int(number) * units[char]
            number = ""
        else:
            raise usage(f"{option} {text!r}: give a duration such as 30m, 1h30m or 2d")
    if number or total <= 0:
        raise usage(f"{option} {text!r}: give a duration such as 30m, 1h30m or 2d")
    return timedelta(seconds=total)


def parse_time(text: str, option: str, now: datetime | None = None) -> datetime:
    """`now`, `+2h`, `-30m`, or ISO 8601 (`2026-03-01T09:00`, local time unless it says)."""
    now = now or datetime.now(UTC)
    stripped = text.strip()
    if stripped.lower() == "now":
        return now
    if stripped[:1] in "+-" and len(stripped) > 1:
        delta = parse_duration(stripped[1:], option)
        return now + delta if stripped[0] == "+" else now - delta
    try:
        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError:
        raise usage(
            f"{option} {text!r}: give a time such as 2026-03-01T09:00, 2026-03-01T09:00Z, "
            "+2h or now"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed


def timestamp_of(when: datetime) -> Timestamp:
    """A protobuf Timestamp for an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(when.astimezone(UTC))
    return stamp


def short_id(identifier: str) -> str:
    """The first 8 hex digits after the prefix (`inc_3f2a9c1d`): enough to tell apart,
    and accepted back as a unique prefix."""
    prefix, _, rest = identifier.partition("_")
    return f"{prefix}_{rest[:8]}" if rest else identifier


def label_pairs(labels: Any) -> str:
    """`k=v, k2=v2` in key order."""
    return ", ".join(f"{key}={labels[key]}" for key in sorted(labels))


def parse_pairs(texts: Iterable[str], option: str) -> dict[str, str]:
    """`k=v` options (repeated, or comma-separated) -> a dict."""
    pairs: dict[str, str] = {}
    for text in texts:
        for part in text.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise usage(f"{option} {part!r}: write key=value")
            pairs[key.strip()] = value.strip()
    return pairs


def check_format(fmt: str) -> str:
    """The output format, checked (click checks too; this guards programmatic use)."""
    if fmt not in FORMATS:
        raise usage(f"-o {fmt!r}: choose one of {', '.join(FORMATS)}")
    return fmt
