"""gRPC servicers: convert the request, call the incident manager, convert the answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2 as ingestion_pb2,
)
from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2_grpc as ingestion_grpc,
)
from generated.incident_manager.v1 import (
    alert_pb2,
    integrations_pb2,
)
from generated.incident_manager.v1 import (
    incident_service_pb2 as service_pb2,
)
from generated.incident_manager.v1 import (
    incident_service_pb2_grpc as service_grpc,
)
from generated.incident_manager.v1 import (
    integrations_pb2_grpc as integrations_grpc,
)
from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from generated.incident_manager.v1 import paging_service_pb2_grpc as paging_grpc
from incident_manager import __version__
from incident_manager.domain.errors import (
    ValidationError,
)
from incident_manager.domain.integrations import ModuleEvent
from incident_manager.domain.model import AckStatus, Alert, AlertAck
from incident_manager.entrypoints import conversions as conv
from incident_manager.entrypoints.auth import acting_as, caller
from incident_manager.entrypoints.status import streaming, unary
from incident_manager.service.manager import IncidentManager, ListRequest
from incident_manager.service.pager import Pager
from incident_manager.service.pagination import parse_order_by

log = logging.getLogger(__name__)

STREAM_WINDOW = 256
"""Alerts of one StreamAlerts call read ahead of their acks at most."""
STREAM_WRITES = 2
"""Writes of one StreamAlerts call queued behind the one being acked; alerts read
meanwhile wait, and go to storage together in the next."""

Context = grpc.aio.ServicerContext[Any, Any]


class IncidentServicer(service_grpc.IncidentServiceServicer):
    def __init__(self, manager: IncidentManager) -> None:
        self.manager = manager

    @unary
    async def CreateIncident(
        self, request: service_pb2.CreateIncidentRequest, context: Context
    ) -> service_pb2.CreateIncidentResponse:
        command = conv.create_incident_from_proto(request, actor=acting_as("actor", request.actor))
        incident = await self.manager.create_incident(command)
        return service_pb2.CreateIncidentResponse(incident=conv.incident_to_proto(incident))

    @unary
    async def GetIncident(
        self, request: service_pb2.GetIncidentRequest, context: Context
    ) -> service_pb2.GetIncidentResponse:
        incident = await self.manager.get_incident(request.id)
        return service_pb2.GetIncidentResponse(incident=conv.incident_to_proto(incident))

    @unary
    async def UpdateIncident(
        self, request: service_pb2.UpdateIncidentRequest, context: Context
    ) -> service_pb2.UpdateIncidentResponse:
        command = conv.update_incident_from_proto(request, actor=acting_as("actor", request.actor))
        incident = await self.manager.update_incident(command)
        return service_pb2.UpdateIncidentResponse(incident=conv.incident_to_proto(incident))

    @unary
    async def ResolveIncident(
        self, request: service_pb2.ResolveIncidentRequest, context: Context
    ) -> service_pb2.ResolveIncidentResponse:
        command = conv.resolve_incident_from_proto(
            request, resolved_by=acting_as("resolved_by", request.resolved_by)
        )
        incident = await self.manager.resolve_incident(command)
        return service_pb2.ResolveIncidentResponse(incident=conv.incident_to_proto(incident))

    @unary
    async def AddNote(
        self, request: service_pb2.AddNoteRequest, context: Context
    ) -> service_pb2.AddNoteResponse:
        command = conv.add_note_from_proto(request, author=acting_as("author", request.author))
        note, incident = await self.manager.add_note(command)
        return service_pb2.AddNoteResponse(
            note=conv.note_to_proto(note), incident=conv.incident_to_proto(incident)
        )

    @unary
    async def AcknowledgeIncident(
        self, request: service_pb2.AcknowledgeIncidentRequest, context: Context
    ) -> service_pb2.AcknowledgeIncidentResponse:
        incident = await self.manager.acknowledge_incident(
            request.id, acting_as("actor", request.actor)
        )
        return service_pb2.AcknowledgeIncidentResponse(incident=conv.incident_to_proto(incident))

    @unary
    async def ListIncidents(
        self, request: service_pb2.ListIncidentsRequest, context: Context
    ) -> service_pb2.ListIncidentsResponse:
        result = await self.manager.list_incidents(
            ListRequest(
                filter=conv.filter_from_proto(request),
                ordering=parse_order_by(request.order_by),
                page_size=request.page_size,
                page_token=request.page_token,
                with_history=conv.wants_full_view(request.view),
            )
        )
        return service_pb2.ListIncidentsResponse(
            incidents=[conv.incident_to_proto(i) for i in result.incidents],
            next_page_token=result.next_page_token,
            total_size=result.total_size,
        )

    @streaming
    async def StreamIncidents(
        self, request: service_pb2.StreamIncidentsRequest, context: Context
    ) -> AsyncIterator[service_pb2.StreamIncidentsResponse]:
        event_filter = conv.filter_from_proto(request, incident_id=request.incident_id)
        after = request.after_sequence if request.HasField("after_sequence") else None
        async for event in self.manager.follow_events(event_filter, after):
            yield service_pb2.StreamIncidentsResponse(event=conv.incident_event_to_proto(event))


class AlertIngestionServicer(ingestion_grpc.AlertIngestionServiceServicer):
    def __init__(self, manager: IncidentManager, is_serving: Callable[[], bool]) -> None:
        self.manager = manager
        self.is_serving = is_serving

    @unary
    async def SubmitAlert(
        self, request: ingestion_pb2.SubmitAlertRequest, context: Context
    ) -> ingestion_pb2.SubmitAlertResponse:
        ack = await self.manager.submit_alert(conv.alert_from_proto(request.alert), caller())
        return ingestion_pb2.SubmitAlertResponse(ack=conv.ack_to_proto(ack))

    @unary
    async def BatchSubmitAlerts(
        self, request: ingestion_pb2.BatchSubmitAlertsRequest, context: Context
    ) -> ingestion_pb2.BatchSubmitAlertsResponse:
        items: list[Alert | AlertAck] = []
        for index, message in enumerate(request.alerts):
            try:
                items.append(conv.alert_from_proto(message, prefix=f"alerts[{index}]."))
            except ValidationError as error:
                items.append(AlertAck(message.id, AckStatus.REJECTED, message=error.message))
        acks = await self.manager.submit_alerts(items, caller())
        return ingestion_pb2.BatchSubmitAlertsResponse(acks=[conv.ack_to_proto(a) for a in acks])

    @streaming
    async def StreamAlerts(
        self, request_iterator: AsyncIterator[ingestion_pb2.StreamAlertsRequest], context: Context
    ) -> AsyncIterator[ingestion_pb2.StreamAlertsResponse]:
        # Alerts read while this stream's earlier writes are in flight are stored
        # together, as one batch (one writer job, not one per alert). At most
        # STREAM_WINDOW alerts are read ahead of their acks, and acks leave in
        # the order the alerts came.
        window = asyncio.Semaphore(STREAM_WINDOW)
        waiting: list[Alert | AlertAck] = []
        arrived = asyncio.Event()
        reading = True
        writes: asyncio.Queue[asyncio.Future[list[AlertAck]] | None] = asyncio.Queue(STREAM_WRITES)
        sender = caller()

        async def read() -> None:
            nonlocal reading
            received = 0
            try:
                async for request in request_iterator:
                    await window.acquire()
                    waiting.append(_decoded(request.alert))
                    received += 1
                    arrived.set()
            except DecodeError as error:
                # grpc decodes each streamed message as we read it; a corrupt
                # one is the client's mistake, not an internal error.
                raise ValidationError.single(
                    f"messages[{received}]", f"is not a valid StreamAlertsRequest: {error}"
                ) from error
            finally:
                reading = False
                arrived.set()

        async def write() -> None:
            while waiting or reading:
                if not waiting:
                    arrived.clear()
                    await arrived.wait()
                    continue
                chunk = waiting[:]
                waiting.clear()
                task = asyncio.ensure_future(self.manager.submit_streamed_alerts(chunk, sender))
                try:
                    await writes.put(task)
                except BaseException:
                    task.cancel()  # never queued, so nobody else would cancel it
                    raise
                # The next chunk waits for this one to be stored: what arrives
                # meanwhile goes to storage together, however fast it trickles in.
                await asyncio.wait([task])
            await writes.put(None)

        reader = asyncio.ensure_future(read())
        writer = asyncio.ensure_future(write())
        try:
            while (pending := await writes.get()) is not None:
                for ack in await pending:
                    window.release()
                    yield ingestion_pb2.StreamAlertsResponse(ack=conv.ack_to_proto(ack))
            await reader  # surfaces an error the reader met
        finally:
            reader.cancel()
            writer.cancel()
            while not writes.empty():
                leftover = writes.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    @unary
    async def HealthCheck(
        self, request: ingestion_pb2.HealthCheckRequest, context: Context
    ) -> ingestion_pb2.HealthCheckResponse:
        status = (
            ingestion_pb2.SERVING_STATUS_SERVING
            if self.is_serving()
            else ingestion_pb2.SERVING_STATUS_NOT_SERVING
        )
        return ingestion_pb2.HealthCheckResponse(
            status=status,
            version=__version__,
            uptime=conv.duration_to_proto(timedelta(seconds=self.manager.uptime())),
        )


def _decoded(message: alert_pb2.Alert) -> Alert | AlertAck:
    """A streamed alert, or the ack refusing it: a bad alert does not end the stream."""
    try:
        return conv.alert_from_proto(message)
    except ValidationError as error:
        return AlertAck(message.id, AckStatus.REJECTED, message=error.message)


class IntegrationServicer(integrations_grpc.IntegrationServiceServicer):
    """Module events, ingested like alerts once the manager has mapped them."""

    def __init__(self, manager: IncidentManager) -> None:
        self.manager = manager

    @unary
    async def SubmitModuleEvent(
        self, request: integrations_pb2.SubmitModuleEventRequest, context: Context
    ) -> integrations_pb2.SubmitModuleEventResponse:
        ack = await self.manager.submit_module_event(
            conv.module_event_from_proto(request.event), caller()
        )
        return integrations_pb2.SubmitModuleEventResponse(ack=conv.ack_to_proto(ack))

    @unary
    async def BatchSubmitModuleEvents(
        self, request: integrations_pb2.BatchSubmitModuleEventsRequest, context: Context
    ) -> integrations_pb2.BatchSubmitModuleEventsResponse:
        items: list[ModuleEvent | AlertAck] = []
        for index, message in enumerate(request.events):
            try:
                items.append(conv.module_event_from_proto(message, prefix=f"events[{index}]."))
            except ValidationError as error:
                items.append(AlertAck(message.id, AckStatus.REJECTED, message=error.message))
        acks = await self.manager.submit_module_events(items, caller())
        return integrations_pb2.BatchSubmitModuleEventsResponse(
            acks=[conv.ack_to_proto(a) for a in acks]
        )


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
            notifications=[conv.notification_to_proto(n) for n in rows], next_page_token=token
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
            conv.optional_time(request, "time", "time"),
        )
        silences = [conv.silence_to_proto(s, self.pager.silence_state(s)) for s in plan.silences]
        return conv.route_plan_to_proto(plan, silences)

    @unary
    async def GetOnCall(
        self, request: paging_pb2.GetOnCallRequest, context: Context
    ) -> paging_pb2.GetOnCallResponse:
        answer = await self.pager.on_call(
            request.schedule_id, conv.optional_time(request, "time", "time")
        )
        return conv.on_call_to_proto(answer, self.pager.user_name(answer.user_id))

    @unary
    async def CreateOverride(
        self, request: paging_pb2.CreateOverrideRequest, context: Context
    ) -> paging_pb2.CreateOverrideResponse:
        given = request.override
        override = await self.pager.create_override(
            given.schedule_id,
            given.user_id,
            conv.optional_time(given, "start_time", "override.start_time"),
            conv.optional_time(given, "end_time", "override.end_time"),
            acting_as("override.created_by", given.created_by),
            given.reason,
        )
        return paging_pb2.CreateOverrideResponse(override=conv.override_to_proto(override))

    @unary
    async def ListOverrides(
        self, request: paging_pb2.ListOverridesRequest, context: Context
    ) -> paging_pb2.ListOverridesResponse:
        rows, token = await self.pager.list_overrides(
            request.schedule_id, request.include_ended, request.page_size, request.page_token
        )
        return paging_pb2.ListOverridesResponse(
            overrides=[conv.override_to_proto(o) for o in rows], next_page_token=token
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
            conv.silence_matcher_from_proto(given.matchers),
            conv.optional_time(given, "start_time", "silence.start_time"),
            conv.optional_time(given, "end_time", "silence.end_time"),
            acting_as("silence.created_by", given.created_by),
            given.comment,
        )
        return paging_pb2.CreateSilenceResponse(
            silence=conv.silence_to_proto(silence, self.pager.silence_state(silence))
        )

    @unary
    async def ListSilences(
        self, request: paging_pb2.ListSilencesRequest, context: Context
    ) -> paging_pb2.ListSilencesResponse:
        rows, token = await self.pager.list_silences(
            request.include_expired, request.page_size, request.page_token
        )
        return paging_pb2.ListSilencesResponse(
            silences=[conv.silence_to_proto(s, self.pager.silence_state(s)) for s in rows],
            next_page_token=token,
        )

    @unary
    async def ExpireSilence(
        self, request: paging_pb2.ExpireSilenceRequest, context: Context
    ) -> paging_pb2.ExpireSilenceResponse:
        silence = await self.pager.expire_silence(request.id, acting_as("actor", request.actor))
        return paging_pb2.ExpireSilenceResponse(
            silence=conv.silence_to_proto(silence, self.pager.silence_state(silence))
        )
