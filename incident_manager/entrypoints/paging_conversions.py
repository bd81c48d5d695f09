"""Conversions for PagingService (to be folded into conversions.py)."""

from __future__ import annotations

from datetime import datetime

from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from incident_manager.domain.paging.ledger import (
    Notification,
    NotificationState,
    Override,
    Silence,
    SilenceMatchers,
    TargetKind,
)
from incident_manager.entrypoints.conversions import (
    SEVERITY,
    TYPE,
    EnumTable,
    duration_to_proto,
    timestamp_from_proto,
    timestamp_to_proto,
)
from incident_manager.service.pager import OnCall, RoutePlan

NOTIFICATION_STATE = EnumTable(
    NotificationState, paging_pb2.NotificationState, "NOTIFICATION_STATE_"
)
TARGET_KIND = EnumTable(TargetKind, paging_pb2.TargetKind, "TARGET_KIND_")
SILENCE_STATES = {
    name: paging_pb2.SilenceState.Value(f"SILENCE_STATE_{name}")
    for name in ("PENDING", "ACTIVE", "EXPIRED")
}


def optional_time(message: object, name: str, field: str) -> datetime | None:
    """A Timestamp field that may be unset."""
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    return timestamp_from_proto(getattr(message, name), field)


def notification_to_proto(n: Notification) -> paging_pb2.Notification:
    message = paging_pb2.Notification(
        id=n.id,
        incident_id=n.incident_id,
        policy_id=n.policy_id,
        level=n.level,
        round=n.round,
        target_kind=TARGET_KIND.to_proto[n.target_kind],  # type: ignore[arg-type]
        target_id=n.target_id,
        user_id=n.user_id,
        channel_id=n.channel_id,
        channel_type=n.channel_type,
        recipient=n.recipient,
        state=NOTIFICATION_STATE.to_proto[n.state],  # type: ignore[arg-type]
        attempts=n.attempts,
        last_error=n.last_error,
        reason=n.reason,
        create_time=timestamp_to_proto(n.create_time),
    )
    if n.update_time is not None:
        message.update_time.CopyFrom(timestamp_to_proto(n.update_time))
    if n.send_time is not None:
        message.send_time.CopyFrom(timestamp_to_proto(n.send_time))
    if n.next_attempt_time is not None and n.state is NotificationState.PENDING:
        message.next_attempt_time.CopyFrom(timestamp_to_proto(n.next_attempt_time))
    return message


def silence_matchers_from_proto(message: paging_pb2.SilenceMatchers) -> SilenceMatchers:
    return SilenceMatchers(
        sources=frozenset(message.sources),
        types=frozenset(int(t) for t in TYPE.parse_many(message.types, "silence.matchers.types")),
        severities=frozenset(
            int(s) for s in SEVERITY.parse_many(message.severities, "silence.matchers.severities")
        ),
        labels=dict(message.labels),
    )


def silence_to_proto(silence: Silence, state: str) -> paging_pb2.Silence:
    matchers = silence.matchers
    return paging_pb2.Silence(
        id=silence.id,
        matchers=paging_pb2.SilenceMatchers(
            sources=sorted(matchers.sources),
            types=[TYPE.to_proto[TYPE.domain(t)] for t in sorted(matchers.types)],  # type: ignore[misc]
            severities=[
                SEVERITY.to_proto[SEVERITY.domain(s)]  # type: ignore[misc]
                for s in sorted(matchers.severities)
            ],
            labels=dict(matchers.labels),
        ),
        start_time=timestamp_to_proto(silence.start),
        end_time=timestamp_to_proto(silence.end),
        created_by=silence.created_by,
        comment=silence.comment,
        create_time=timestamp_to_proto(silence.create_time),
        state=SILENCE_STATES[state],  # type: ignore[arg-type]
        expired_by=silence.expired_by,
    )


def override_to_proto(override: Override) -> paging_pb2.Override:
    return paging_pb2.Override(
        id=override.id,
        schedule_id=override.schedule_id,
        user_id=override.user_id,
        start_time=timestamp_to_proto(override.start),
        end_time=timestamp_to_proto(override.end),
        created_by=override.created_by,
        reason=override.reason,
        create_time=timestamp_to_proto(override.create_time),
    )


def on_call_to_proto(answer: OnCall) -> paging_pb2.GetOnCallResponse:
    return paging_pb2.GetOnCallResponse(
        schedule_id=answer.schedule_id,
        user_id=answer.user_id,
        user_name=answer.user_name,
        start_time=timestamp_to_proto(answer.since),
        end_time=timestamp_to_proto(answer.until),
        layer=answer.layer,
        override_id=answer.override_id,
    )


def route_plan_to_proto(
    plan: RoutePlan, silences: list[paging_pb2.Silence]
) -> paging_pb2.TestRouteResponse:
    response = paging_pb2.TestRouteResponse(
        matched=plan.matched, route=plan.route, policy_id=plan.policy_id, silences=silences
    )
    for step in plan.steps:
        response.levels.append(
            paging_pb2.PlannedLevel(
                level=step.level,
                round=step.round,
                notify_time=timestamp_to_proto(step.at),
                deliveries=[
                    paging_pb2.PlannedDelivery(
                        target_kind=TARGET_KIND.to_proto[target.kind],  # type: ignore[arg-type]
                        target_id=target.id,
                        user_id=found.user_id,
                        channel_id=found.channel_id,
                        recipient=found.recipient,
                        problem=found.problem,
                    )
                    for target, found in step.deliveries
                ],
            )
        )
    if plan.ack_timeout:
        response.ack_timeout.CopyFrom(duration_to_proto(plan.ack_timeout))
    return response
