"""Wires the incident manager's dependencies, in one place; tests pass fakes in instead.

The server's metrics are the manager's observer from the start: nothing is
attached to the manager after it is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from incident_manager.adapters.channels.outbox import BoundedRetries, OutboxDispatcher
from incident_manager.adapters.postgres import PostgresStorage, is_postgres_url
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.config import Settings
from incident_manager.domain.model import Clock, utc_now
from incident_manager.domain.paging.model import PagingConfig
from incident_manager.domain.ratelimit import RateLimit
from incident_manager.entrypoints.metrics import Metrics
from incident_manager.entrypoints.server import IncidentServer, StartupError
from incident_manager.paging import PagingFileError, load_paging_file
from incident_manager.service.manager import IncidentManager, Observer
from incident_manager.service.pager import RulesHolder
from incident_manager.service.ports import Storage
from incident_manager.service.scheduler import PagingWorker
from incident_manager.service.streaming import EventHub

log = logging.getLogger("incident_manager")


async def start_server(
    settings: Settings, *, storage: Storage | None = None, clock: Clock = utc_now
) -> IncidentServer:
    """A started server around a manager on the configured storage, its metrics observing it.

    StartupError (a bad tokens file, a busy port) closes the storage again first.
    """
    metrics = Metrics()
    rules = RulesHolder(_paging_config(settings))
    storage = storage if storage is not None else _storage_for(settings)
    worker = (
        PagingWorker(
            storage,
            rules,
            OutboxDispatcher(rules),
            BoundedRetries(),
            clock,
            lease=settings.paging_lease,
            observer=metrics,
            # An SQLite file has one server (its lock file says so): leases left by a
            # process that died are its own, so they are dropped at once, not waited out.
            release_claims_at_start=not is_postgres_url(settings.database),
        )
        if rules.current is not None
        else None
    )
    manager = build_manager(
        settings,
        storage=storage,
        clock=clock,
        observer=metrics,
        paging=rules,
        wake_paging=worker.wake if worker is not None else _nothing,
    )
    try:
        server = IncidentServer(manager, settings, metrics, worker)
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
    paging: RulesHolder | None = None,
    wake_paging: Callable[[], None] | None = None,
) -> IncidentManager:
    """The application service on the configured storage (unless one is given).

    A `postgresql://` or `postgres://` database URL means PostgreSQL, which
    several replicas can share; anything else is the path of an SQLite file.
    """
    return IncidentManager(
        storage if storage is not None else _storage_for(settings),
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
        paging=paging,
        wake_paging=wake_paging or _nothing,
    )


def _nothing() -> None:
    pass


def _paging_config(settings: Settings) -> PagingConfig | None:
    """The paging file's configuration; StartupError (exit 2) naming each mistake."""
    if not settings.paging_config:
        return None
    try:
        loaded = load_paging_file(settings.paging_config)
    except PagingFileError as error:
        raise StartupError(
            "the paging configuration cannot be used (--paging-config):\n"
            + "\n".join(error.messages)
        ) from None
    problem = loaded.config.lease_problem(settings.paging_lease)
    if problem:
        raise StartupError(f"the paging configuration cannot be used: {problem}")
    for warning in loaded.warnings:
        log.warning("paging configuration: %s", warning)
    return loaded.config


def uses_postgres(database: str) -> bool:
    """Whether the --database setting names PostgreSQL (a URL) rather than an SQLite file."""
    return is_postgres_url(database)


def open_storage(database: str, *, sqlite_cache_mib: int | None = None) -> Storage:
    """PostgreSQL for a database URL, else SQLite on a file path (its writer's page cache
    `sqlite_cache_mib` MiB, or the writer's default)."""
    if is_postgres_url(database):
        return PostgresStorage(database)
    if sqlite_cache_mib is None:
        return SqliteStorage(database)
    return SqliteStorage(database, cache_kib=sqlite_cache_mib * 1024)


def _storage_for(settings: Settings) -> Storage:
    return open_storage(settings.database, sqlite_cache_mib=settings.sqlite_cache)
