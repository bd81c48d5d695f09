"""Who may call what: principals, roles, and the text of the tokens file.

The tokens file holds one entry per line; `#` starts a comment.

    sha256:<64 hex digits> <principal> <role>[,<role>...] [sources=<source>[,<source>...]]
    subject:<certificate common name> <role>[,<role>...] [sources=...]

A `sha256:` line is a bearer token, stored only as the SHA-256 of the token
(`python -m incident_manager.tokens create` makes one). A `subject:` line
gives roles to a client certificate (mutual TLS) whose subject common name
matches; that name is then the principal. `sources=` limits the alert sources the
principal may send alerts as; without it, any. The file never holds a secret
that would let its reader call the server.

Only the text is parsed here; reading the file is the caller's job
(`incident_manager.config.read_tokens_file`), which also names the file in
errors.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass


class Role(enum.Enum):
    INGEST = "ingest"
    """The alert ingestion RPCs only: what a monitoring module needs."""
    READER = "reader"
    """Get, list and stream incidents."""
    RESPONDER = "responder"
    """Every incident change, and everything a reader may do."""
    ADMIN = "admin"
    """Everything."""


IMPLIED: dict[Role, frozenset[Role]] = {
    Role.INGEST: frozenset({Role.INGEST}),
    Role.READER: frozenset({Role.READER}),
    Role.RESPONDER: frozenset({Role.RESPONDER, Role.READER}),
    Role.ADMIN: frozenset(Role),
}
"""What holding a role allows: a responder reads too; an admin may do everything."""
ROLE_NAMES = ", ".join(role.value for role in Role)
TOKEN_PREFIX = "imt_"
"""Tokens start with this, so secret scanners and people can recognise them."""
_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")
_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:/+=-]{0,127}$")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: who it is, what it may do, and as whom it may send alerts."""

    name: str
    """Named as the actor of the timeline events its calls cause."""
    roles: frozenset[Role]
    sources: frozenset[str] | None = None
    """The alert sources it may send as; None allows any."""

    def may_send_as(self, source: str) -> bool:
        """Whether it may send alerts (or module events) as `source`."""
        return self.sources is None or source in self.sources

    def has(self, role: Role) -> bool:
        """Whether one of its roles allows what `role` allows."""
        return any(role in IMPLIED[held] for held in self.roles)


class CredentialsFileError(ValueError):
    """The tokens file's text cannot be used: what is wrong, and on which line.

    The text does not know its file's name; `in_file` adds it for the message
    an operator sees (`tokens:3: ...`).
    """

    def __init__(self, problem: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {problem}" if line else problem)
        self.problem = problem
        self.line = line

    def on_line(self, line: int) -> CredentialsFileError:
        """The same problem, found on `line` (counted from 1)."""
        return CredentialsFileError(self.problem, line)

    def in_file(self, name: str) -> str:
        """The message naming the file and line, as compilers do: `name:line: problem`."""
        return f"{name}:{self.line}: {self.problem}" if self.line else f"{name}: {self.problem}"


def hash_token(token: str) -> str:
    """How the tokens file stores a token: `sha256:` and the hex digest."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _quoted(value: str) -> str:
    """`value` for an error message, refusing at once if it is a token pasted in."""
    if value.startswith(TOKEN_PREFIX):
        # Errors reach logs; a token there is a leaked token.
        raise CredentialsFileError(
            "a field looks like a token; the file must hold only its sha256 "
            "(make a line with: python -m incident_manager.tokens create)"
        )
    return repr(value[:40])


def _roles(text: str) -> frozenset[Role]:
    roles = set()
    for name in text.split(","):
        try:
            roles.add(Role(name.strip().lower()))
        except ValueError:
            raise CredentialsFileError(
                f"{_quoted(name.strip())} is not a role; use {ROLE_NAMES}"
            ) from None
    return frozenset(roles)


def _sources(field: str) -> frozenset[str]:
    names = [name for name in field.removeprefix("sources=").split(",") if name]
    if not names:
        raise CredentialsFileError("'sources=' needs at least one source name")
    for name in names:
        if len(name) > 256:
            raise CredentialsFileError("a source name is at most 256 characters")
    return frozenset(names)


def _principal_name(name: str) -> str:
    # A token as a name would be shown in every timeline and log line it acts in.
    if name.startswith(TOKEN_PREFIX) or not _PRINCIPAL.match(name):
        raise CredentialsFileError(
            f"principal {_quoted(name)} must be 1-128 letters, digits or "
            "._@:/+=- and start with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Credentials:
    """Token hashes and certificate subjects, each with its principal."""

    tokens: dict[str, Principal]
    subjects: dict[str, Principal]

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """The credentials a tokens file's text lists; CredentialsFileError names the bad line."""
        credentials = cls({}, {})
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                credentials._add(line.split())
            except CredentialsFileError as error:
                raise error.on_line(number) from None
        return credentials

    def _add(self, fields: list[str]) -> None:
        """Take one entry, split into its fields."""
        sources = None
        if len(fields) > 2 and fields[-1].startswith("sources="):
            sources = _sources(fields.pop())
        if fields[0].startswith("subject:"):
            if len(fields) != 2:
                raise CredentialsFileError(
                    "expected 'subject:<common name> <roles> [sources=<a>,<b>]'"
                )
            name = _principal_name(fields[0].removeprefix("subject:"))
            if name in self.subjects:
                raise CredentialsFileError("this certificate subject is listed twice")
            self.subjects[name] = Principal(name, _roles(fields[1]), sources)
            return
        if len(fields) != 3:
            raise CredentialsFileError(
                "expected 'sha256:<hex> <principal> <roles> [sources=<a>,<b>]' "
                "or 'subject:<common name> <roles> [sources=<a>,<b>]'"
            )
        if _HASH.match(fields[0]) is None:
            raise CredentialsFileError(
                "the first field must be sha256: and 64 lowercase hex digits; "
                "the file holds token hashes, never tokens "
                "(make a line with: python -m incident_manager.tokens create)"
            )
        if fields[0] in self.tokens:
            raise CredentialsFileError("this token hash is listed twice")
        self.tokens[fields[0]] = Principal(_principal_name(fields[1]), _roles(fields[2]), sources)

    def by_token(self, token: str) -> Principal | None:
        """The token's principal, looked up by its hash.

        A lookup's timing can at most hint at the hash of a valid token, from
        which the token cannot be recovered.
        """
        return self.tokens.get(hash_token(token))

    def by_subject(self, common_name: str) -> Principal | None:
        """The principal a client certificate with this subject common name is, if listed."""
        return self.subjects.get(common_name)
