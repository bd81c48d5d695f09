"""`python -m incident_manager.paging check FILE...`: validate paging configuration files.

Like `amtool check-config`: no server, no database, no network. Exit 0 with a
one-line summary per file (warnings, if any, on stderr), or exit 2 with every
mistake on stderr as `FILE:LINE: key.path: what is wrong, what is expected`.
A file that cannot be read is a mistake too, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from incident_manager.paging.file import (
    LoadedPagingConfig,
    PagingConfigError,
    config_summary,
    read_paging_config,
)

MAX_FILE_BYTES = 10 * 1024 * 1024
"""A paging file is a few kilobytes; this stops `check /dev/zero` from eating memory."""


class Unreadable(Exception):
    """The file could not be read as UTF-8 text; the message says why."""


def read_text(path: str) -> str:
    """The file's text (UTF-8, a leading byte order mark dropped), or Unreadable."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise Unreadable(f"{path}: no such file") from None
    except IsADirectoryError:
        raise Unreadable(f"{path}: is a directory; expected a YAML file") from None
    except PermissionError:
        raise Unreadable(f"{path}: permission denied") from None
    except OSError as error:
        raise Unreadable(f"{path}: cannot be read: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise Unreadable(
            f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; is it the right file?"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise Unreadable(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as "
            "UTF-8"
        ) from None


class PagingFileError(Exception):
    """The paging file cannot be used; `messages` say where and why, one per mistake."""

    def __init__(self, messages: Sequence[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = list(messages)


def load_paging_file(path: str) -> LoadedPagingConfig:
    """The checked configuration in the file at `path` (the server's start and SIGHUP)."""
    try:
        return read_paging_config(read_text(path), path)
    except Unreadable as error:
        raise PagingFileError([str(error)]) from None
    except PagingConfigError as error:
        raise PagingFileError(error.messages) from None


def check(path: str) -> int:
    """Validate one file, printing its summary or its mistakes; 0 if it is valid, else 2."""
    try:
        loaded = read_paging_config(read_text(path), path)
    except Unreadable as error:
        print(error, file=sys.stderr)
        return 2
    except PagingConfigError as error:
        for message in error.messages:
            print(message, file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    print(f"{path}: {config_summary(loaded.config)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (argparse exits 2 itself on a usage mistake)."""
    parser = argparse.ArgumentParser(
        prog="python -m incident_manager.paging",
        description="Work with paging configuration files (docs/PAGING.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    checker = commands.add_parser(
        "check",
        help="validate files without a server: exit 0 if all are valid, 2 if not",
        description="Validate paging configuration files without a server.",
    )
    checker.add_argument("files", nargs="+", metavar="FILE", help="a paging configuration file")
    args = parser.parse_args(argv)
    codes = [check(path) for path in args.files]
    return max(codes)
