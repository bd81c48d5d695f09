"""The SQLite schema, and the migrations that bring any older file up to date."""

from __future__ import annotations

import logging
import sqlite3

from incident_manager.adapters.sql.paging import DIGEST_MIGRATION, PAGING_MIGRATION
from incident_manager.domain.errors import StorageUnavailable

log = logging.getLogger("incident_manager.adapters.sqlite")

# Each entry upgrades the schema by one version (PRAGMA user_version). Never
# edit an entry that has shipped; append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        severity INTEGER NOT NULL,
        type INTEGER NOT NULL,
        state INTEGER NOT NULL,
        source TEXT NOT NULL,
        affected_resources TEXT NOT NULL,
        labels TEXT NOT NULL,
        assignees TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        alert_count INTEGER NOT NULL,
        create_time INTEGER NOT NULL,
        update_time INTEGER NOT NULL,
        resolution TEXT,
        version INTEGER NOT NULL,
        timeline_size INTEGER NOT NULL
    );
    CREATE INDEX incidents_by_create_time ON incidents (create_time, id);
    CREATE INDEX incidents_by_update_time ON incidents (update_time, id);
    CREATE INDEX incidents_by_severity ON incidents (severity, create_time, id);
    CREATE INDEX incidents_active_by_fingerprint ON incidents (fingerprint, create_time)
        WHERE state < 5;
    CREATE TABLE events (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id TEXT NOT NULL,
        type INTEGER NOT NULL,
        actor TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL,
        create_time INTEGER NOT NULL,
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
        id TEXT PRIMARY KEY,
        incident_id TEXT NOT NULL,
        author TEXT NOT NULL,
        content TEXT NOT NULL,
        create_time INTEGER NOT NULL
    );
    CREATE INDEX notes_by_incident ON notes (incident_id, create_time);
    CREATE TABLE alerts (
        source TEXT NOT NULL,
        alert_id TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        receive_time INTEGER NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (source, alert_id)
    ) WITHOUT ROWID;
    """,
    """
    ALTER TABLE incidents ADD COLUMN notes_size INTEGER NOT NULL DEFAULT 0;
    UPDATE incidents SET notes_size = (SELECT COUNT(*) FROM notes WHERE incident_id = incidents.id);
    """,
    # Lets ListIncidents count the matches of its filters from an index alone.
    """
    CREATE INDEX incidents_by_filters ON incidents (state, severity, type, source);
    """,
    # Client-chosen request ids, so CreateIncident and AddNote can be retried.
    """
    CREATE TABLE requests (
        request_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        note_id TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # Resolve signals: when each alert cleared; an incident's alerts, newest first.
    """
    ALTER TABLE alerts ADD COLUMN cleared_time INTEGER;
    CREATE INDEX alerts_by_incident ON alerts (incident_id, receive_time);
    """,
    # The dedup window slides: it is measured from an incident's last alert,
    # which the dedup index now orders by (an older incident's last alert is
    # taken to be its opening one). Acknowledgement: who and when.
    """
    ALTER TABLE incidents ADD COLUMN last_alert_time INTEGER NOT NULL DEFAULT 0;
    UPDATE incidents SET last_alert_time = create_time;
    DROP INDEX incidents_active_by_fingerprint;
    CREATE INDEX incidents_active_by_fingerprint ON incidents (fingerprint, last_alert_time, id)
        WHERE state < 5;
    ALTER TABLE incidents ADD COLUMN acknowledged_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE incidents ADD COLUMN acknowledge_time INTEGER;
    """,
    PAGING_MIGRATION,
    # Rate-limited channels: pages folded into digests, and each channel's window count.
    DIGEST_MIGRATION,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; returns the version it is at now."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StorageUnavailable(
                f"the database schema is version {version}, newer than this server knows "
                f"({len(MIGRATIONS)}); run a newer incident-manager"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            log.info("database schema migrated", extra={"schema_version": number})
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)
