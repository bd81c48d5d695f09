"""Settings, from command-line flags, then environment variables, then defaults; and
the files they name that the server reads at start (the tokens file)."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

from incident_manager.domain.access import Credentials, CredentialsFileError
from incident_manager.domain.autoresolve import AutoResolvePolicies

ENV_PREFIX = "INCIDENT_MANAGER_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    listen: str = "0.0.0.0:9000"
    """host:port to serve gRPC on."""
    database: str = "./data/incident-manager.db"
    """Path of the SQLite database file (created with its folder if missing), or a
    `postgresql://` URL of a PostgreSQL database that several replicas can share."""
    dedup_window: timedelta = timedelta(minutes=15)
    """How long after an incident's most recent alert (the one that opened it, or the latest
    merged) alerts with its fingerprint still merge into it; each merge restarts it."""
    log_level: str = "INFO"
    shutdown_grace: timedelta = timedelta(seconds=10)
    """How long in-flight calls get to finish after SIGTERM."""
    drain_delay: timedelta = timedelta(0)
    """After SIGTERM, how long to keep serving while health says NOT_SERVING, so load
    balancers stop sending traffic first (a few seconds on Kubernetes)."""
    stream_buffer: int = 1000
    """Live events buffered per StreamIncidents subscriber; one further behind catches up
    from storage on the same stream."""
    sqlite_cache: int = 64
    """The SQLite writer's page cache in MiB; it fills as the database grows, up to this."""
    rate_limit: float = 0.0
    """Alerts per second each source may send on average; 0 turns rate limiting off."""
    rate_burst: int = 100
    """Alerts a quiet source may send at once before its rate limit applies."""
    auto_resolve: AutoResolvePolicies = dataclasses.field(default_factory=AutoResolvePolicies)
    """When incidents resolve by themselves as their alerts clear, per source."""
    global_rate_limit: float = 0.0
    """Alerts per second all sources together may send; 0 turns it off. Under it,
    the least severe alerts are shed first and P0 never."""
    global_rate_burst: int = 1000
    """Alerts the whole server accepts at once before the global limit applies."""
    max_pending_alerts: int = 10_000
    """Alerts accepted but not yet stored at most: past a quarter of it P4 alerts are
    shed, past half P3, three quarters P2, all of it P1; P0 never."""
    tokens_file: str = ""
    """Bearer-token credentials file (token hashes, principals, roles); empty turns
    token authentication off."""
    tls_cert: str = ""
    """PEM certificate chain to serve TLS with; needs tls_key."""
    tls_key: str = ""
    """PEM private key of tls_cert."""
    tls_client_ca: str = ""
    """PEM CA bundle; when set, clients must present a certificate it signed
    (mutual TLS), and the certificate's common name becomes the principal."""
    reflection: str = "open"
    """Server reflection: open (anyone), authenticated (any valid credential) or off."""
    health_listen: str = ""
    """Extra plaintext host:port serving only the health service, for probes that
    cannot speak TLS (the kubelet's gRPC probe); empty turns it off."""
    metrics_listen: str = "0.0.0.0:9002"
    """host:port for Prometheus metrics at /metrics; `off` turns it off."""
    rpc_log: str = "all"
    """One JSON log line per finished call: all, errors (non-OK only) or off."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request or response message; larger ones get RESOURCE_EXHAUSTED."""
    max_concurrent_calls: int = 1000
    """Unary calls in progress per method at most; more get RESOURCE_EXHAUSTED."""
    max_subscribers: int = 1000
    """StreamIncidents subscribers at most, over all connections."""
    max_ingest_streams: int = 200
    """StreamAlerts streams at most, over all connections."""
    paging_config: str = ""
    """The paging configuration file (YAML: users, channels, schedules, escalation
    policies, routes; docs/PAGING.md); empty means nobody is paged. SIGHUP reloads it."""
    paging_lease: timedelta = timedelta(seconds=60)
    """How long a replica may take to send one page before another replica takes the
    delivery over (sending it again, with the same id)."""
    keepalive_time: timedelta = timedelta(seconds=60)
    """How often the server pings an idle connection to find dead peers."""
    keepalive_timeout: timedelta = timedelta(seconds=20)
    """How long a keepalive ping may go unanswered before the connection is closed."""
    min_client_ping_interval: timedelta = timedelta(seconds=10)
    """Clients pinging more often than this are sent GOAWAY ("too many pings")."""
    compression: str = "none"
    """Compression of responses by default: none, gzip or deflate. Compressed
    requests are accepted whatever this says."""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def format_duration(value: timedelta) -> str:
    """A duration as people write it and `parse_duration` reads it: `15m`, `10s`, `500ms`."""
    millis = round(value.total_seconds() * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis and millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms" if millis else "0s"


def shown(value: object) -> str:
    """A default as --help and the documents show it: as one would write it on the command line."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value == "":
        return "empty"
    return str(value)


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


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return value

    return parse


def _metrics_listen(text: str) -> str:
    return "off" if text.strip().lower() in ("off", "") else _listen(text)


def _optional_listen(text: str) -> str:
    return "" if text.strip().lower() in ("off", "") else _listen(text)


_OPTIONS = (
    # flag, field, parser, help
    ("--listen", "listen", _listen, "host:port to serve gRPC on"),
    ("--database", "database", str, "SQLite database file, or a postgresql:// URL"),
    (
        "--dedup-window",
        "dedup_window",
        _positive_duration,
        "merge an alert into an incident whose last alert is at most this old, e.g. 15m",
    ),
    ("--log-level", "log_level", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    ("--shutdown-grace", "shutdown_grace", _positive_duration, "grace period on SIGTERM"),
    ("--drain-delay", "drain_delay", parse_duration, "serve on while NOT_SERVING, e.g. 5s"),
    ("--stream-buffer", "stream_buffer", _positive_int, "live events buffered per subscriber"),
    ("--sqlite-cache", "sqlite_cache", _positive_int, "SQLite writer page cache, MiB"),
    ("--rate-limit", "rate_limit", _non_negative_float, "alerts/s per source, 0 = no limit"),
    ("--rate-burst", "rate_burst", _positive_int, "alerts a quiet source may send at once"),
    (
        "--auto-resolve",
        "auto_resolve",
        AutoResolvePolicies.parse,
        "first, last, all or never, per source: 'llm-sentinel=first,*=all'",
    ),
    (
        "--global-rate-limit",
        "global_rate_limit",
        _non_negative_float,
        "alerts/s over all sources, least severe shed first; 0 = no limit",
    ),
    ("--global-rate-burst", "global_rate_burst", _positive_int, "alerts the server takes at once"),
    (
        "--max-pending-alerts",
        "max_pending_alerts",
        _positive_int,
        "alerts waiting to be stored before the least severe are shed",
    ),
    ("--tokens-file", "tokens_file", str, "bearer-token credentials file; empty = no tokens"),
    ("--tls-cert", "tls_cert", str, "PEM certificate chain; serves TLS"),
    ("--tls-key", "tls_key", str, "PEM private key of --tls-cert"),
    ("--tls-client-ca", "tls_client_ca", str, "PEM CA that client certificates must chain to"),
    (
        "--reflection",
        "reflection",
        _choice("open", "authenticated", "off"),
        "open, authenticated or off",
    ),
    ("--health-listen", "health_listen", _optional_listen, "plaintext health-only host:port"),
    ("--metrics-listen", "metrics_listen", _metrics_listen, "Prometheus host:port, or off"),
    ("--rpc-log", "rpc_log", _choice("all", "errors", "off"), "log each call: all, errors or off"),
    ("--max-message-bytes", "max_message_bytes", _positive_int, "largest message in bytes"),
    ("--max-concurrent-calls", "max_concurrent_calls", _positive_int, "unary calls per method"),
    ("--max-subscribers", "max_subscribers", _positive_int, "StreamIncidents subscribers"),
    ("--max-ingest-streams", "max_ingest_streams", _positive_int, "StreamAlerts streams"),
    ("--keepalive-time", "keepalive_time", _positive_duration, "ping idle connections every"),
    ("--keepalive-timeout", "keepalive_timeout", _positive_duration, "ping answer deadline"),
    (
        "--min-client-ping-interval",
        "min_client_ping_interval",
        _positive_duration,
        "least time between client pings",
    ),
    ("--compression", "compression", _choice("none", "gzip", "deflate"), "response compression"),
    ("--paging-config", "paging_config", str, "paging configuration file; empty = nobody paged"),
    ("--paging-lease", "paging_lease", _positive_duration, "time one page may take to send"),
)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


FLAGS = {flag: field for flag, field, _, _ in _OPTIONS}
"""Every flag of the server, with the Settings field it sets."""


class _Parser(argparse.ArgumentParser):
    """Says what is wrong in two lines (the mistake, then what to try) instead of the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n{self.prog}: {_hint(message)}\n")


def _hint(message: str) -> str:
    """The nearest flag to an unknown one, if any is near, and where every flag is listed."""
    listed = "`incident-manager --help` lists every flag"
    if message.startswith("unrecognized arguments:"):
        for word in message.removeprefix("unrecognized arguments:").split():
            flag = word.split("=", 1)[0]
            if not flag.startswith("-"):
                continue
            near = difflib.get_close_matches(flag, FLAGS, n=1, cutoff=0.6)
            if near:
                return f"did you mean {near[0]}? {listed}"
    return f"{listed} and its environment variable"


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags win over environment variables, which win over defaults.

    A bad value exits with a message naming the flag or variable.
    """
    environ = os.environ if environ is None else environ
    defaults = Settings()
    parser = _Parser(
        prog="incident-manager",
        description="gRPC incident manager for LLM operations.",
        epilog="Every flag can also be set with an environment variable: "
        + ", ".join(f"{flag} as {env_name(field)}" for flag, field, _, _ in _OPTIONS),
    )

    def checked(parse: object) -> object:
        # argparse names the flag itself ("argument --dedup-window: ...").
        def run(text: str) -> object:
            try:
                return parse(text)  # type: ignore[operator]
            except ValueError as error:
                raise argparse.ArgumentTypeError(str(error)) from error

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
            type=checked(parse),  # type: ignore[arg-type]
            default=default,
            help=f"{help_text} (env {env_name(field)}; default {shown(getattr(defaults, field))})",
        )
    namespace = parser.parse_args(argv)
    settings = Settings(**vars(namespace))
    problem = _inconsistency(settings)
    if problem:
        parser.error(problem)
    return settings


def _inconsistency(settings: Settings) -> str:
    if bool(settings.tls_cert) != bool(settings.tls_key):
        return "--tls-cert and --tls-key go together: give both or neither"
    if settings.tls_client_ca and not settings.tls_cert:
        return "--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first"
    return ""


class TokensFileError(Exception):
    """The tokens file cannot be read or used; the message names the file (and the line)."""


def read_tokens_file(path: str) -> Credentials:
    """The credentials the tokens file at `path` lists (the server's and `tokens check`'s)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise TokensFileError(f"cannot read the tokens file {path}: {error.strerror}") from error
    except UnicodeDecodeError:
        # Never quote the bytes: the path may name a key or another secret.
        raise TokensFileError(
            f"cannot read the tokens file {path}: it is not UTF-8 text; is it the right file?"
        ) from None
    try:
        return Credentials.parse(text)
    except CredentialsFileError as error:
        raise TokensFileError(error.in_file(path)) from None
