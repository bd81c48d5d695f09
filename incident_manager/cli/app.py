"""`imctl`'s entry point: every command, the contexts and completion, and the exit codes.

Nothing a person can get wrong ends in a traceback: click's usage errors exit
2, `Failure` prints one line and exits with its code, and anything else is
reported in one line too (IMCTL_DEBUG=1 shows the traceback, for bug reports).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click
from click.shell_completion import get_completion_class

from incident_manager.cli import incidents, paging, watch
from incident_manager.cli.base import cli
from incident_manager.cli.contexts import KEYS, ConfigFile, config_path
from incident_manager.cli.failures import SERVER_REFUSED, usage

COMMAND_MODULES = (incidents, paging, watch)
"""Imported for the commands they add to `cli`."""


@cli.group("config")
def config() -> None:
    """Named contexts in $XDG_CONFIG_HOME/imctl/config.toml."""


@config.command("use-context")
@click.argument("name")
def use_context(name: str) -> None:
    """Make NAME the current context."""
    file = ConfigFile.load(config_path())
    if name not in file.contexts:
        known = ", ".join(file.contexts) or "none"
        raise usage(f"no context named {name!r} in {file.path} (contexts: {known})")
    file.current = name
    file.save()
    click.echo(f"now using context {name} ({file.contexts[name].get('server', '')})")


@config.command("set-context")
@click.argument("name")
@click.option("--server")
@click.option("--token")
@click.option("--token-file")
@click.option("--tls/--no-tls", default=None)
@click.option("--ca")
@click.option("--cert")
@click.option("--key")
@click.option("--user", help="who acts when there is no token")
@click.option("--schedule", help="the schedule `imctl oncall` shows by default")
def set_context(name: str, **settings: str | bool | None) -> None:
    """Create context NAME, or change the settings given."""
    file = ConfigFile.load(config_path())
    context = file.contexts.setdefault(name, {})
    for option, value in settings.items():
        key = option.replace("_", "-")
        if value is not None and key in KEYS:
            context[key] = value
    if not file.current:
        file.current = name
    file.save()
    click.echo(f"context {name} saved in {file.path}")


@config.command("get-contexts")
def get_contexts() -> None:
    """List the contexts; `*` marks the current one."""
    file = ConfigFile.load(config_path())
    if not file.contexts:
        click.echo(f"no contexts in {file.path}")
    for name, settings in file.contexts.items():
        mark = "*" if name == file.current else " "
        click.echo(f"{mark} {name}\t{settings.get('server', '')}")


@config.command("current-context")
def current_context() -> None:
    """Print the current context's name."""
    file = ConfigFile.load(config_path())
    if not file.current:
        raise usage(f"no current context in {file.path}")
    click.echo(file.current)


@config.command("delete-context")
@click.argument("name")
def delete_context(name: str) -> None:
    """Remove context NAME."""
    file = ConfigFile.load(config_path())
    if file.contexts.pop(name, None) is None:
        raise usage(f"no context named {name!r}")
    if file.current == name:
        file.current = ""
    file.save()
    click.echo(f"context {name} deleted")


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the completion script: `eval "$(imctl completion bash)"` in ~/.bashrc,
    `imctl completion fish > ~/.config/fish/completions/imctl.fish`."""
    complete = get_completion_class(shell)
    assert complete is not None  # click ships all three
    click.echo(complete(cli, {}, "imctl", "_IMCTL_COMPLETE").source())


def main(argv: Sequence[str] | None = None) -> int:
    """Run imctl; returns the exit code."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="imctl", standalone_mode=True
        )
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as error:
        if os.environ.get("IMCTL_DEBUG"):
            raise
        print(
            f"imctl: unexpected error: {type(error).__name__}: {error} (IMCTL_DEBUG=1 shows more)",
            file=sys.stderr,
        )
        return SERVER_REFUSED
    return 0
