"""What can go wrong, as one line a person can act on, and the exit code it means.

Exit codes: 0 ok, 1 the server refused, 2 usage (click's own, and ours for a
bad option value or configuration), 3 the server could not be reached.
"""

from __future__ import annotations

from typing import IO, Any

import click
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

SERVER_REFUSED = 1
USAGE = 2
UNREACHABLE = 3

WORDS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.CANCELLED: "cancelled",
    grpc.StatusCode.UNKNOWN: "unknown error",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid request",
    grpc.StatusCode.DEADLINE_EXCEEDED: "no answer in time",
    grpc.StatusCode.NOT_FOUND: "not found",
    grpc.StatusCode.ALREADY_EXISTS: "already exists",
    grpc.StatusCode.PERMISSION_DENIED: "not allowed",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "too much at once",
    grpc.StatusCode.FAILED_PRECONDITION: "not possible now",
    grpc.StatusCode.ABORTED: "changed by someone else",
    grpc.StatusCode.OUT_OF_RANGE: "out of range",
    grpc.StatusCode.UNIMPLEMENTED: "not supported by this server",
    grpc.StatusCode.INTERNAL: "server error",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DATA_LOSS: "data loss",
    grpc.StatusCode.UNAUTHENTICATED: "not authenticated",
}
"""The gRPC status of a refusal, in words; the code's own name follows in brackets."""

HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.ABORTED: "run the command again",
    grpc.StatusCode.UNAUTHENTICATED: "give a token with --token, --token-file or IMCTL_TOKEN",
    grpc.StatusCode.PERMISSION_DENIED: "use a token with that role",
}


class Failure(click.ClickException):
    """A failure that ends the command with one line on stderr and its class's exit code."""

    exit_code = SERVER_REFUSED

    def __init__(self, message: str, status: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.status = status
        """The gRPC status the server answered with, if it answered."""

    def show(self, file: IO[Any] | None = None) -> None:
        """Print `imctl: <message>`, without click's `Error:` prefix."""
        click.echo(f"imctl: {self.format_message()}", err=True, file=file)


class Refused(Failure):
    """The server refused (exit 1)."""

    exit_code = SERVER_REFUSED


class Misused(Failure):
    """imctl was called or configured wrongly (exit 2)."""

    exit_code = USAGE


class Unreachable(Failure):
    """The server could not be reached, or did not answer (exit 3)."""

    exit_code = UNREACHABLE


def usage(message: str) -> Failure:
    """A mistake in how imctl was called or configured (exit 2)."""
    return Misused(message)


def from_rpc_error(error: grpc.RpcError, server: str) -> Failure:
    """The failure a refused or failed call means, naming `server` and the status in words."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (error.details() if isinstance(error, grpc.Call) else None) or ""
    status = _rich_status(error)
    if status is None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # No status from our server: the call never got an answer from it.
        why = _connection_problem(details) if code is grpc.StatusCode.UNAVAILABLE else "no answer"
        return Unreachable(f"cannot reach the server at {server}: {why}")
    words = WORDS.get(code, code.name.lower())
    parts = [f"{server} refused: {words} ({code.name})"]
    if details:
        parts.append(details)
    if status is not None:
        parts.extend(_violations(status))
    hint = HINTS.get(code)
    if hint:
        parts.append(hint)
    message = ": ".join(parts[:2]) + "".join(f"; {part}" for part in parts[2:])
    return Refused(message, code)


def _rich_status(error: grpc.RpcError) -> Any:
    if not isinstance(error, grpc.Call):
        return None
    try:
        return rpc_status.from_call(error)
    except ValueError:
        return None


def _violations(status: Any) -> list[str]:
    found: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend(f"{v.field}: {v.description}" for v in bad.field_violations)
    return found


def _connection_problem(details: str) -> str:
    """grpc's long 'failed to connect to all addresses; last error: ...' made short."""
    lowered = details.lower()
    if "connection refused" in lowered:
        return "connection refused (is the server running, and is --server right?)"
    if "dns" in lowered or "resolve" in lowered or "name or service" in lowered:
        return "the name does not resolve (check --server)"
    if "ssl" in lowered or "handshake" in lowered or "tls" in lowered or "certificate" in lowered:
        return f"the TLS handshake failed (check --tls, --ca, --cert, --key): {details}"
    return details or "the connection failed"
