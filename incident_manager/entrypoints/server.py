"""Builds the gRPC server: our two services, standard health, reflection."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2,
    alert_ingestion_service_pb2_grpc,
    incident_service_pb2,
    incident_service_pb2_grpc,
    integrations_pb2,
    integrations_pb2_grpc,
)
from incident_manager.entrypoints.reflection import DocumentedReflectionServicer
from incident_manager.entrypoints.servicers import (
    AlertIngestionServicer,
    IncidentServicer,
    IntegrationServicer,
)
from incident_manager.service.manager import IncidentManager

log = logging.getLogger(__name__)

INCIDENT_SERVICE = incident_service_pb2.DESCRIPTOR.services_by_name["IncidentService"].full_name
INGESTION_SERVICE = alert_ingestion_service_pb2.DESCRIPTOR.services_by_name[
    "AlertIngestionService"
].full_name
INTEGRATION_SERVICE = integrations_pb2.DESCRIPTOR.services_by_name["IntegrationService"].full_name
SERVICE_NAMES = (INCIDENT_SERVICE, INGESTION_SERVICE, INTEGRATION_SERVICE)


class ListenError(Exception):
    """The server could not listen on the configured address."""


class IncidentServer:
    """A running gRPC server around one IncidentManager."""

    def __init__(self, manager: IncidentManager, listen: str) -> None:
        self.manager = manager
        self.listen = listen
        # Without this, Linux lets a second server bind the same port and
        # silently share the traffic with the first.
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.health = health.aio.HealthServicer()
        self._serving = False
        incident_service_pb2_grpc.add_IncidentServiceServicer_to_server(
            IncidentServicer(manager), self.server
        )
        alert_ingestion_service_pb2_grpc.add_AlertIngestionServiceServicer_to_server(
            AlertIngestionServicer(manager, lambda: self._serving), self.server
        )
        integrations_pb2_grpc.add_IntegrationServiceServicer_to_server(
            IntegrationServicer(manager), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            DocumentedReflectionServicer(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
            ),
            self.server,
        )
        self.port = 0

    async def start(self) -> int:
        """Listen and serve; returns the bound port (useful with port 0)."""
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            self.port = self.server.add_insecure_port(self.listen)
        except RuntimeError as error:
            raise ListenError(
                f"cannot listen on {self.listen}: {str(error).rstrip('.')}. "
                "Is another server already using "
                "this port? Choose another with --listen or INCIDENT_MANAGER_LISTEN."
            ) from error
        if self.port == 0:
            raise ListenError(f"cannot listen on {self.listen}; is the port already in use?")
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        log.info("serving", extra={"listen": self.listen, "port": self.port})
        return self.port

    async def stop(self, grace: float, drain_delay: float = 0) -> None:
        """Turn health NOT_SERVING, end event streams, let calls finish, close storage.

        During `drain_delay` the server still accepts calls while reporting
        NOT_SERVING, so probes and load balancers can move traffic away
        before the listener closes.
        """
        self._serving = False
        await self.health.enter_graceful_shutdown()
        log.info(
            "shutting down", extra={"grace_seconds": grace, "drain_delay_seconds": drain_delay}
        )
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        self.manager.close_streams()
        await self.server.stop(grace)
        await self.manager.storage.close()
        log.info("stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()
