"""How paging state is stored as rows, shared by SQLite and PostgreSQL.

Same conventions as the incident rows: times are integer microseconds since
the epoch, structures are compact JSON, enums their values. Each column
tuple names the order in which its row functions read and write.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from incident_manager.adapters.sql.rows import dumps, loads
from incident_manager.domain.model import IncidentType, Severity
from incident_manager.domain.paging.digest import ChannelWindow
from incident_manager.domain.paging.ledger import (
    Escalation,
    EscalationStatus,
    Notification,
    NotificationState,
)
from incident_manager.domain.paging.model import (
    EscalationPolicy,
    Level,
    Matcher,
    Override,
    Silence,
    Target,
    TargetKind,
)
from incident_manager.domain.query import from_micros, micros

ESCALATION_COLUMNS = (
    "incident_id",
    "policy_id",
    "route",
    "policy",
    "status",
    "started_at",
    "next_level",
    "next_round",
    "due_at",
    "reason",
    "silenced_by",
    "fence",
)
NOTIFICATION_COLUMNS = (
    "id",
    "incident_id",
    "policy_id",
    "level",
    "round",
    "ordinal",
    "target_kind",
    "target_id",
    "user_id",
    "channel_id",
    "channel_type",
    "recipient",
    "reason",
    "create_time",
    "content",
    "state",
    "attempts",
    "last_error",
    "update_time",
    "send_time",
    "next_attempt_time",
    "claimed_by",
    "claim_until",
    "digest_id",
)
CHANNEL_WINDOW_COLUMNS = ("channel_id", "window_start", "used", "open_digests")
SILENCE_COLUMNS = (
    "id",
    "matchers",
    "start_time",
    "end_time",
    "created_by",
    "comment",
    "create_time",
    "expired_by",
)
OVERRIDE_COLUMNS = (
    "id",
    "schedule_id",
    "user_id",
    "start_time",
    "end_time",
    "created_by",
    "reason",
    "create_time",
)


_dumps = dumps
"""Compact JSON text, written the way the incident rows are."""


def _micros_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else micros(moment)


def _time_or_none(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _span(delta: timedelta | None) -> int | None:
    return None if delta is None else delta // timedelta(microseconds=1)


POLICIES_REMEMBERED = 256
"""Policies kept with their JSON text; when full, all are forgotten (a reload makes new ones)."""

# Every escalation row stores its policy's snapshot, and almost all of them hold
# one of the few policies of the file in force: a storm of new incidents would
# encode the same policy once per incident, and the worker decode it once per
# step. Policies are immutable, so one object can stand for every row's text.
# Plain dicts: the writer and reader threads may race on them, which at worst
# encodes or decodes a policy again.
_text_by_policy: dict[int, tuple[EscalationPolicy, str]] = {}
_policy_by_text: dict[str, EscalationPolicy] = {}


def policy_to_json(policy: EscalationPolicy) -> str:
    """The policy as stored: compact JSON, durations in microseconds."""
    known = _text_by_policy.get(id(policy))
    # The entry holds the policy, so while it is there no other object has its id.
    if known is not None and known[0] is policy:
        return known[1]
    text = _encode_policy(policy)
    _remember(policy, text)
    return text


def policy_from_json(text: str) -> EscalationPolicy:
    """The policy a stored text stands for: the same object for the same text."""
    known = _policy_by_text.get(text)
    if known is not None:
        return known
    policy = _decode_policy(text)
    _remember(policy, text)
    return policy


def _remember(policy: EscalationPolicy, text: str) -> None:
    if len(_policy_by_text) >= POLICIES_REMEMBERED or len(_text_by_policy) >= POLICIES_REMEMBERED:
        _policy_by_text.clear()
        _text_by_policy.clear()
    _policy_by_text[text] = policy
    _text_by_policy[id(policy)] = (policy, text)


def _encode_policy(policy: EscalationPolicy) -> str:
    return _dumps(
        {
            "id": policy.id,
            "levels": [
                {
                    "after": _span(level.after),
                    "targets": [_target_json(t) for t in level.targets],
                }
                for level in policy.levels
            ],
            "repeat": policy.repeat,
            "repeat_after": _span(policy.repeat_after),
            "ack_timeout": _span(policy.ack_timeout),
        }
    )


def _decode_policy(text: str) -> EscalationPolicy:
    data = loads(text)
    return EscalationPolicy(
        id=data["id"],
        levels=tuple(
            Level(
                timedelta(microseconds=level["after"]),
                tuple(_target_from_json(target) for target in level["targets"]),
            )
            for level in data["levels"]
        ),
        repeat=data["repeat"],
        repeat_after=timedelta(microseconds=data["repeat_after"]),
        ack_timeout=(
            None if data["ack_timeout"] is None else timedelta(microseconds=data["ack_timeout"])
        ),
    )


def _target_json(target: Target) -> list[str]:
    # [kind, id]; an action adds its body template: [kind, id, body].
    if target.body is None:
        return [target.kind.value, target.id]
    return [target.kind.value, target.id, target.body]


def _target_from_json(stored: Sequence[str]) -> Target:
    # Rows written before actions existed hold only [kind, id].
    return Target(TargetKind(stored[0]), stored[1], stored[2] if len(stored) > 2 else None)


def escalation_row(escalation: Escalation, fence: int) -> tuple[Any, ...]:
    return (
        escalation.incident_id,
        escalation.policy.id,
        escalation.route,
        policy_to_json(escalation.policy),
        escalation.status.value,
        micros(escalation.started_at),
        escalation.next_level,
        escalation.next_round,
        _micros_or_none(escalation.due_at),
        escalation.reason,
        escalation.silenced_by,
        fence,
    )


def escalation_from_row(row: Sequence[Any]) -> Escalation:
    return Escalation(
        incident_id=row[0],
        route=row[2],
        policy=policy_from_json(row[3]),
        status=EscalationStatus(row[4]),
        started_at=from_micros(row[5]),
        next_level=row[6],
        next_round=row[7],
        due_at=_time_or_none(row[8]),
        reason=row[9],
        silenced_by=row[10],
        fence=row[11],
        loaded_fence=row[11],
    )


def notification_row(n: Notification) -> tuple[Any, ...]:
    return (
        n.id,
        n.incident_id,
        n.policy_id,
        n.level,
        n.round,
        n.ordinal,
        n.target_kind.value,
        n.target_id,
        n.user_id,
        n.channel_id,
        n.channel_type,
        n.recipient,
        n.reason,
        micros(n.create_time),
        _dumps(dict(n.content)),
        *notification_progress_row(n),
    )


NOTIFICATION_PROGRESS_COLUMNS = NOTIFICATION_COLUMNS[NOTIFICATION_COLUMNS.index("state") :]
"""The columns a delivery changes after it is written: the rest, its content above all,
stay as they were created, so saving an attempt's outcome does not encode them again."""


