"""`python -m incident_manager.tokens create <principal> <role>...`: make a bearer token.

Prints the token (give it to the client, once) and the line to add to the
tokens file (which stores only the token's SHA-256).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from incident_manager.config import TokensFileError, read_tokens_file
from incident_manager.domain.access import (
    ROLE_NAMES,
    Credentials,
    CredentialsFileError,
    hash_token,
    new_token,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m incident_manager.tokens",
        description="Create bearer tokens for the incident manager's tokens file.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser(
        "create",
        help="print a new token and its tokens-file line",
        description="Prints a new token on stdout's first line and, on the second, the line "
        "to append to the tokens file. The token is shown once and never stored.",
    )
    create.add_argument("principal", help="who the token belongs to; the actor in timelines")
    create.add_argument("roles", nargs="+", help=f"one or more of: {ROLE_NAMES}")
    create.add_argument(
        "--sources",
        help="comma-separated alert sources it may send as (default: any); "
        "give one to an ingest token so it cannot pose as another module",
    )
    check = commands.add_parser("check", help="validate a tokens file")
    check.add_argument("path")
    args = parser.parse_args(argv)
    if args.command == "check":
        try:
            credentials = read_tokens_file(args.path)
        except TokensFileError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(
            f"{args.path}: {len(credentials.tokens)} tokens, "
            f"{len(credentials.subjects)} certificate subjects"
        )
        return 0
    if len(args.principal.split()) != 1:
        print("error: a principal name cannot contain spaces", file=sys.stderr)
        return 2
    token = new_token()
    line = f"{hash_token(token)} {args.principal} {','.join(args.roles)}"
    if args.sources:
        line += f" sources={args.sources}"
    try:  # the same checks the server makes when it loads the file
        Credentials.parse(line)
    except CredentialsFileError as error:
        print(f"error: {error.in_file('the new line')}", file=sys.stderr)
        return 2
    print(f"token: {token}")
    print(f"tokens file line: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
