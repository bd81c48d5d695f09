"""Wires the incident manager's dependencies; tests pass fakes in instead."""

from __future__ import annotations

from incident_manager.adapters.postgres import PostgresStorage, is_postgres_url
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.config import Settings
from incident_manager.domain.model import Clock, utc_now
from incident_manager.domain.ratelimit import RateLimit
from incident_manager.service.manager import IncidentManager
from incident_manager.service.ports import Storage
from incident_manager.service.streaming import EventHub


def build_manager(
    settings: Settings, *, storage: Storage | None = None, clock: Clock = utc_now
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
    )


def open_storage(database: str) -> Storage:
    """PostgreSQL for a database URL, else SQLite on a file path."""
    if is_postgres_url(database):
        return PostgresStorage(database)
    return SqliteStorage(database)
