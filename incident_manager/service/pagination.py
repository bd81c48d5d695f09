"""Page tokens and sort orders for ListIncidents.

A page token is opaque to clients: it carries the sort key of the last
incident returned (keyset pagination, so incidents created meanwhile never
shift later pages) and a digest of the query, so a token is refused when it
is replayed against different filters or another order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from incident_manager.domain.errors import ValidationError, quoted
from incident_manager.domain.query import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Cursor,
    IncidentFilter,
    Ordering,
    SortKey,
)
from incident_manager.domain.validation import NUL

_TOKEN_VERSION = 1


def parse_order_by(text: str) -> Ordering:
    """`create_time`, `update_time` or `severity`, optionally followed by `asc` or `desc`."""
    words = text.replace(",", " ").split()
    if not words:
        return Ordering()
    keys = {key.value: key for key in SortKey}
    key = keys.get(words[0])
    direction = words[1].lower() if len(words) == 2 else None
    if key is None or len(words) > 2 or direction not in (None, "asc", "desc"):
        raise ValidationError.single(
            "order_by",
            f"cannot sort by {quoted(text)}; use one of {', '.join(sorted(keys))}, "
            "optionally followed by ' asc' or ' desc'",
        )
    if direction is None:
        # Times default to newest first; severity to most severe (P0) first.
        return Ordering(key, descending=key is not SortKey.SEVERITY)
    return Ordering(key, descending=direction == "desc")


def page_size_or_default(page_size: int) -> int:
    if page_size < 0:
        raise ValidationError.single("page_size", "must not be negative")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


def _query_digest(query_filter: IncidentFilter, ordering: Ordering) -> str:
    canonical = json.dumps(
        [
            sorted(int(s) for s in query_filter.states),
            sorted(int(s) for s in query_filter.severities),
            sorted(int(t) for t in query_filter.types),
            sorted(query_filter.sources),
            query_filter.assignee,
            query_filter.incident_id,
            ordering.key.value,
            ordering.descending,
        ]
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(cursor: Cursor, query_filter: IncidentFilter, ordering: Ordering) -> str:
    payload = json.dumps(
        {"v": _TOKEN_VERSION, "k": list(cursor), "q": _query_digest(query_filter, ordering)},
        separators=(",", ":"),
    )
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


MAX_TOKEN_LENGTH = 1024
_INT64 = 2**63


def decode_page_token(token: str, query_filter: IncidentFilter, ordering: Ordering) -> Cursor:
    """The cursor a token carries; INVALID_ARGUMENT if it is malformed or for another query.

    Tokens are not signed: a client that forges one only moves its own
    cursor, and every part is checked to be a value the query could hold.
    """
    payload: object = None
    try:
        if len(token) <= MAX_TOKEN_LENGTH:
            padded = token + "=" * (-len(token) % 4)
            payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        payload = None
    cursor = payload.get("k") if isinstance(payload, dict) else None
    valid = (
        isinstance(payload, dict)
        and payload.get("v") == _TOKEN_VERSION
        and isinstance(payload.get("q"), str)
        and isinstance(cursor, list)
        and len(cursor) == (3 if ordering.key is SortKey.SEVERITY else 2)
        and all(type(part) is int and -_INT64 <= part < _INT64 for part in cursor[:-1])
        and isinstance(cursor[-1], str)
        and NUL not in cursor[-1]  # no incident id holds one
    )
    if not valid:
        raise ValidationError.single(
            "page_token",
            "is not a token this server issued; pass next_page_token from the previous "
            "response unchanged, or leave it empty for the first page",
        )
    assert isinstance(payload, dict) and isinstance(cursor, list)
    if payload["q"] != _query_digest(query_filter, ordering):
        raise ValidationError.single(
            "page_token",
            "was issued for different filters or order_by; repeat the original request's "
            "filters and order_by, or leave page_token empty to start over",
        )
    return tuple(cursor)
