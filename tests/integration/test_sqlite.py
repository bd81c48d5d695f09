"""What only the SQLite backend promises: a versioned schema and durable files."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from incident_manager.adapters.sql.rows import INCIDENT_COLUMNS, column_list, incident_row
from incident_manager.adapters.sqlite import MIGRATIONS, SqliteStorage, WriterCache
from incident_manager.adapters.sqlite.repositories import SQL
from incident_manager.domain.dedup import alert_fingerprint
from incident_manager.domain.errors import StorageUnavailable
from incident_manager.domain.model import (
    Alert,
    AlertStatus,
    Incident,
    IncidentState,
    IncidentType,
    ResolutionMethod,
    Severity,
)
from incident_manager.service.commands import (
    AddNote,
    IncidentChanges,
    ResolveIncident,
    UpdateIncident,
)
from incident_manager.service.handlers import submit_alerts
from incident_manager.service.manager import IncidentManager
from incident_manager.service.ports import UnitOfWork
from tests.support import FakeClock

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)


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


async def test_events_numbered_by_the_writer_follow_every_sequence_given_before(
    tmp_path: Path,
) -> None:
    # A batch numbers its events itself (one INSERT for all); a single event
    # takes SQLite's AUTOINCREMENT. Mixed, across a job that failed and a
    # reopened file, the sequence still only grows and has no gaps.
    path = tmp_path / "im.db"
    storage = SqliteStorage(path)
    manager = IncidentManager(storage)

    def alert(n: int, title: str = "t") -> Alert:
        return Alert(
            id=f"a-{n}", source="s", title=f"{title} {n % 4}", severity=Severity.P2,
            type=IncidentType.DATA,
        )  # fmt: skip

    await manager.submit_alerts([alert(n) for n in range(12)])
    await manager.submit_alert(alert(12))

    def fails(uow: UnitOfWork) -> None:
        with uow:
            submit_alerts(uow, [alert(n, "doomed") for n in range(100, 110)], WINDOW, T0)
            raise RuntimeError("this job fails after writing its events")

    with pytest.raises(RuntimeError):
        await storage.write(fails)
    await manager.submit_alerts([alert(n) for n in range(13, 20)])
    await storage.close()
    reopened = SqliteStorage(path)
    await IncidentManager(reopened).submit_alerts([alert(n, "after") for n in range(20, 24)])
    events = await reopened.read(lambda uow: uow.events.after(0, 1000))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert not any("doomed" in e.title for e in events)
    # 4 opened and 4 merged events; 1 merge; 4 merged; 4 opened.
    assert len(events) == 8 + 1 + 4 + 4
    await reopened.close()


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


def fan_alert(alert_id: str, title: str = "fan 2 stopped") -> Alert:
    return Alert(
        id=alert_id, source="rack-7", title=title, severity=Severity.P2, type=IncidentType.DATA
    )


def query_plan(conn: sqlite3.Connection) -> str:
    rows = conn.execute(f"EXPLAIN QUERY PLAN {SQL.newest_active}", ("fp", 0)).fetchall()
    return " / ".join(row[3] for row in rows)


async def test_the_dedup_lookup_reads_the_index_on_the_last_alert_time_without_sorting(
    tmp_path: Path,
) -> None:
    path = tmp_path / "im.db"
    await SqliteStorage(path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        plan = query_plan(conn)
    assert "USING INDEX incidents_active_by_fingerprint" in plan
    assert "last_alert_time>?" in plan
    assert "TEMP B-TREE" not in plan


async def test_a_database_at_the_previous_schema_version_upgrades_and_keeps_its_incidents(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v5.db"
    previous = 5
    assert len(MIGRATIONS) > previous
    firing = Incident.open(
        title="fan 2 stopped", description="", severity=Severity.P2, type=IncidentType.DATA,
        source="rack-7", affected_resources=[], labels={"dc": "fra"}, assignees=["ops"],
        fingerprint=alert_fingerprint(fan_alert("old-1")).value, actor="rack-7", now=T0,
        alert_count=3,
    )  # fmt: skip
    done = Incident.open(
        title="disk full", description="", severity=Severity.P1, type=IncidentType.DATA,
        source="rack-7", affected_resources=[], labels={}, assignees=[], fingerprint="other",
        actor="rack-7", now=T0, alert_count=1,
    )  # fmt: skip
    done.resolve(method=ResolutionMethod.MANUAL, root_cause="rc", notes="", resolved_by="x", now=T0)
    # The file as a server of the previous version left it: its columns only.
    old_columns = INCIDENT_COLUMNS[: INCIDENT_COLUMNS.index("last_alert_time")]
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for script in MIGRATIONS[:previous]:
            conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {previous}")
        for item in (firing, done):
            conn.execute(
                f"INSERT INTO incidents ({column_list(old_columns)}) "
                f"VALUES ({', '.join('?' * len(old_columns))})",
                incident_row(item)[: len(old_columns)],
            )

    clock = FakeClock(T0 + timedelta(minutes=14))
    manager = IncidentManager(SqliteStorage(path), dedup_window=WINDOW, clock=clock)
    kept = await manager.get_incident(firing.id)
    assert (kept.title, kept.labels, kept.assignees, kept.alert_count) == (
        "fan 2 stopped", {"dc": "fra"}, ["ops"], 3,
    )  # fmt: skip
    assert (kept.last_alert_time, kept.acknowledged_by, kept.acknowledge_time) == (T0, "", None)
    resolved = await manager.get_incident(done.id)
    assert resolved.state is IncidentState.RESOLVED and resolved.resolution == done.resolution
    # Its window is measured from its opening, then slides with each merge.
    merged = await manager.submit_alert(fan_alert("new-1"))
    assert merged.incident_id == firing.id
    clock.advance(minutes=14)
    assert (await manager.submit_alert(fan_alert("new-2"))).incident_id == firing.id
    assert (await manager.get_incident(firing.id)).alert_count == 5
    await manager.storage.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert "incidents_active_by_fingerprint (fingerprint=? AND last_alert_time>?)" in (
            query_plan(conn)
        )


async def test_after_a_restart_the_writer_cache_and_the_database_agree_on_dedup(
    tmp_path: Path,
) -> None:
    path = tmp_path / "im.db"
    clock = FakeClock(T0)
    manager = IncidentManager(SqliteStorage(path), dedup_window=WINDOW, clock=clock)
    # One problem fires every 10 minutes for an hour, one goes quiet after 20
    # minutes, one is resolved at once.
    firing, quiet, resolved = "fan 2 stopped", "fan 3 stopped", "fan 4 stopped"
    for tick in range(7):
        await manager.submit_alert(fan_alert(f"{firing}-{tick}", firing))
        if tick <= 2:
            await manager.submit_alert(fan_alert(f"{quiet}-{tick}", quiet))
        if tick == 0:
            await manager.submit_alert(fan_alert("resolved-0", resolved))
            cleared = replace(fan_alert("resolved-0", resolved), status=AlertStatus.RESOLVED)
            await manager.submit_alert(cleared)
        clock.advance(minutes=10)
    await manager.storage.close()

    reopened = SqliteStorage(path)
    fingerprints = [alert_fingerprint(fan_alert("x", t)).value for t in (firing, quiet, resolved)]

    async def mergeable(since: datetime) -> list[str | None]:
        """What the writer's cache answers for each problem, checked against the database."""
        answers = []
        for fingerprint in fingerprints:

            def find(uow: UnitOfWork, fingerprint: str = fingerprint) -> str | None:
                found = uow.incidents.find_mergeable(fingerprint, since)
                return None if found is None else found.id

            cached, stored = await reopened.write(find), await reopened.read(find)
            assert cached == stored, (fingerprint, since)
            answers.append(cached)
        return answers

    last_tick = T0 + timedelta(minutes=60)
    answers = await mergeable(last_tick + timedelta(minutes=14) - WINDOW)
    assert answers[0] is not None and answers[1:] == [None, None]
    assert (await mergeable(T0 + timedelta(minutes=20)))[1] is not None  # the quiet one's last
    assert await mergeable(last_tick + timedelta(microseconds=1)) == [None, None, None]
    # And the problem still firing goes on merging into its hour-old incident.
    clock.now = last_tick + timedelta(minutes=14)
    manager = IncidentManager(reopened, dedup_window=WINDOW, clock=clock)
    ack = await manager.submit_alert(fan_alert(f"{firing}-7", firing))
    assert ack.incident_id == answers[0]
    incident = await manager.get_incident(ack.incident_id)
    assert (incident.alert_count, incident.create_time) == (8, T0)
    await reopened.close()
