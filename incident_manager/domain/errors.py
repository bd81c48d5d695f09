"""Errors the domain and service layers raise. The gRPC layer maps each to one status code."""

from __future__ import annotations

from dataclasses import dataclass


def quoted(value: str, limit: int = 80) -> str:
    """A client-supplied value for a message: quoted, and cut short if it is long.

    Error messages travel in HTTP/2 headers; echoing a 100 kB value back would
    turn a clear error into a header-size failure.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


class DomainError(Exception):
    """Base of every error a client can cause or a dependency can raise."""

    reason = "DOMAIN_ERROR"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: its path in the request (`alert.title`) and what is wrong."""

    field: str
    description: str


class ValidationError(DomainError):
    """The request is malformed; `violations` names every offending field."""

    reason = "INVALID_REQUEST"

    def __init__(self, violations: list[FieldViolation]) -> None:
        if not violations:
            raise ValueError("a ValidationError needs at least one violation")
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {summary}")
        self.violations = list(violations)

    @classmethod
    def single(cls, field: str, description: str) -> ValidationError:
        return cls([FieldViolation(field, description)])


class IncidentNotFound(DomainError):
    """No incident has the given id."""

    reason = "INCIDENT_NOT_FOUND"

    def __init__(self, incident_id: str) -> None:
        super().__init__(
            f"incident {quoted(incident_id)} does not exist",
            metadata={"incident_id": incident_id[:256]},
        )
        self.incident_id = incident_id


class InvalidTransition(DomainError):
    """The lifecycle does not allow moving the incident between these two states."""

    reason = "INVALID_STATE_TRANSITION"

    def __init__(self, incident_id: str, current: str, requested: str, why: str) -> None:
        super().__init__(
            f"incident {quoted(incident_id)} cannot move from {current} to {requested}: {why}",
            metadata={"incident_id": incident_id, "from": current, "to": requested},
        )


class IncidentClosed(InvalidTransition):
    """Nothing about a CLOSED incident can change (notes can still be added)."""

    reason = "INCIDENT_CLOSED"

    def __init__(self, incident_id: str) -> None:
        DomainError.__init__(
            self,
            f"incident {quoted(incident_id)} is CLOSED, and closed incidents cannot be changed; "
            "open a new incident instead",
            metadata={"incident_id": incident_id[:256]},
        )


class EtagMismatch(DomainError):
    """The client's etag is stale: someone else changed the incident first."""

    reason = "ETAG_MISMATCH"

    def __init__(self, incident_id: str, given: str, current: str) -> None:
        super().__init__(
            f"incident {quoted(incident_id)} has changed since you read it (your etag "
            f"{quoted(given)}, current etag {current!r}); get it again and retry",
            metadata={"incident_id": incident_id, "current_etag": current},
        )


class ConcurrentModification(DomainError):
    """Two writers changed the same incident version at once; the later one lost."""

    reason = "CONCURRENT_MODIFICATION"

    def __init__(self, incident_id: str) -> None:
        super().__init__(
            f"incident {quoted(incident_id)} was changed concurrently by another request; retry",
            metadata={"incident_id": incident_id},
        )


class SequenceOutOfRange(DomainError):
    """A stream was asked to resume after a sequence this server has never reached."""

    reason = "SEQUENCE_OUT_OF_RANGE"

    def __init__(self, requested: int, last: int) -> None:
        super().__init__(
            f"after_sequence={requested} is beyond the last stored event ({last}); was the "
            "database replaced? Resume with after_sequence=0 to replay everything, or leave "
            "it out for live events only",
            metadata={"last_sequence": str(last)},
        )


class ShuttingDown(DomainError):
    """The server is stopping; the client should reconnect (to another replica)."""

    reason = "SHUTTING_DOWN"

    def __init__(self, last_sequence: int) -> None:
        super().__init__(
            "the server is shutting down; reconnect with "
            f"after_sequence={last_sequence} to resume without gaps",
            metadata={"last_sequence": str(last_sequence)},
        )


