"""What only the SQLite backend promises: a versioned schema and durable files."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from incident_manager.adapters.sqlite import MIGRATIONS, SqliteStorage, WriterCache
from incident_manager.domain.errors import StorageUnavailable
from incident_manager.domain.model import Alert, IncidentType, ResolutionMethod, Severity
from incident_manager.service.commands import (
    AddNote,
    IncidentChanges,
    ResolveIncident,
    UpdateIncident,
)
from incident_manager.service.manager import IncidentManager


async def test_the_schema_is_versioned_and_reopening_does_not_migrate_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db" / "nested" / "im.db"
    storage = SqliteStorage(path)
    await storage.close()
    reopened = SqliteStorage(path)
    await reopened.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_database_from_a_newer_server_is_refused_with_a_clear_message(
    tmp_path: Path,
) -> None:
    path = tmp_path / "im.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StorageUnavailable, match="newer than this server knows"):
        SqliteStorage(path)


async def test_a_database_path_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageUnavailable, match="cannot open database"):
        SqliteStorage(blocker / "im.db")


async def test_alerts_and_their_counts_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "im.db"
    manager = IncidentManager(SqliteStorage(path))
    alert = Alert(
        id="a-1", source="edge-agent", title="t", severity=Severity.P1, type=IncidentType.DATA
    )
    first = await manager.submit_alert(alert)
    await manager.submit_alert(Alert(**{**alert.__dict__, "id": "a-2"}))
    await manager.storage.close()

    reopened = IncidentManager(SqliteStorage(path))
    retry = await reopened.submit_alert(alert)
    incident = await reopened.get_incident(first.incident_id)
    assert retry.incident_id == first.incident_id
    assert incident.alert_count == 2
    await reopened.storage.close()


async def test_a_closed_storage_refuses_work_as_unavailable(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "im.db")
    await storage.close()
    with pytest.raises(StorageUnavailable, match="closed"):
        await storage.read(lambda uow: uow.events.last_sequence())


async def test_dedup_stays_exact_when_the_index_outgrows_its_limit(tmp_path: Path) -> None:
    # An index of 3 fingerprints overflows at once; misses must then ask the
    # database, and every count must still be exact.
    storage = SqliteStorage(tmp_path / "im.db", cache=WriterCache(max_fingerprints=3))
    manager = IncidentManager(storage)
    alerts = [
        Alert(
            id=f"a-{i}",
            source="edge-agent",
            title=f"agent {i % 8} offline",
            severity=Severity.P2,
            type=IncidentType.AVAILABILITY,
        )
        for i in range(80)
    ]
    acks = await manager.submit_alerts(alerts[:40])
    acks += [await manager.submit_alert(a) for a in alerts[40:]]
    assert len({a.incident_id for a in acks}) == 8
    for incident_id in {a.incident_id for a in acks}:
        assert (await manager.get_incident(incident_id)).alert_count == 10
    await storage.close()


async def test_every_change_reads_back_the_same_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "im.db"
    manager = IncidentManager(SqliteStorage(path))
    alert = Alert(
        id="a-1", source="llm-shield", title="t", severity=Severity.P3, type=IncidentType.SECURITY
    )
    ack = await manager.submit_alert(alert)
    await manager.submit_alert(Alert(**{**alert.__dict__, "id": "a-2", "severity": Severity.P0}))
    await manager.update_incident(
        UpdateIncident(ack.incident_id, IncidentChanges(labels={"tenant": "acme"}), actor="x")
    )
    await manager.add_note(AddNote(ack.incident_id, "x", "looking"))
    await manager.resolve_incident(
        ResolveIncident(ack.incident_id, ResolutionMethod.MANUAL, "x", root_cause="rc")
    )
    before = await manager.get_incident(ack.incident_id)
    await manager.storage.close()

    reopened = IncidentManager(SqliteStorage(path))
    after = await reopened.get_incident(ack.incident_id)
    await reopened.storage.close()
    assert after == before
    assert (after.alert_count, after.severity, after.notes_size) == (2, Severity.P0, 1)
    assert after.resolution is not None and after.resolution.root_cause == "rc"


async def test_a_writer_that_cannot_go_on_refuses_writes_instead_of_hanging(
    tmp_path: Path,
) -> None:
    storage = SqliteStorage(tmp_path / "im.db")

    def escape(uow: object) -> None:
        raise SystemExit("a job that escapes every handler")

    with pytest.raises(StorageUnavailable, match="writer failed"):
        await asyncio.wait_for(storage.write(escape), 5)
    with pytest.raises(StorageUnavailable, match="writer failed"):
        await asyncio.wait_for(storage.write(lambda uow: None), 5)
    await storage.close()
