"""The policy snapshot each escalation row stores, encoded and decoded once per policy."""

from __future__ import annotations

from datetime import timedelta

from incident_manager.adapters.sql.paging_rows import (
    POLICIES_REMEMBERED,
    policy_from_json,
    policy_to_json,
)
from incident_manager.domain.paging.model import EscalationPolicy, Level, Target, TargetKind


def _policy(after_minutes: int, *, channel: str = "ops-hook") -> EscalationPolicy:
    return EscalationPolicy(
        id="critical",
        levels=(
            Level(timedelta(0), (Target(TargetKind.CHANNEL, channel),)),
            Level(timedelta(minutes=after_minutes), (Target(TargetKind.USER, "bob"),)),
        ),
        ack_timeout=timedelta(minutes=30),
        repeat=2,
    )


def test_a_stored_policy_reads_back_equal_and_as_one_object_for_every_row() -> None:
    policy = _policy(10)
    text = policy_to_json(policy)
    assert policy_to_json(policy) == text
    first, second = policy_from_json(text), policy_from_json(text)
    assert first == policy
    assert first is second


def test_policies_that_differ_under_one_id_are_stored_as_their_own_texts() -> None:
    # A reload may change a policy and keep its id: each snapshot keeps what it was.
    before, after = _policy(10), _policy(15, channel="mail")
    texts = policy_to_json(before), policy_to_json(after)
    assert texts[0] != texts[1]
    assert [policy_from_json(text) for text in texts] == [before, after]


def test_more_policies_than_are_remembered_still_round_trip() -> None:
    policies = [_policy(minutes) for minutes in range(1, 2 * POLICIES_REMEMBERED + 2)]
    texts = [policy_to_json(policy) for policy in policies]
    assert len(set(texts)) == len(policies)
    assert [policy_from_json(text) for text in texts] == policies
    assert [policy_to_json(policy) for policy in policies] == texts
