"""Handles on a server running in the test's own event loop (the `start_server`
and `server` fixtures of tests/conftest.py build them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2_grpc as ingestion_grpc,
)
from generated.incident_manager.v1 import (
    incident_service_pb2_grpc as service_grpc,
)
from incident_manager.entrypoints.server import IncidentServer

TEST_SETTINGS: dict[str, Any] = {"listen": "127.0.0.1:0", "metrics_listen": "off"}
"""Servers in tests listen on a free port and serve no /metrics unless a test asks."""


@dataclass
class Running:
    """A started server with a channel and a stub for every service."""

    server: IncidentServer
    channel: grpc.aio.Channel
    incidents: service_grpc.IncidentServiceAsyncStub
    ingestion: ingestion_grpc.AlertIngestionServiceAsyncStub
    health: health_pb2_grpc.HealthStub
    address: str

    async def close(self, grace: float = 0) -> None:
        """Close the channel, then stop the server."""
        await self.channel.close()
        await self.server.stop(grace)


StartServer = Callable[..., Awaitable[Running]]
"""The `start_server` fixture: keyword arguments choose storage, clock and settings."""
