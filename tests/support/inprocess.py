"""Handles on a server running in the test's own event loop (the `start_server`
and `server` fixtures of tests/conftest.py build them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

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


Response = TypeVar("Response")


@overload
async def next_message(call: grpc.aio.UnaryStreamCall[Any, Response]) -> Response: ...


@overload
async def next_message(call: grpc.aio.StreamStreamCall[Any, Response]) -> Response: ...


async def next_message(call: Any) -> Any:
    """The next message a server stream sends within 5 s; fails if the stream ended instead."""
    message = await asyncio.wait_for(call.read(), 5)
    assert message is not grpc.aio.EOF, "the stream ended before its next message"
    return message