class RateLimited(DomainError):
    """A rate limit refused a new alert; nothing was stored.

    `scope` says which limit applied: `source` (the alert's source sends too
    fast), `server` (all sources together do) or `overload` (too many alerts
    wait to be stored). The last two shed the least severe alerts first.
    """

    reason = "RATE_LIMITED"

    def __init__(self, source: str, retry_after: float, scope: str = "source") -> None:
        what = {
            "source": f"source {quoted(source)} is over its rate limit",
            "server": "the server is over its rate limit for all sources together "
            "(the least severe alerts are shed first)",
            "overload": "the server is overloaded: too many alerts are waiting to be stored "
            "(the least severe alerts are shed first)",
        }[scope]
        super().__init__(
            f"{what}; nothing was stored, retry in {retry_after:.2f}s "
            "(P0 alerts are never limited)",
            metadata={
                "source": source[:256],
                "limit": scope,
                "retry_after_seconds": f"{retry_after:.3f}",
            },
        )
        self.retry_after = retry_after
        self.scope = scope


class StorageUnavailable(DomainError):
    """The database cannot be reached or written; nothing was stored."""

    reason = "STORAGE_UNAVAILABLE"

    def __init__(self, detail: str) -> None:
        super().__init__(f"storage is unavailable, nothing was changed: {detail}")
        self.detail = detail
        """What failed, without the words for a client ("nothing was changed")."""


class ActorMismatch(DomainError):
    """A request names someone other than the authenticated caller as who acts."""

    reason = "ACTOR_MISMATCH"

    def __init__(self, field: str, claimed: str, principal: str) -> None:
        super().__init__(
            f"{field} is {quoted(claimed)} but you are authenticated as {quoted(principal)}; "
            f"leave {field} empty (the server fills it in) or set it to your principal",
            metadata={"field": field, "principal": principal[:256]},
        )


class SourceNotAllowed(DomainError):
    """The caller's credentials do not allow it to send alerts as this source."""

    reason = "SOURCE_NOT_ALLOWED"

    def __init__(self, source: str, principal: str, allowed: frozenset[str]) -> None:
        listed = ", ".join(quoted(name, 40) for name in sorted(allowed)[:10])
        super().__init__(
            f"{quoted(principal)} may not send alerts as source {quoted(source)}; it may send "
            f"only as: {listed}",
            metadata={"source": source[:256], "principal": principal[:256]},
        )


class NotAcknowledgeable(DomainError):
    """Only an active incident can be acknowledged."""

    reason = "INCIDENT_NOT_ACTIVE"

    def __init__(self, incident_id: str, state: str) -> None:
        super().__init__(
            f"incident {quoted(incident_id)} is {state}, so there is nothing to acknowledge;"
            " reopen it with UpdateIncident if the problem is back",
            metadata={"incident_id": incident_id[:256], "state": state},
        )


class PagingNotConfigured(DomainError):
    """A paging RPC was called on a server started without a paging configuration."""

    reason = "PAGING_NOT_CONFIGURED"

    def __init__(self) -> None:
        super().__init__(
            "paging is not configured on this server: start it with --paging-config FILE"
            " (or INCIDENT_MANAGER_PAGING_CONFIG)"
        )


class PagingObjectNotFound(DomainError):
    """No schedule, user, silence or override has the given id."""

    reason = "PAGING_OBJECT_NOT_FOUND"

    def __init__(self, kind: str, object_id: str, where: str = "") -> None:
        super().__init__(
            f"{kind} {quoted(object_id)} does not exist" + (f" {where}" if where else ""),
            metadata={"kind": kind, "id": object_id[:256]},
        )


class SilenceEnded(DomainError):
    """An ended silence cannot be expired again."""

    reason = "SILENCE_ENDED"

    def __init__(self, silence_id: str, end: str) -> None:
        super().__init__(
            f"silence {quoted(silence_id)} already ended at {end}",
            metadata={"silence_id": silence_id[:256]},
        )
