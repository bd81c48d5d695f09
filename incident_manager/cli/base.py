"""The `imctl` group, the options every command shares, and the session they build.

Connection options are accepted before or after the command (`imctl --server X
ls` and `imctl ls --server X`), as kubectl does; the last one given wins.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from incident_manager import __version__
from incident_manager.cli.connect import Server
from incident_manager.cli.contexts import ConfigFile, Settings, Value, config_path, resolve

F = TypeVar("F", bound=Callable[..., Any])

FLAGS = "imctl.flags"


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is None or value is False or value == "":
            return
        ctx.find_root().meta.setdefault(FLAGS, {})[key] = value

    return store


CONNECTION_OPTIONS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("--server", "-s"), "server", {"help": "host:port of the server [env IMCTL_SERVER]"}),
    (("--token",), "token", {"help": "bearer token [env IMCTL_TOKEN]"}),
    (("--token-file",), "token-file", {"help": "file holding the token [env IMCTL_TOKEN_FILE]"}),
    (("--tls",), "tls", {"is_flag": True, "help": "use TLS [env IMCTL_TLS]"}),
    (("--ca",), "ca", {"help": "CA certificates to trust (PEM); implies --tls [env IMCTL_CA]"}),
    (("--cert",), "cert", {"help": "client certificate for mutual TLS (PEM) [env IMCTL_CERT]"}),
    (("--key",), "key", {"help": "the client certificate's key (PEM) [env IMCTL_KEY]"}),
    (("--context",), "context", {"help": "named context from the config file [env IMCTL_CONTEXT]"}),
    (("--as",), "user", {"help": "who acts, without a token [env IMCTL_USER]"}),
]


def connection_options(function: F) -> F:
    """Add the connection options to a command (or the group)."""
    for names, key, extra in reversed(CONNECTION_OPTIONS):
        function = click.option(
            *names,
            key.replace("-", "_"),
            expose_value=False,
            callback=_remember(key),
            **extra,
        )(function)
    return function


def output_option(function: F) -> F:
    """Add `-o table|json|yaml`."""
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(["table", "json", "yaml"]),
        default="table",
        show_default=True,
        help="table for people; json (proto3 JSON mapping) or yaml for scripts",
    )(function)


class Session:
    """What one run of imctl knows: the flags given, and the server once it is needed."""

    def __init__(self) -> None:
        self._server: Server | None = None
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        """The connection settings from flags, environment and the current context."""
        if self._settings is None:
            flags: dict[str, Value | None] = dict(
                click.get_current_context().find_root().meta.get(FLAGS, {})
            )
            context = flags.pop("context", None)
            self._settings = resolve(
                flags,
                os.environ,
                ConfigFile.load(config_path()),
                str(context) if context else None,
            )
        return self._settings

    def server(self) -> Server:
        """The connection, opened on first use."""
        if self._server is None:
            self._server = Server(self.settings())
        return self._server

    def actor(self) -> str:
        """Who acts: --as / IMCTL_USER / the context's `user`; with a token, empty (the
        server fills in the token's principal); else the login name."""
        settings = self.settings()
        if settings.user:
            return settings.user
        if settings.token:
            return ""
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return ""

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self._server is not None:
            self._server.close()

    def reopen(self) -> None:
        """Forget the connection, so the next `server()` opens a new one."""
        self._server = None


pass_session = click.make_pass_decorator(Session, ensure=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@connection_options
@click.version_option(__version__, prog_name="imctl")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """imctl: see what is burning, acknowledge it, silence it, resolve it.

    Talks to the incident manager's gRPC API. Connection: --server (default
    localhost:9000), a token, TLS; or a named context (`imctl config`).
    Exit codes: 0 ok, 1 the server refused, 2 usage, 3 cannot reach the server.
    """
    session = ctx.ensure_object(Session)
    ctx.call_on_close(session.close)
