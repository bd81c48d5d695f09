"""The PostgreSQL schema, and the migrations that bring any older database up to date."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from incident_manager.adapters.sql.paging import DIGEST_MIGRATION, PAGING_MIGRATION
from incident_manager.domain.errors import StorageUnavailable

log = logging.getLogger("incident_manager.adapters.postgres")

MIGRATION_LOCK = 0x1_6C1D_E47
"""Session advisory lock held while migrating, so replicas starting together migrate once."""

# Each entry upgrades the schema by one version (the schema_version table).
# Never edit an entry that has shipped; append a new one. Text keys use the
# "C" collation, so ids sort by their bytes as on SQLite and in Python.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE incidents (
        id TEXT COLLATE "C" PRIMARY KEY,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        severity INTEGER NOT NULL,
        type INTEGER NOT NULL,
        state INTEGER NOT NULL,
        source TEXT COLLATE "C" NOT NULL,
        affected_resources TEXT NOT NULL,
        labels TEXT NOT NULL,
        assignees TEXT NOT NULL,
        fingerprint TEXT COLLATE "C" NOT NULL,
        alert_count INTEGER NOT NULL,
        create_time BIGINT NOT NULL,
        update_time BIGINT NOT NULL,
        resolution TEXT,
        version INTEGER NOT NULL,
        timeline_size INTEGER NOT NULL,
        notes_size INTEGER NOT NULL
    );
    CREATE INDEX incidents_by_create_time ON incidents (create_time, id);
    CREATE INDEX incidents_by_update_time ON incidents (update_time, id);
    CREATE INDEX incidents_by_severity ON incidents (severity, create_time, id);
    CREATE INDEX incidents_active_by_fingerprint ON incidents (fingerprint, create_time)
        WHERE state < 5;
    CREATE INDEX incidents_by_filters ON incidents (state, severity, type, source);
    CREATE TABLE event_counter (
        only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
        last BIGINT NOT NULL
    );
    INSERT INTO event_counter (last) VALUES (0);
    CREATE TABLE events (
        sequence BIGINT PRIMARY KEY,
        incident_id TEXT COLLATE "C" NOT NULL,
        type INTEGER NOT NULL,
        actor TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL,
        create_time BIGINT NOT NULL,
        title TEXT NOT NULL,
        state INTEGER NOT NULL,
        severity INTEGER NOT NULL,
        incident_type INTEGER NOT NULL,
        source TEXT NOT NULL,
        assignees TEXT NOT NULL,
        alert_count INTEGER NOT NULL
    );
    CREATE INDEX events_by_incident ON events (incident_id, sequence);
    CREATE TABLE notes (
        position BIGSERIAL NOT NULL,
        id TEXT COLLATE "C" PRIMARY KEY,
        incident_id TEXT COLLATE "C" NOT NULL,
        author TEXT NOT NULL,
        content TEXT NOT NULL,
        create_time BIGINT NOT NULL
    );
    CREATE INDEX notes_by_incident ON notes (incident_id, create_time, position);
    CREATE TABLE alerts (
        source TEXT COLLATE "C" NOT NULL,
        alert_id TEXT COLLATE "C" NOT NULL,
        incident_id TEXT COLLATE "C" NOT NULL,
        status INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        receive_time BIGINT NOT NULL,
        payload TEXT NOT NULL,
        cleared_time BIGINT,
        PRIMARY KEY (source, alert_id)
    );
    CREATE INDEX alerts_by_incident ON alerts (incident_id, receive_time);
    CREATE TABLE requests (
        request_id TEXT COLLATE "C" PRIMARY KEY,
        kind TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        note_id TEXT NOT NULL
    );
    """,
    # The dedup window slides: it is measured from an incident's last alert,
    # which the dedup index now orders by (an older incident's last alert is
    # taken to be its opening one). Acknowledgement: who and when.
    """
    ALTER TABLE incidents ADD COLUMN last_alert_time BIGINT;
    UPDATE incidents SET last_alert_time = create_time;
    ALTER TABLE incidents ALTER COLUMN last_alert_time SET NOT NULL;
    DROP INDEX incidents_active_by_fingerprint;
    CREATE INDEX incidents_active_by_fingerprint ON incidents (fingerprint, last_alert_time, id)
        WHERE state < 5;
    ALTER TABLE incidents
        ADD COLUMN acknowledged_by TEXT NOT NULL DEFAULT '',
        ADD COLUMN acknowledge_time BIGINT;
    """,
    PAGING_MIGRATION,
    # Rate-limited channels: pages folded into digests, and each channel's window count.
    DIGEST_MIGRATION,
    # Lock, then read, in one round trip: the lookups that decide dedup
    # (repositories.py, Transaction.read_locked). A VOLATILE function's
    # statements each take a new snapshot under READ COMMITTED, so the read
    # sees what the lock's previous holder committed. The reads are those of
    # SQL.alert and SQL.newest_active; SETOF the table keeps every column. A
    # lock tried and taken by another transaction returns one row of NULLs.
    """
    CREATE FUNCTION im_locked_alert(
        lock_key BIGINT, wait BOOLEAN, alert_source TEXT, alert_key TEXT
    ) RETURNS SETOF alerts LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        busy alerts;
    BEGIN
        IF wait THEN
            PERFORM pg_advisory_xact_lock(lock_key);
        ELSIF NOT pg_try_advisory_xact_lock(lock_key) THEN
            RETURN NEXT busy;
            RETURN;
        END IF;
        RETURN QUERY SELECT * FROM alerts WHERE source = alert_source AND alert_id = alert_key;
    END $$;
    CREATE FUNCTION im_locked_newest_active(
        lock_key BIGINT, wait BOOLEAN, wanted TEXT, since BIGINT
    ) RETURNS SETOF incidents LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        busy incidents;
    BEGIN
        IF wait THEN
            PERFORM pg_advisory_xact_lock(lock_key);
        ELSIF NOT pg_try_advisory_xact_lock(lock_key) THEN
            RETURN NEXT busy;
            RETURN;
        END IF;
        RETURN QUERY SELECT * FROM incidents
            WHERE fingerprint = wanted AND state < 5 AND last_alert_time >= since
            ORDER BY last_alert_time DESC, id DESC LIMIT 1;
    END $$;
    """,
)


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema up to date under a session advisory lock; returns its version now."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        with conn.transaction():
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > len(MIGRATIONS):
                raise StorageUnavailable(
                    f"the database schema is version {version}, newer than this server knows "
                    f"({len(MIGRATIONS)}); run a newer incident-manager"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                conn.execute(script.encode())
                conn.execute("UPDATE schema_version SET version = %s", (number,))
                log.info("database schema migrated", extra={"schema_version": number})
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return len(MIGRATIONS)
