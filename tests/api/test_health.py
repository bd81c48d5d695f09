"""The standard grpc.health.v1 service, as Kubernetes probes and load balancers use it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from incident_manager.adapters.memory import MemoryStorage
from incident_manager.entrypoints.metrics import collect
from tests.support import Running, StartServer, eventually

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


class FlakyStorage(MemoryStorage):
    """In-memory storage whose database a test can take away."""

    def __init__(self) -> None:
        super().__init__()
        self.reachable = True

    @property
    def available(self) -> bool:
        return self.reachable


async def wait_for_status(server: Running, status: int, service: str = "") -> None:
    async def reached() -> bool:
        answer = await server.health.Check(health_pb2.HealthCheckRequest(service=service))
        reported: int = answer.status
        return reported == status

    await eventually(reached, timeout=5, what=f"health of {service!r} to become {status}")


async def test_health_follows_the_storage_and_recovers_by_itself(
    start_server: StartServer,
) -> None:
    storage = FlakyStorage()
    server = await start_server(storage=storage)
    watch = server.health.Watch(health_pb2.HealthCheckRequest())
    assert (await watch.read()).status == SERVING

    storage.reachable = False
    assert (await asyncio.wait_for(watch.read(), timeout=5)).status == NOT_SERVING
    await wait_for_status(server, NOT_SERVING, "incident_manager.v1.AlertIngestionService")
    # Liveness probes must not restart a server that only waits for its database.
    alive = await server.health.Check(health_pb2.HealthCheckRequest(service="liveness"))
    assert alive.status == SERVING
    assert collect(server.server.metrics.registry)["incident_manager_storage_available"] == 0

    storage.reachable = True
    assert (await asyncio.wait_for(watch.read(), timeout=5)).status == SERVING
    assert collect(server.server.metrics.registry)["incident_manager_storage_available"] == 1
    watch.cancel()
