"""The standard grpc.health.v1 service, as Kubernetes probes and load balancers use it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from tests.conftest import Running, StartServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize(
    "service",
    [
        "",
        "incident_manager.v1.IncidentService",
        "incident_manager.v1.AlertIngestionService",
        "incident_manager.v1.IntegrationService",
    ],
)
async def test_the_server_and_each_service_report_serving(server: Running, service: str) -> None:
    response = await server.health.Check(health_pb2.HealthCheckRequest(service=service))
    assert response.status == SERVING


async def test_an_unknown_service_is_not_found(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watchers_see_not_serving_when_shutdown_begins(start_server: StartServer) -> None:
    server = await start_server()
    watch = server.health.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await asyncio.wait_for(watch.read(), 5)
    assert first.status == SERVING
    stopping = asyncio.ensure_future(server.server.stop(grace=2, drain_delay=1))
    second = await asyncio.wait_for(watch.read(), 5)
    assert second.status == NOT_SERVING
    # During the drain delay calls are still served, and the legacy RPC agrees.
    legacy = await server.ingestion.HealthCheck(ingestion_pb2.HealthCheckRequest())
    assert legacy.status == ingestion_pb2.SERVING_STATUS_NOT_SERVING
    watch.cancel()
    await stopping
