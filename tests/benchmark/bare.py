"""A bare grpc.aio server with our RPC shapes that does no work: the framework's ceiling.

`python -m tests.benchmark.bare --listen 127.0.0.1:PORT`
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import alert_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def ack(alert: alert_pb2.Alert) -> alert_pb2.AlertAck:
    return alert_pb2.AlertAck(
        alert_id=alert.id, status=alert_pb2.ACK_STATUS_ACCEPTED, incident_id="inc_bare"
    )


class BareIngestion(ingestion_grpc.AlertIngestionServiceServicer):
    async def SubmitAlert(
        self, request: ingestion_pb2.SubmitAlertRequest, context: Context
    ) -> ingestion_pb2.SubmitAlertResponse:
        return ingestion_pb2.SubmitAlertResponse(ack=ack(request.alert))

    async def BatchSubmitAlerts(
        self, request: ingestion_pb2.BatchSubmitAlertsRequest, context: Context
    ) -> ingestion_pb2.BatchSubmitAlertsResponse:
        return ingestion_pb2.BatchSubmitAlertsResponse(acks=[ack(a) for a in request.alerts])

    async def StreamAlerts(
        self, request_iterator: AsyncIterator[ingestion_pb2.StreamAlertsRequest], context: Context
    ) -> AsyncIterator[ingestion_pb2.StreamAlertsResponse]:
        async for request in request_iterator:
            yield ingestion_pb2.StreamAlertsResponse(ack=ack(request.alert))


class BareIncidents(service_grpc.IncidentServiceServicer):
    async def ListIncidents(
        self, request: service_pb2.ListIncidentsRequest, context: Context
    ) -> service_pb2.ListIncidentsResponse:
        return service_pb2.ListIncidentsResponse()


async def serve(listen: str) -> None:
    server = grpc.aio.server()
    # Only the RPCs the benchmark calls are implemented; grpcio answers the
    # others UNIMPLEMENTED, though the typed stubs declare every one abstract.
    ingestion_grpc.add_AlertIngestionServiceServicer_to_server(BareIngestion(), server)  # type: ignore[abstract]
    service_grpc.add_IncidentServiceServicer_to_server(BareIncidents(), server)  # type: ignore[abstract]
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    asyncio.run(serve(parser.parse_args().listen))
