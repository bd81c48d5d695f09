"""PagingService: convert the request, call the pager, convert the answer (to be folded
into servicers.py)."""

from __future__ import annotations

from typing import Any

import grpc

from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from generated.incident_manager.v1 import paging_service_pb2_grpc as paging_grpc
from incident_manager.domain.errors import ActorMismatch, ValidationError
from incident_manager.entrypoints import conversions as conv
from incident_manager.entrypoints import paging_conversions as pconv
from incident_manager.entrypoints.interceptors import PRINCIPAL
from incident_manager.entrypoints.status import unary
from incident_manager.service.pager import Pager

Context = grpc.aio.ServicerContext[Any, Any]


def acting(claimed: str, field: str) -> str:
    """Who acts: the authenticated caller if there is one (refusing another name), else the claim."""
    principal = PRINCIPAL.get()
    if principal is None:
        return claimed
    if claimed and claimed != principal.name:
        raise ActorMismatch(field, claimed, principal.name)
    return principal.name


class PagingServicer(paging_grpc.PagingServiceServicer):
    def __init__(self, pager: Pager) -> None:
        self.pager = pager

    @unary
    async def ListNotifications(
        self, request: paging_pb2.ListNotificationsRequest, context: Context
    ) -> paging_pb2.ListNotificationsResponse:
        rows, token = await self.pager.list_notifications(
            request.incident_id, request.page_size, request.page_token
        )
        return paging_pb2.ListNotificationsResponse(
            notifications=[pconv.notification_to_proto(n) for n in rows], next_page_token=token
        )

    @unary
    async def TestRoute(
        self, request: paging_pb2.TestRouteRequest, context: Context
    ) -> paging_pb2.TestRouteResponse:
        type = conv.TYPE.parse(request.type, "type") if request.type else None
        severity = conv.SEVERITY.parse(request.severity, "severity") if request.severity else None
        plan = await self.pager.test_route(
            request.source,
            type,
            severity,
            dict(request.labels),
            pconv.optional_time(request, "time", "time"),
        )
        silences = [pconv.silence_to_proto(s, self.pager.silence_state(s)) for s in plan.silences]
        return pconv.route_plan_to_proto(plan, silences)

    @unary
    async def GetOnCall(
        self, request: paging_pb2.GetOnCallRequest, context: Context
    ) -> paging_pb2.GetOnCallResponse:
        answer = await self.pager.on_call(
            request.schedule_id, pconv.optional_time(request, "time", "time")
        )
        return pconv.on_call_to_proto(answer)

    @unary
    async def CreateOverride(
        self, request: paging_pb2.CreateOverrideRequest, context: Context
    ) -> paging_pb2.CreateOverrideResponse:
        given = request.override
        override = await self.pager.create_override(
            given.schedule_id,
            given.user_id,
            pconv.optional_time(given, "start_time", "override.start_time"),
            pconv.optional_time(given, "end_time", "override.end_time"),
            acting(given.created_by, "override.created_by"),
            given.reason,
        )
        return paging_pb2.CreateOverrideResponse(override=pconv.override_to_proto(override))

    @unary
    async def ListOverrides(
        self, request: paging_pb2.ListOverridesRequest, context: Context
    ) -> paging_pb2.ListOverridesResponse:
        rows, token = await self.pager.list_overrides(
            request.schedule_id, request.include_ended, request.page_size, request.page_token
        )
        return paging_pb2.ListOverridesResponse(
            overrides=[pconv.override_to_proto(o) for o in rows], next_page_token=token
        )

    @unary
    async def DeleteOverride(
        self, request: paging_pb2.DeleteOverrideRequest, context: Context
    ) -> paging_pb2.DeleteOverrideResponse:
        await self.pager.delete_override(request.id)
        return paging_pb2.DeleteOverrideResponse()

    @unary
    async def CreateSilence(
        self, request: paging_pb2.CreateSilenceRequest, context: Context
    ) -> paging_pb2.CreateSilenceResponse:
        given = request.silence
        if not given.HasField("matchers"):
            raise ValidationError.single(
                "silence.matchers",
                "is required: say which sources, types, severities or labels to silence",
            )
        silence = await self.pager.create_silence(
            pconv.silence_matchers_from_proto(given.matchers),
            pconv.optional_time(given, "start_time", "silence.start_time"),
            pconv.optional_time(given, "end_time", "silence.end_time"),
            acting(given.created_by, "silence.created_by"),
            given.comment,
        )
        return paging_pb2.CreateSilenceResponse(
            silence=pconv.silence_to_proto(silence, self.pager.silence_state(silence))
        )

    @unary
    async def ListSilences(
        self, request: paging_pb2.ListSilencesRequest, context: Context
    ) -> paging_pb2.ListSilencesResponse:
        rows, token = await self.pager.list_silences(
            request.include_expired, request.page_size, request.page_token
        )
        return paging_pb2.ListSilencesResponse(
            silences=[pconv.silence_to_proto(s, self.pager.silence_state(s)) for s in rows],
            next_page_token=token,
        )

    @unary
    async def ExpireSilence(
        self, request: paging_pb2.ExpireSilenceRequest, context: Context
    ) -> paging_pb2.ExpireSilenceResponse:
        silence = await self.pager.expire_silence(request.id, acting(request.actor, "actor"))
        return paging_pb2.ExpireSilenceResponse(
            silence=pconv.silence_to_proto(silence, self.pager.silence_state(silence))
        )
