"""What only the PostgreSQL backend does: shared migrations, database URLs, unreachable servers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import psycopg
import pytest

from incident_manager.adapters.postgres import MAX_ATTEMPTS, MIGRATIONS, PostgresStorage
from incident_manager.adapters.postgres.repositories import SQL
from incident_manager.adapters.sql.rows import INCIDENT_COLUMNS, column_list, incident_row
from incident_manager.bootstrap import open_storage
from incident_manager.domain.dedup import alert_fingerprint
from incident_manager.domain.errors import StorageUnavailable, ValidationError
from incident_manager.domain.model import (
    AckStatus,
    Alert,
    Incident,
    IncidentType,
    RequestRecord,
    Severity,
    utc_now,
)
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


T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def fan_alert(alert_id: str) -> Alert:
    return Alert(
        id=alert_id, source="rack-7", title="fan 2 stopped", severity=Severity.P2,
        type=IncidentType.DATA,
    )  # fmt: skip


async def test_the_dedup_lookup_reads_the_index_on_the_last_alert_time_without_sorting() -> None:
    with fresh_database() as url:
        await PostgresStorage(url).close()
        with psycopg.connect(url) as conn:
            # 20,000 incidents over 2,000 fingerprints, a third of them resolved.
            values = {
                "id": "'inc_' || g", "title": "'t'", "description": "''", "severity": "3",
                "type": "1", "state": "CASE WHEN g % 3 = 0 THEN 5 ELSE 1 END", "source": "'s'",
                "affected_resources": "'[]'", "labels": "'{}'", "assignees": "'[]'",
                "fingerprint": "'fp' || (g % 2000)", "alert_count": "1", "create_time": "g",
                "update_time": "g", "resolution": "NULL", "version": "1", "timeline_size": "1",
                "notes_size": "0", "last_alert_time": "g", "acknowledged_by": "''",
                "acknowledge_time": "NULL",
            }  # fmt: skip
            conn.execute(
                f"INSERT INTO incidents ({column_list(list(values))}) "
                f"SELECT {', '.join(values.values())} FROM generate_series(1, 20000) AS g"
            )
            conn.execute("ANALYZE incidents")
            plan = "\n".join(
                row[0] for row in conn.execute(f"EXPLAIN {SQL.newest_active}", ("fp7", 10**15))
            )
    assert "Index Scan Backward using incidents_active_by_fingerprint" in plan
    assert "last_alert_time >=" in plan
    assert "Sort" not in plan


async def test_a_database_at_the_previous_schema_version_upgrades_and_keeps_its_incidents() -> None:
    previous = 1
    assert len(MIGRATIONS) > previous
    firing = Incident.open(
        title="fan 2 stopped", description="", severity=Severity.P2, type=IncidentType.DATA,
        source="rack-7", affected_resources=[], labels={"dc": "fra"}, assignees=["ops"],
        fingerprint=alert_fingerprint(fan_alert("old-1")).value, actor="rack-7", now=T0,
        alert_count=3,
    )  # fmt: skip
    old_columns = INCIDENT_COLUMNS[: INCIDENT_COLUMNS.index("last_alert_time")]
    with fresh_database() as url:
        with psycopg.connect(url) as conn:
            conn.execute(MIGRATIONS[0].encode())
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (previous,))
            conn.execute(
                f"INSERT INTO incidents ({column_list(old_columns)}) "
                f"VALUES ({', '.join(['%s'] * len(old_columns))})",
                incident_row(firing)[: len(old_columns)],
            )
        storage = PostgresStorage(url)
        try:
            kept = await storage.read(lambda uow: uow.incidents.get(firing.id))
            assert kept is not None
            assert (kept.title, kept.labels, kept.alert_count) == (
                "fan 2 stopped",
                {"dc": "fra"},
                3,
            )
            assert (kept.last_alert_time, kept.acknowledged_by, kept.acknowledge_time) == (
                T0, "", None,
            )  # fmt: skip
            ack = await storage.write(
                partial(
                    submit_alert,
                    alert=fan_alert("new-1"),
                    window=timedelta(minutes=15),
                    now=T0 + timedelta(minutes=14),
                )
            )
            assert (ack.status, ack.incident_id) == (AckStatus.DUPLICATE, firing.id)
        finally:
            await storage.close()
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            assert row == (len(MIGRATIONS),)
