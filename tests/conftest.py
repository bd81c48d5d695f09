"""Shared fixtures: a real server on an ephemeral port, stubs, a clock tests can move."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2_grpc as ingestion_grpc,
)
from generated.incident_manager.v1 import (
    incident_service_pb2_grpc as service_grpc,
)
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.config import Settings
from incident_manager.domain.paging.model import PagingConfig
from incident_manager.domain.ratelimit import RateLimit
from incident_manager.entrypoints.metrics import Metrics
from incident_manager.entrypoints.server import IncidentServer
from incident_manager.service.manager import IncidentManager
from incident_manager.service.pager import RulesHolder
from incident_manager.service.ports import Storage
from incident_manager.service.streaming import EventHub
from tests.support import TEST_SETTINGS, FakeClock, Running, StartServer


def _clock_argument(clock: Callable[[], datetime] | None) -> dict[str, Any]:
    """The manager keeps its own clock unless the test passes one."""
    return {"clock": clock} if clock is not None else {}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "incident-manager.db"


@pytest.fixture
async def start_server(db_path: Path) -> AsyncIterator[StartServer]:
    """Start servers (on `db_path` unless told otherwise); all are stopped at the end."""
    running: list[Running] = []

    async def start(
        *,
        storage: Storage | None = None,
        clock: Callable[[], datetime] | None = None,
        dedup_window: timedelta = timedelta(minutes=15),
        stream_buffer: int = 1000,
        path: Path | None = None,
        rate_limit: RateLimit | None = None,
        global_rate_limit: RateLimit | None = None,
        paging: PagingConfig | None = None,
        **settings: Any,
    ) -> Running:
        # Wired as bootstrap wires it: the server's metrics observe the manager.
        metrics = Metrics()
        manager = IncidentManager(
            storage if storage is not None else SqliteStorage(path or db_path),
            dedup_window=dedup_window,
            hub=EventHub(stream_buffer),
            rate_limit=rate_limit,
            global_rate_limit=global_rate_limit,
            observer=metrics,
            paging=RulesHolder(paging),
            **_clock_argument(clock),
        )
        server = IncidentServer(manager, Settings(**{**TEST_SETTINGS, **settings}), metrics)
        port = await server.start()
        address = f"127.0.0.1:{port}"
        channel = grpc.aio.insecure_channel(address)
        harness = Running(
            server=server,
            channel=channel,
            incidents=service_grpc.IncidentServiceStub(channel),
            ingestion=ingestion_grpc.AlertIngestionServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            address=address,
        )
        running.append(harness)
        return harness

    yield start
    for harness in running:
        await harness.close()


@pytest.fixture
async def server(start_server: StartServer) -> Running:
    """A server on a fresh SQLite database with the real clock."""
    return await start_server()
