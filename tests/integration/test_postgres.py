"""What only the PostgreSQL backend does: shared migrations, database URLs, unreachable servers."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from functools import partial

import psycopg
import pytest

from incident_manager.adapters.postgres import MAX_ATTEMPTS, MIGRATIONS, PostgresStorage
from incident_manager.bootstrap import open_storage
from incident_manager.domain.errors import StorageUnavailable, ValidationError
from incident_manager.domain.model import Alert, IncidentType, RequestRecord, Severity, utc_now
from incident_manager.service.handlers import submit_alert
from incident_manager.service.ports import UnitOfWork
from tests.support.postgres import fresh_database


async def test_replicas_starting_together_migrate_the_schema_once() -> None:
    with fresh_database() as url:
        storages = await asyncio.gather(
            *(asyncio.to_thread(PostgresStorage, url) for _ in range(4))
        )
        for storage in storages:
            await storage.close()
        with psycopg.connect(url) as conn:
            versions = conn.execute("SELECT version FROM schema_version").fetchall()
        assert versions == [(len(MIGRATIONS),)]


async def test_a_schema_newer_than_the_server_is_refused_at_start() -> None:
    with fresh_database() as url:
        await PostgresStorage(url).close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE schema_version SET version = 99")
        with pytest.raises(StorageUnavailable, match="version 99, newer than this server"):
            PostgresStorage(url)


def test_an_unreachable_server_fails_the_start_quickly_without_showing_the_password() -> None:
    began = time.monotonic()
    with pytest.raises(StorageUnavailable) as refused:
        PostgresStorage("postgresql://im:s3cret@127.0.0.1:1/incidents")
    assert time.monotonic() - began < 15
    assert "PostgreSQL at 127.0.0.1:1/incidents" in refused.value.message
    assert "s3cret" not in refused.value.message


async def test_a_database_url_chooses_postgresql_and_a_path_sqlite(tmp_path: object) -> None:
    with fresh_database() as url:
        for scheme_url in (url, url.replace("postgresql://", "postgres://", 1)):
            storage = open_storage(scheme_url + "?pool_size=3")
            assert isinstance(storage, PostgresStorage)
            assert storage.available
            await storage.close()
    with pytest.raises(StorageUnavailable, match="pool_size"):
        open_storage("postgresql://postgres@127.0.0.1/x?pool_size=none")


async def test_text_with_nul_characters_is_refused_as_invalid_not_unavailable() -> None:
    with fresh_database() as url:
        storage = PostgresStorage(url)
        try:
            nul = Alert(
                id="a\x00", source="s", title="t", severity=Severity.P1, type=IncidentType.DATA
            )
            with pytest.raises(ValidationError, match="NUL"):
                await storage.write(
                    partial(submit_alert, alert=nul, window=timedelta(minutes=5), now=utc_now())
                )
            assert storage.available
        finally:
            await storage.close()


async def test_a_change_the_database_refuses_does_not_make_the_storage_unavailable() -> None:
    with fresh_database() as url:
        storage = PostgresStorage(url)
        try:

            def clash(uow: UnitOfWork) -> None:
                with uow:
                    uow.requests.add("req-1", RequestRecord("CreateIncident", "inc_1"))
                    uow.requests.add("req-1", RequestRecord("CreateIncident", "inc_1"))
                    uow.commit()

            with pytest.raises(StorageUnavailable, match="refused the change"):
                await storage.write(clash)
            assert storage.available
            assert storage.retries == MAX_ATTEMPTS - 1
        finally:
            await storage.close()