def notification_progress_row(n: Notification) -> tuple[Any, ...]:
    """The values of NOTIFICATION_PROGRESS_COLUMNS, in that order."""
    return (
        int(n.state),
        n.attempts,
        n.last_error,
        _micros_or_none(n.update_time),
        _micros_or_none(n.send_time),
        _micros_or_none(n.next_attempt_time),
        n.claimed_by,
        _micros_or_none(n.claim_until),
        n.digest_id,
    )


def notification_from_row(row: Sequence[Any]) -> Notification:
    return Notification(
        id=row[0],
        incident_id=row[1],
        policy_id=row[2],
        level=row[3],
        round=row[4],
        ordinal=row[5],
        target_kind=TargetKind(row[6]),
        target_id=row[7],
        user_id=row[8],
        channel_id=row[9],
        channel_type=row[10],
        recipient=row[11],
        reason=row[12],
        create_time=from_micros(row[13]),
        content=loads(row[14]),
        state=NotificationState(row[15]),
        attempts=row[16],
        last_error=row[17],
        update_time=_time_or_none(row[18]),
        send_time=_time_or_none(row[19]),
        next_attempt_time=_time_or_none(row[20]),
        claimed_by=row[21],
        claim_until=_time_or_none(row[22]),
        digest_id=row[23],
    )


def channel_window_row(w: ChannelWindow) -> tuple[Any, ...]:
    return (w.channel_id, micros(w.start), w.used, _dumps(w.open_digests))


def channel_window_from_row(row: Sequence[Any]) -> ChannelWindow:
    return ChannelWindow(
        channel_id=row[0], start=from_micros(row[1]), used=row[2], open_digests=loads(row[3])
    )


def silence_row(s: Silence) -> tuple[Any, ...]:
    matcher = s.matcher
    return (
        s.id,
        _dumps(
            {
                "sources": sorted(matcher.sources),
                "types": sorted(t.name for t in matcher.types),
                "severities": sorted(v.name for v in matcher.severities),
                "labels": dict(matcher.labels),
                "labels_regex": {key: p.pattern for key, p in matcher.labels_regex.items()},
            }
        ),
        micros(s.start),
        micros(s.end),
        s.created_by,
        s.comment,
        micros(s.create_time or s.start),
        s.expired_by,
    )


def silence_from_row(row: Sequence[Any]) -> Silence:
    matcher = loads(row[1])
    return Silence(
        id=row[0],
        matcher=Matcher(
            sources=frozenset(matcher["sources"]),
            types=frozenset(IncidentType[name] for name in matcher["types"]),
            severities=frozenset(Severity[name] for name in matcher["severities"]),
            labels=matcher["labels"],
            # Rows written before patterns were stored have none.
            labels_regex={
                key: re.compile(pattern) for key, pattern in matcher.get("labels_regex", {}).items()
            },
        ),
        start=from_micros(row[2]),
        end=from_micros(row[3]),
        created_by=row[4],
        comment=row[5],
        create_time=from_micros(row[6]),
        expired_by=row[7],
    )


def override_row(o: Override) -> tuple[Any, ...]:
    return (
        o.id,
        o.schedule_id,
        o.user_id,
        micros(o.start),
        micros(o.end),
        o.created_by,
        o.reason,
        micros(o.create_time or o.start),
    )


def override_from_row(row: Sequence[Any]) -> Override:
    return Override(
        id=row[0],
        schedule_id=row[1],
        user_id=row[2],
        start=from_micros(row[3]),
        end=from_micros(row[4]),
        created_by=row[5],
        reason=row[6],
        create_time=from_micros(row[7]),
    )
