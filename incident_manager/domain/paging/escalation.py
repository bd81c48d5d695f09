"""When each level of an escalation policy is due, and what each level delivers.

Timing. `start` is when the incident opened, or was paged again (re-triggered,
moved to another policy by a severity rise, its acknowledgement timed out, its
silence ended). Round 0 runs every level, level i at `start + after_i`. With
`repeat: N`, N more rounds follow; the first level of each is due
`repeat_after` after the last level of the round before, and the levels
within a round keep their spacing. So level i of round r is due at

    start + after_i + r * (after_last - after_first + repeat_after)

Acknowledging or resolving stops the plan; an acknowledged incident left
alone for `ack_timeout` is paged again from level 0, round 0 with the moment
the timeout ran out as its new start.

Deliveries. A level's targets become deliveries at the moment the level
fires: a user gets one per contact method (`contact_methods`), a schedule's
target is whoever is on call then, a channel is notified as itself, and an
action is one request to its webhook channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from incident_manager.domain.paging.model import (
    EmailChannel,
    EscalationPolicy,
    Level,
    Override,
    PagingConfig,
    Target,
    TargetKind,
    User,
)
from incident_manager.domain.paging.schedules import OnCall, on_call


@dataclass(frozen=True)
class EscalationStep:
    """One level of one round, and when it is due."""

    level: int
    """Index into the policy's levels (0 is the first)."""
    round: int
    """0 for the first run through the levels, 1 for the first repeat, ..."""
    due: datetime


def round_period(policy: EscalationPolicy) -> timedelta:
    """How far apart the same level of two consecutive rounds is."""
    return policy.levels[-1].after - policy.levels[0].after + policy.repeat_after


def step_due(policy: EscalationPolicy, start: datetime, level: int, round: int) -> datetime:
    """When level `level` of round `round` is due, for paging that started at `start`."""
    if not 0 <= level < len(policy.levels):
        raise ValueError(f"policy {policy.id!r} has no level {level}")
    if not 0 <= round <= policy.repeat:
        raise ValueError(f"policy {policy.id!r} has no round {round} (repeat is {policy.repeat})")
    return start + policy.levels[level].after + round * round_period(policy)


def first_step(policy: EscalationPolicy, start: datetime) -> EscalationStep:
    """Level 0 of round 0."""
    return EscalationStep(0, 0, step_due(policy, start, 0, 0))


def next_step(
    policy: EscalationPolicy, start: datetime, level: int, round: int
) -> EscalationStep | None:
    """The step after level `level` of round `round`, or None when that was the last."""
    step_due(policy, start, level, round)  # refuses a step the policy does not have
    if level + 1 < len(policy.levels):
        return EscalationStep(level + 1, round, step_due(policy, start, level + 1, round))
    if round < policy.repeat:
        return EscalationStep(0, round + 1, step_due(policy, start, 0, round + 1))
    return None


def plan(policy: EscalationPolicy, start: datetime) -> tuple[EscalationStep, ...]:
    """Every step in order, as they would run if nobody acknowledged."""
    steps = []
    step: EscalationStep | None = first_step(policy, start)
    while step is not None:
        steps.append(step)
        step = next_step(policy, start, step.level, step.round)
    return tuple(steps)


def ack_timeout_due(policy: EscalationPolicy, acknowledged_at: datetime) -> datetime | None:
    """When an acknowledged, untouched incident is paged again; None if the policy never does.

    A change or note by a person after the acknowledgement moves
    `acknowledged_at` to that moment (the caller decides what counts).
    """
    if policy.ack_timeout is None:
        return None
    return acknowledged_at + policy.ack_timeout


@dataclass(frozen=True)
class Delivery:
    """One message to send: through a channel, about a user or to the channel itself."""

    channel_id: str
    target: Target
    """The level's target this delivery came from."""
    user_id: str | None = None
    """The person paged; None when a channel is notified on its own."""
    address: str | None = None
    """The email recipient, for email channels."""

    @property
    def key(self) -> tuple[str | None, ...]:
        """What makes two deliveries of one level the same message. An action is never the
        same as a page through its webhook, nor as an action with another body."""
        if self.target.kind is TargetKind.ACTION:
            return (self.channel_id, TargetKind.ACTION.value, self.target.body)
        return (self.channel_id, self.user_id, self.address)


@dataclass(frozen=True)
class Unreached:
    """A target that yields no delivery at this moment, and why (for the timeline)."""

    target: Target
    reason: str


@dataclass(frozen=True)
class LevelDeliveries:
    """What a level comes to at one moment."""

    deliveries: tuple[Delivery, ...]
    """In target order, each message once even if several targets lead to it."""
    on_call: tuple[OnCall, ...]
    """For each schedule target, who was on call (and from which layer or override)."""
    unreached: tuple[Unreached, ...]


def contact_methods(config: PagingConfig, user: User, target: Target) -> tuple[Delivery, ...]:
    """How `user` is paged: first their email, then each other channel they name.

    The email goes through the email channels the user names, or else through
    the configuration's first email channel. A user naming a webhook channel
    gets a webhook delivery about them.
    """
    named_email = [cid for cid in user.channels if isinstance(config.channel(cid), EmailChannel)]
    deliveries = []
    if user.email is not None:
        default = config.email_channel
        carriers = named_email or ([default.id] if default is not None else [])
        deliveries += [Delivery(cid, target, user.id, user.email) for cid in carriers]
    deliveries += [
        Delivery(cid, target, user.id) for cid in user.channels if cid not in named_email
    ]
    return tuple(deliveries)


def resolve_level(
    config: PagingConfig, level: Level, at: datetime, overrides: Sequence[Override] = ()
) -> LevelDeliveries:
    """The deliveries a level needs when it fires at `at`, with the overrides in force."""
    deliveries: dict[tuple[str | None, ...], Delivery] = {}
    on_calls: list[OnCall] = []
    unreached: list[Unreached] = []

    def add(found: Sequence[Delivery]) -> None:
        for delivery in found:
            deliveries.setdefault(delivery.key, delivery)

    for target in level.targets:
        if target.kind is TargetKind.USER:
            user = config.user(target.id)
            assert user is not None  # a built PagingConfig has checked its targets
            add(contact_methods(config, user, target))
        elif target.kind is TargetKind.SCHEDULE:
            schedule = config.schedule(target.id)
            assert schedule is not None
            who = on_call(schedule, at, overrides)
            on_calls.append(who)
            if who.user_id is None:
                unreached.append(Unreached(target, f"nobody is on call for {target.id}"))
                continue
            user = config.user(who.user_id)
            if user is None:
                # An override stored before a reload removed the user.
                unreached.append(
                    Unreached(
                        target,
                        f"{who.user_id} is on call for {target.id} by {who.source}, "
                        "but is not a user in the paging configuration",
                    )
                )
                continue
            add(contact_methods(config, user, target))
        else:
            channel = config.channel(target.id)
            assert channel is not None
            if isinstance(channel, EmailChannel):
                add([Delivery(channel.id, target, address=to) for to in channel.to])
            else:
                add([Delivery(channel.id, target)])
    return LevelDeliveries(tuple(deliveries.values()), tuple(on_calls), tuple(unreached))
