"""Wires the incident manager's dependencies, in one place; tests pass fakes in instead.

The server's metrics are the manager's observer from the start: nothing is
attached to the manager after it is built.
"""

from __future__ import annotations

from incident_manager.adapters.postgres import PostgresStorage, is_postgres_url
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.config import Settings
from incident_manager.domain.model import Clock, utc_now
from incident_manager.domain.ratelimit import RateLimit
from incident_manager.entrypoints.metrics import Metrics
from incident_manager.entrypoints.server import IncidentServer, StartupError
from incident_manager.service.manager import IncidentManager, Observer
from incident_manager.service.ports import Storage
from incident_manager.service.streaming import EventHub


async def start_server(
    settings: Settings, *, storage: Storage | None = None, clock: Clock = utc_now
) -> IncidentServer:
    """A started server around a manager on the configured storage, its metrics observing it.

    StartupError (a bad tokens file, a busy port) closes the storage again first.
    """
    metrics = Metrics()
    manager = build_manager(settings, storage=storage, clock=clock, observer=metrics)
    try:
        server = IncidentServer(manager, settings, metrics)
        await server.start()
    except StartupError:
        await manager.close()
        raise
    return server


def build_manager(
    settings: Settings,
    *,
    storage: Storage | None = None,
    clock: Clock = utc_now,
    observer: Observer | None = None,
) -> IncidentManager:
    """The application service on the configured storage (unless one is given).

    A `postgresql://` or `postgres://` database URL means PostgreSQL, which
    several replicas can share; anything else is the path of an SQLite file.
    """
    return IncidentManager(
        storage if storage is not None else open_storage(settings.database),
        dedup_window=settings.dedup_window,
        clock=clock,
        hub=EventHub(settings.stream_buffer),
        auto_resolve=settings.auto_resolve,
        rate_limit=(
            RateLimit(settings.rate_limit, settings.rate_burst) if settings.rate_limit > 0 else None
        ),
        max_pending_alerts=settings.max_pending_alerts,
        global_rate_limit=(
            RateLimit(settings.global_rate_limit, settings.global_rate_burst)
            if settings.global_rate_limit > 0
            else None
        ),
        observer=observer,
    )


def uses_postgres(database: str) -> bool:
    """Whether the --database setting names PostgreSQL (a URL) rather than an SQLite file."""
    return is_postgres_url(database)


def open_storage(database: str) -> Storage:
    """PostgreSQL for a database URL, else SQLite on a file path."""
    if is_postgres_url(database):
        return PostgresStorage(database)
    return SqliteStorage(database)
