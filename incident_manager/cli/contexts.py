"""Named contexts in $XDG_CONFIG_HOME/imctl/config.toml, as kubectl keeps them.

    current-context = "prod"

    [contexts.prod]
    server = "incidents.example.com:443"
    tls = true
    token-file = "/home/alice/.config/imctl/prod.token"

    [contexts.local]
    server = "localhost:9000"

What a command uses is decided per setting: a flag wins over the environment
(IMCTL_SERVER, IMCTL_TOKEN, ...), which wins over the context; the context is
`--context`, else IMCTL_CONTEXT, else `current-context`.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from incident_manager.cli.failures import usage

DEFAULT_SERVER = "localhost:9000"

KEYS: dict[str, type] = {
    "server": str,
    "token": str,
    "token-file": str,
    "tls": bool,
    "ca": str,
    "cert": str,
    "key": str,
    "user": str,
    "schedule": str,
}
"""The settings a context may hold, and their TOML types."""

ENVIRONMENT: dict[str, str] = {
    "server": "IMCTL_SERVER",
    "token": "IMCTL_TOKEN",
    "token-file": "IMCTL_TOKEN_FILE",
    "tls": "IMCTL_TLS",
    "ca": "IMCTL_CA",
    "cert": "IMCTL_CERT",
    "key": "IMCTL_KEY",
    "user": "IMCTL_USER",
    "schedule": "IMCTL_SCHEDULE",
}
"""The environment variable of each setting."""

Value = str | bool


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the contexts live: $XDG_CONFIG_HOME/imctl/config.toml, else ~/.config/..."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "imctl" / "config.toml"


@dataclass
class ConfigFile:
    """The contexts file: which context is current, and each context's settings."""

    path: Path
    current: str = ""
    contexts: dict[str, dict[str, Value]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ConfigFile:
        """Read `path`; a missing file is an empty configuration, a broken one a usage error."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise usage(f"cannot read {path}: {error}") from None
        current = data.get("current-context", "")
        contexts = data.get("contexts", {})
        if not isinstance(current, str) or not isinstance(contexts, dict):
            raise usage(f"{path}: current-context must be a string and [contexts] a table")
        checked: dict[str, dict[str, Value]] = {}
        for name, settings in contexts.items():
            if not isinstance(settings, dict):
                raise usage(f"{path}: contexts.{name} must be a table")
            for key, value in settings.items():
                if key not in KEYS:
                    raise usage(
                        f"{path}: contexts.{name}.{key} is not a setting ({', '.join(KEYS)})"
                    )
                if not isinstance(value, KEYS[key]):
                    raise usage(f"{path}: contexts.{name}.{key} must be a {KEYS[key].__name__}")
            checked[name] = dict(settings)
        return cls(path, current, checked)

    def save(self) -> None:
        """Write the file back (only imctl's own keys), readable by its owner only:
        a context may hold a token."""
        lines = []
        if self.current:
            lines.append(f"current-context = {_toml_value(self.current)}")
        for name, settings in self.contexts.items():
            lines.append("")
            lines.append(f"[contexts.{_toml_key(name)}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in settings.items())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".toml.tmp")
        temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
        temporary.chmod(0o600)
        temporary.replace(self.path)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Settings:
    """How to reach the server and who is acting, after flags, environment and context."""

    server: str
    context: str
    token: str = ""
    tls: bool = False
    ca: str = ""
    cert: str = ""
    key: str = ""
    user: str = ""
    schedule: str = ""


def resolve(
    flags: Mapping[str, Value | None],
    environ: Mapping[str, str],
    config: ConfigFile,
    context: str | None,
) -> Settings:
    """Each setting from the first of flag, environment, context that gives it."""
    name = context or environ.get("IMCTL_CONTEXT") or config.current
    chosen: Mapping[str, Value] = {}
    if name:
        if name not in config.contexts:
            known = ", ".join(sorted(config.contexts)) or "none"
            raise usage(f"no context named {name!r} in {config.path} (contexts: {known})")
        chosen = config.contexts[name]
    layers: list[Mapping[str, Value | None]] = [flags, _from_environment(environ), chosen]

    def first(key: str) -> Value | None:
        for layer in layers:
            value = layer.get(key)
            if value is not None and value != "":
                return value
        return None

    token = ""
    # A token and a token file are one setting: the layer that gives either wins.
    for layer in layers:
        if layer.get("token"):
            token = str(layer["token"])
            break
        if layer.get("token-file"):
            token = _read_token(str(layer["token-file"]))
            break
    ca, cert, key = (str(first(k) or "") for k in ("ca", "cert", "key"))
    if bool(cert) != bool(key):
        raise usage("--cert and --key go together (a client certificate and its key)")
    return Settings(
        server=str(first("server") or DEFAULT_SERVER),
        context=name,
        token=token,
        tls=bool(first("tls")) or bool(ca or cert),
        ca=ca,
        cert=cert,
        key=key,
        user=str(first("user") or ""),
        schedule=str(first("schedule") or ""),
    )


def _from_environment(environ: Mapping[str, str]) -> dict[str, Value | None]:
    found: dict[str, Value | None] = {}
    for key, variable in ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw is None or raw == "":
            continue
        if KEYS[key] is bool:
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise usage(f"{variable}={raw!r}: say true or false")
            found[key] = raw.lower() in ("1", "true", "yes")
        else:
            found[key] = raw
    return found


def _read_token(path: str) -> str:
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise usage(f"cannot read the token file {path}: {error}") from None
    if not token:
        raise usage(f"the token file {path} is empty")
    return token
