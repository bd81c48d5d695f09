"""The run-time state of paging: each incident's escalation, and the delivery ledger.

An `Escalation` is the one row per paged incident that says what happens
next and when (`due_at`); the scheduler wakes for the earliest due time. A
`Notification` is one message to one recipient through one channel: the
outbox row that says "send this", committed with the change that made it due,
and afterwards the ledger entry that says what became of it.

The escalation policy is snapshotted into the escalation when paging starts
(Grafana OnCall's idea), so editing the configuration file does not change a
running escalation's levels; who is on call is still resolved at each step.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from incident_manager.domain.paging.escalation import ack_timeout_due, first_step, next_step
from incident_manager.domain.paging.model import EscalationPolicy, TargetKind


class EscalationStatus(enum.Enum):
    ACTIVE = "active"
    """Levels are being paged; `due_at` is the next level's time."""
    ACKNOWLEDGED = "acknowledged"
    """Someone acknowledged; `due_at` is when the acknowledgement times out, if ever."""
    SILENCED = "silenced"
    """A silence holds paging; `due_at` is when that silence ends."""
    EXHAUSTED = "exhausted"
    """Every level of every round has been paged and nobody acknowledged."""
    STOPPED = "stopped"
    """The incident was resolved or closed; nothing more will be paged."""


class NotificationState(enum.IntEnum):
    """Values equal the proto numbers."""

    PENDING = 1
    SENT = 2
    FAILED = 3
    SUPPRESSED = 4


@dataclass
class Escalation:
    """One incident's paging: where it stands and when its next step is due."""

    incident_id: str
    policy: EscalationPolicy
    """The policy as it was when paging started (a snapshot: reloads do not change it)."""
    route: int
    """The route that chose the policy, from 1 in the file's order."""
    status: EscalationStatus
    started_at: datetime
    """When paging (re)started: the incident opened, re-triggered, or a silence ended."""
    next_level: int = 0
    """Index of the level paged next (0 is the first)."""
    next_round: int = 0
    """0 for the first run through the levels, 1 for the first repeat, ..."""
    due_at: datetime | None = None
    reason: str = "new incident"
    """Why the next step happens, for the ESCALATED event and the ledger."""
    silenced_by: str = ""
    fence: int = 0
    """Bumped on every stored change; a save from a stale read is refused."""
    loaded_fence: int = -1
    """The fence storage held when this was read; -1 means never stored."""

    @classmethod
    def start(
        cls, incident_id: str, policy: EscalationPolicy, route: int, now: datetime, reason: str
    ) -> Escalation:
        """Paging from the first level of the first round, measured from `now`."""
        return cls(
            incident_id=incident_id,
            policy=policy,
            route=route,
            status=EscalationStatus.ACTIVE,
            started_at=now,
            due_at=first_step(policy, now).due,
            reason=reason,
        )

    def restart(self, policy: EscalationPolicy, route: int, now: datetime, reason: str) -> None:
        """Page again from the first level, e.g. after a re-trigger or a new route."""
        self.policy = policy
        self.route = route
        self.status = EscalationStatus.ACTIVE
        self.started_at = now
        self.next_level, self.next_round = 0, 0
        self.due_at = first_step(policy, now).due
        self.reason = reason
        self.silenced_by = ""

    def advance(self) -> None:
        """The current level has been paged: schedule the next one, or finish."""
        following = next_step(self.policy, self.started_at, self.next_level, self.next_round)
        if following is None:
            self.status = EscalationStatus.EXHAUSTED
            self.due_at = None
            return
        self.next_level, self.next_round = following.level, following.round
        self.due_at = following.due
        if following.level == 0:
            self.reason = (
                f"round {following.round + 1} of policy {self.policy.id}: nobody acknowledged"
            )
        else:
            after = _span(self.policy.levels[following.level].after)
            self.reason = f"level {following.level + 1} after {after} without an acknowledgement"

    def acknowledge(self, now: datetime) -> None:
        """Stop paging; arm the acknowledgement timeout if the policy has one."""
        self.status = EscalationStatus.ACKNOWLEDGED
        self.silenced_by = ""
        self.due_at = ack_timeout_due(self.policy, now)
        self.reason = "acknowledgement timed out"

    def hold(self, silence_id: str, until: datetime) -> None:
        self.status = EscalationStatus.SILENCED
        self.silenced_by = silence_id
        self.due_at = until

    def stop(self) -> None:
        self.status = EscalationStatus.STOPPED
        self.due_at = None
        self.silenced_by = ""


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def new_notification_id() -> str:
    return f"ntf_{secrets.token_hex(12)}"


@dataclass
class Notification:
    """One delivery: an outbox row until it is sent, then a ledger entry."""

    id: str
    incident_id: str
    policy_id: str
    level: int
    """From 1."""
    round: int
    target_kind: TargetKind
    target_id: str
    user_id: str
    channel_id: str
    channel_type: str
    recipient: str
    reason: str
    create_time: datetime
    ordinal: int = 0
    """Position among the notifications one step created: the ledger's order is
    (create_time, ordinal, id)."""
    content: Mapping[str, object] = field(default_factory=dict)
    """What the message says, fixed when it became due, so every retry says the same."""
    state: NotificationState = NotificationState.PENDING
    attempts: int = 0
    last_error: str = ""
    update_time: datetime | None = None
    send_time: datetime | None = None
    next_attempt_time: datetime | None = None
    claimed_by: str = ""
    claim_until: datetime | None = None
    digest_id: str = ""
    """For a page folded into a digest (a rate-limited channel's quota was used up): the
    digest notification's id. The page's state follows the digest's (domain/paging/digest.py)."""

    @property
    def is_digest(self) -> bool:
        """A digest message: many folded pages in one (its content has a `digest` part)."""
        return "digest" in self.content

    @property
    def ledger_key(self) -> tuple[datetime, int, str]:
        return (self.create_time, self.ordinal, self.id)

    @property
    def target(self) -> str:
        """`schedule primary (alice)`, `user bob`, `channel ops-hook`: for timelines."""
        kind = self.target_kind.value
        if self.target_kind is TargetKind.SCHEDULE and self.user_id:
            return f"{kind} {self.target_id} ({self.user_id})"
        return f"{kind} {self.target_id}"

    def suppress(self, why: str, now: datetime) -> None:
        self.state = NotificationState.SUPPRESSED
        self.last_error = why
        self.update_time = now
        self.next_attempt_time = None
        self.claimed_by = ""
        self.claim_until = None

    def sent(self, now: datetime) -> None:
        self.state = NotificationState.SENT
        self.last_error = ""
        self.send_time = now
        self.update_time = now
        self.next_attempt_time = None
        self.claimed_by = ""
        self.claim_until = None

    def failed(self, why: str, now: datetime) -> None:
        self.state = NotificationState.FAILED
        self.last_error = why
        self.update_time = now
        self.next_attempt_time = None
        self.claimed_by = ""
        self.claim_until = None

    def retry_at(self, when: datetime, why: str, now: datetime) -> None:
        self.last_error = why
        self.update_time = now
        self.next_attempt_time = when
        self.claimed_by = ""
        self.claim_until = None


def new_silence_id() -> str:
    return f"sil_{secrets.token_hex(8)}"


def new_override_id() -> str:
    return f"ovr_{secrets.token_hex(8)}"
