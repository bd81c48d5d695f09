"""Who may call what: principals, roles, and the credentials file.

The credentials file holds one entry per line; `#` starts a comment.

    sha256:<64 hex digits> <principal> <role>[,<role>...] [sources=<source>[,<source>...]]
    subject:<certificate common name> <role>[,<role>...] [sources=...]

A `sha256:` line is a bearer token, stored only as the SHA-256 of the token
(`python -m incident_manager.tokens create` makes one). A `subject:` line
gives roles to a client certificate (mutual TLS) whose subject common name
matches; that name is then the principal. `sources=` limits the alert sources the
principal may send alerts as; without it, any. The file never holds a secret
that would let its reader call the server.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


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
    name: str
    roles: frozenset[Role]
    sources: frozenset[str] | None = None
    """The alert sources it may send as; None allows any."""

    def may_send_as(self, source: str) -> bool:
        return self.sources is None or source in self.sources

    def has(self, role: Role) -> bool:
        return any(role in IMPLIED[held] for held in self.roles)


class CredentialsFileError(ValueError):
    """The credentials file cannot be used; the message names the line."""


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _quoted(value: str, where: str) -> str:
    """`value` for an error message, refusing at once if it is a token pasted in."""
    if value.startswith(TOKEN_PREFIX):
        # Errors reach logs; a token there is a leaked token.
        raise CredentialsFileError(
            f"{where}: a field looks like a token; the file must hold only its sha256 "
            "(make a line with: python -m incident_manager.tokens create)"
        )
    return repr(value[:40])


def _roles(text: str, where: str) -> frozenset[Role]:
    roles = set()
    for name in text.split(","):
        try:
            roles.add(Role(name.strip().lower()))
        except ValueError:
            raise CredentialsFileError(
                f"{where}: {_quoted(name.strip(), where)} is not a role; use {ROLE_NAMES}"
            ) from None
    return frozenset(roles)


def _sources(field: str, where: str) -> frozenset[str]:
    names = [name for name in field.removeprefix("sources=").split(",") if name]
    if not names:
        raise CredentialsFileError(f"{where}: 'sources=' needs at least one source name")
    for name in names:
        if len(name) > 256:
            raise CredentialsFileError(f"{where}: a source name is at most 256 characters")
    return frozenset(names)


def _principal_name(name: str, where: str) -> str:
    # A token as a name would be shown in every timeline and log line it acts in.
    if name.startswith(TOKEN_PREFIX) or not _PRINCIPAL.match(name):
        raise CredentialsFileError(
            f"{where}: principal {_quoted(name, where)} must be 1-128 letters, digits or "
            "._@:/+=- and start with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Credentials:
    """Token hashes and certificate subjects, each with its principal."""

    tokens: dict[str, Principal]
    subjects: dict[str, Principal]

    @classmethod
    def parse(cls, lines: Iterable[str], source: str = "credentials") -> Credentials:
        tokens: dict[str, Principal] = {}
        subjects: dict[str, Principal] = {}
        for number, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}:{number}"
            fields = line.split()
            sources = None
            if len(fields) > 2 and fields[-1].startswith("sources="):
                sources = _sources(fields.pop(), where)
            if fields[0].startswith("subject:"):
                if len(fields) != 2:
                    raise CredentialsFileError(
                        f"{where}: expected 'subject:<common name> <roles> [sources=<a>,<b>]'"
                    )
                name = _principal_name(fields[0].removeprefix("subject:"), where)
                if name in subjects:
                    raise CredentialsFileError(f"{where}: this certificate subject is listed twice")
                subjects[name] = Principal(name, _roles(fields[1], where), sources)
                continue
            if len(fields) != 3:
                raise CredentialsFileError(
                    f"{where}: expected 'sha256:<hex> <principal> <roles> [sources=<a>,<b>]' "
                    f"or 'subject:<common name> <roles> [sources=<a>,<b>]'"
                )
            match = _HASH.match(fields[0])
            if match is None:
                raise CredentialsFileError(
                    f"{where}: the first field must be sha256: and 64 lowercase hex digits; "
                    "the file holds token hashes, never tokens "
                    "(make a line with: python -m incident_manager.tokens create)"
                )
            if fields[0] in tokens:
                raise CredentialsFileError(f"{where}: this token hash is listed twice")
            tokens[fields[0]] = Principal(
                _principal_name(fields[1], where), _roles(fields[2], where), sources
            )
        return cls(tokens, subjects)

    @classmethod
    def load(cls, path: str) -> Credentials:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise CredentialsFileError(
                f"cannot read the tokens file {path}: {error.strerror}"
            ) from error
        except UnicodeDecodeError:
            # Never quote the bytes: the path may name a key or another secret.
            raise CredentialsFileError(
                f"cannot read the tokens file {path}: it is not UTF-8 text; is it the right file?"
            ) from None
        return cls.parse(text.splitlines(), path)

    def by_token(self, token: str) -> Principal | None:
        """The token's principal, looked up by its hash.

        A lookup's timing can at most hint at the hash of a valid token, from
        which the token cannot be recovered.
        """
        return self.tokens.get(hash_token(token))

    def by_subject(self, common_name: str) -> Principal | None:
        return self.subjects.get(common_name)
