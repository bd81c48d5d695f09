"""Settings, from command-line flags, then environment variables, then defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from incident_manager.domain.autoresolve import AutoResolvePolicies

ENV_PREFIX = "INCIDENT_MANAGER_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    listen: str = "0.0.0.0:9000"
    """host:port to serve gRPC on."""
    database: str = "./data/incident-manager.db"
    """Path of the SQLite database file (created with its folder if missing)."""
    dedup_window: timedelta = timedelta(minutes=15)
    """How long after an incident opens alerts with its fingerprint still merge into it."""
    log_level: str = "INFO"
    shutdown_grace: timedelta = timedelta(seconds=10)
    """How long in-flight calls get to finish after SIGTERM."""
    drain_delay: timedelta = timedelta(0)
    """After SIGTERM, how long to keep serving while health says NOT_SERVING, so load
    balancers stop sending traffic first (a few seconds on Kubernetes)."""
    stream_buffer: int = 1000
    """Live events buffered per StreamIncidents subscriber before it is ended as too slow."""
    rate_limit: float = 0.0
    """Alerts per second each source may send on average; 0 turns rate limiting off."""
    rate_burst: int = 100
    """Alerts a quiet source may send at once before its rate limit applies."""
    auto_resolve: AutoResolvePolicies = dataclasses.field(default_factory=AutoResolvePolicies)
    """When incidents resolve by themselves as their alerts clear, per source."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> timedelta:
    """`90`, `90s`, `15m`, `1h` or `500ms`; a bare number is seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. 90s, 15m or 1h")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _positive_duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value <= timedelta(0):
        raise ValueError(f"{text!r} must be longer than zero")
    return value


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be a positive whole number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{text!r} must be zero or more")
    return value


def _listen(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port (e.g. 0.0.0.0:9000 or [::]:9000)")
    return text


_OPTIONS = (
    # flag, field, parser, help
    ("--listen", "listen", _listen, "host:port to serve gRPC on"),
    ("--database", "database", str, "SQLite database file"),
    ("--dedup-window", "dedup_window", _positive_duration, "dedup window, e.g. 15m"),
    ("--log-level", "log_level", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    ("--shutdown-grace", "shutdown_grace", _positive_duration, "grace period on SIGTERM"),
    ("--drain-delay", "drain_delay", parse_duration, "serve on while NOT_SERVING, e.g. 5s"),
    ("--stream-buffer", "stream_buffer", _positive_int, "live events buffered per subscriber"),
    ("--rate-limit", "rate_limit", _non_negative_float, "alerts/s per source, 0 = no limit"),
    ("--rate-burst", "rate_burst", _positive_int, "alerts a quiet source may send at once"),
    (
        "--auto-resolve",
        "auto_resolve",
        AutoResolvePolicies.parse,
        "first, last, all or never, per source: 'llm-sentinel=first,*=all'",
    ),
)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags win over environment variables, which win over defaults.

    A bad value exits with a message naming the flag or variable.
    """
    environ = os.environ if environ is None else environ
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="incident-manager",
        description="gRPC incident manager for LLM operations.",
        epilog="Every flag can also be set with an environment variable: "
        + ", ".join(f"{flag} as {env_name(field)}" for flag, field, _, _ in _OPTIONS),
    )

    def checked(parse: object, what: str) -> object:
        def run(text: str) -> object:
            try:
                return parse(text)  # type: ignore[operator]
            except ValueError as error:
                raise argparse.ArgumentTypeError(f"{what}: {error}") from error

        return run

    values: dict[str, object] = {}
    for flag, field, parse, help_text in _OPTIONS:
        env_value = environ.get(env_name(field))
        if env_value is not None:
            try:
                values[field] = parse(env_value)
            except ValueError as error:
                parser.error(f"environment variable {env_name(field)}: {error}")
        default = values.get(field, getattr(defaults, field))
        parser.add_argument(
            flag,
            dest=field,
            type=checked(parse, flag),  # type: ignore[arg-type]
            default=default,
            help=f"{help_text} (env {env_name(field)}; default {getattr(defaults, field)})",
        )
    namespace = parser.parse_args(argv)
    return Settings(**vars(namespace))
