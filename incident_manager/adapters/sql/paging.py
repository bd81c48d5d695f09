"""The paging repository, written once for SQLite and PostgreSQL.

The backends differ only in the placeholder and in how due rows are claimed:
PostgreSQL locks them with FOR UPDATE SKIP LOCKED, so two replicas asking at
once get different rows; SQLite has one writer, which is the claim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from incident_manager.adapters.sql.dialect import Dialect
from incident_manager.adapters.sql.paging_rows import (
    CHANNEL_WINDOW_COLUMNS,
    ESCALATION_COLUMNS,
    NOTIFICATION_COLUMNS,
    NOTIFICATION_PROGRESS_COLUMNS,
    OVERRIDE_COLUMNS,
    SILENCE_COLUMNS,
    channel_window_from_row,
    channel_window_row,
    escalation_from_row,
    escalation_row,
    notification_from_row,
    notification_progress_row,
    notification_row,
    override_from_row,
    override_row,
    silence_from_row,
    silence_row,
)
from incident_manager.domain.errors import ConcurrentModification
from incident_manager.domain.paging.digest import ChannelWindow, window_start
from incident_manager.domain.paging.ledger import (
    Escalation,
    Notification,
    NotificationState,
)
from incident_manager.domain.paging.model import Override, Silence
from incident_manager.domain.query import from_micros, micros
from incident_manager.service.ports import PagingRepository

PENDING = int(NotificationState.PENDING)
SENT = int(NotificationState.SENT)

Execute = Callable[[str, Sequence[Any]], Any]
"""Runs one statement in the unit of work's transaction; returns a cursor."""


def _columns(names: tuple[str, ...]) -> str:
    return ", ".join(names)


class SqlPaging(PagingRepository):
    """Paging state in the unit of work's transaction."""

    def __init__(
        self,
        execute: Execute,
        dialect: Dialect,
        *,
        lock_rows: str = "",
        race: type[ConcurrentModification] = ConcurrentModification,
    ) -> None:
        self._execute = execute
        self._p = dialect.mark
        self._lock = lock_rows
        """Appended to claim queries: ` FOR UPDATE SKIP LOCKED` on PostgreSQL."""
        self._race = race
        """Raised when an escalation changed since it was read: PostgreSQL reruns the unit."""

    def _marks(self, count: int) -> str:
        return ", ".join([self._p] * count)

    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self._execute(query, params).fetchall())

    def _one(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self._execute(query, params).fetchone()

    # Escalations.

    def escalation(self, incident_id: str) -> Escalation | None:
        row = self._one(
            f"SELECT {_columns(ESCALATION_COLUMNS)} FROM escalations WHERE incident_id = {self._p}",
            (incident_id,),
        )
        return None if row is None else escalation_from_row(row)

    def save_escalation(self, escalation: Escalation) -> None:
        fence = escalation.loaded_fence + 1
        values = escalation_row(escalation, fence)
        if escalation.loaded_fence < 0:
            exists = self._one(
                f"SELECT 1 FROM escalations WHERE incident_id = {self._p}",
                (escalation.incident_id,),
            )
            if exists is not None:
                raise self._race(escalation.incident_id)
            self._execute(
                f"INSERT INTO escalations ({_columns(ESCALATION_COLUMNS)})"
                f" VALUES ({self._marks(len(values))})",
                values,
            )
        else:
            assignments = ", ".join(f"{name} = {self._p}" for name in ESCALATION_COLUMNS[1:])
            cursor = self._execute(
                f"UPDATE escalations SET {assignments}"
                f" WHERE incident_id = {self._p} AND fence = {self._p}",
                (*values[1:], escalation.incident_id, escalation.loaded_fence),
            )
            if cursor.rowcount != 1:
                raise self._race(escalation.incident_id)
        escalation.fence = escalation.loaded_fence = fence

    def claim_due_escalations(self, now: datetime, limit: int) -> list[Escalation]:
        rows = self._rows(
            f"SELECT {_columns(ESCALATION_COLUMNS)} FROM escalations"
            f" WHERE due_at IS NOT NULL AND due_at <= {self._p}"
            f" ORDER BY due_at LIMIT {self._p}{self._lock}",
            (micros(now), limit),
        )
        return [escalation_from_row(row) for row in rows]

    def held_by(self, silence_id: str) -> list[Escalation]:
        # `silenced_by <> ''` repeats the partial index's condition: a planner
        # cannot tell that `silenced_by = ?` implies it, and would scan the table.
        rows = self._rows(
            f"SELECT {_columns(ESCALATION_COLUMNS)} FROM escalations"
            f" WHERE silenced_by = {self._p} AND silenced_by <> '' AND status = 'silenced'",
            (silence_id,),
        )
        return [escalation_from_row(row) for row in rows]

    def next_due(self) -> datetime | None:
        found = [
            self._one("SELECT MIN(due_at) FROM escalations WHERE due_at IS NOT NULL")[0],
            self._one(
                "SELECT MIN(next_attempt_time) FROM notifications"
                f" WHERE state = {PENDING} AND claimed_by = ''"
            )[0],
            self._one(
                "SELECT MIN(claim_until) FROM notifications"
                f" WHERE state = {PENDING} AND claimed_by <> ''"
            )[0],
        ]
        times = [value for value in found if value is not None]
        return from_micros(min(times)) if times else None

    # Notifications.

    def add_notifications(self, notifications: list[Notification]) -> None:
        if not notifications:
            return
        query = (
            f"INSERT INTO notifications ({_columns(NOTIFICATION_COLUMNS)})"
            f" VALUES ({self._marks(len(NOTIFICATION_COLUMNS))})"
        )
        for notification in notifications:
            self._execute(query, notification_row(notification))

    def save_notification(self, notification: Notification) -> None:
        assignments = ", ".join(f"{name} = {self._p}" for name in NOTIFICATION_PROGRESS_COLUMNS)
        self._execute(
            f"UPDATE notifications SET {assignments} WHERE id = {self._p}",
            (*notification_progress_row(notification), notification.id),
        )

    def notification(self, notification_id: str) -> Notification | None:
        row = self._one(
            f"SELECT {_columns(NOTIFICATION_COLUMNS)} FROM notifications WHERE id = {self._p}"
            f"{self._lock.replace(' SKIP LOCKED', '')}",
            (notification_id,),
        )
        return None if row is None else notification_from_row(row)

    def pending_notifications(self, incident_id: str) -> list[Notification]:
        rows = self._rows(
            f"SELECT {_columns(NOTIFICATION_COLUMNS)} FROM notifications"
            f" WHERE incident_id = {self._p} AND state = {PENDING}",
            (incident_id,),
        )
        return [notification_from_row(row) for row in rows]

    def live_notifications(self, incident_id: str) -> list[Notification]:
        rows = self._rows(
            f"SELECT {_columns(NOTIFICATION_COLUMNS)} FROM notifications"
            f" WHERE incident_id = {self._p} AND state IN ({PENDING}, {SENT})"
            " AND channel_id <> '' ORDER BY create_time, ordinal, id",
            (incident_id,),
        )
        return [notification_from_row(row) for row in rows]

    def claim_notifications(
        self, worker: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[Notification]:
        at = micros(now)
        rows = self._rows(
            f"UPDATE notifications SET claimed_by = {self._p}, claim_until = {self._p},"
            " attempts = attempts + 1"
            " WHERE id IN ("
            f"SELECT id FROM notifications WHERE state = {PENDING}"
            f" AND next_attempt_time <= {self._p}"
            f" AND (claimed_by = '' OR claim_until <= {self._p})"
            f" ORDER BY next_attempt_time LIMIT {self._p}{self._lock})"
            f" RETURNING {_columns(NOTIFICATION_COLUMNS)}",
            (worker, micros(lease_until), at, at, limit),
        )
        return sorted((notification_from_row(row) for row in rows), key=lambda n: n.ledger_key)

    def release_claims(self) -> int:
        cursor = self._execute(
            "UPDATE notifications SET claimed_by = '', claim_until = NULL"
            f" WHERE state = {PENDING} AND claimed_by <> ''",
            (),
        )
        return int(cursor.rowcount)

    def list_notifications(
        self, incident_id: str, after: tuple[datetime, int, str] | None, limit: int
    ) -> list[Notification]:
        query = (
            f"SELECT {_columns(NOTIFICATION_COLUMNS)} FROM notifications"
            f" WHERE incident_id = {self._p}"
        )
        params: list[Any] = [incident_id]
        if after is not None:
            at, ordinal, last_id = after
            query += (
                f" AND (create_time > {self._p} OR (create_time = {self._p}"
                f" AND (ordinal > {self._p} OR (ordinal = {self._p} AND id > {self._p}))))"
            )
            params += [micros(at), micros(at), ordinal, ordinal, last_id]
        query += f" ORDER BY create_time, ordinal, id LIMIT {self._p}"
        params.append(limit)
        return [notification_from_row(row) for row in self._rows(query, params)]

    # Rate limits and digests.

    def lock_channel_windows(
        self, channel_ids: Sequence[str], now: datetime
    ) -> dict[str, ChannelWindow]:
        # One channel at a time, in the order given: two claims insert and lock in the same
        # order, so neither holds a row the other is waiting for.
        found: dict[str, ChannelWindow] = {}
        start = micros(window_start(now))
        for channel_id in channel_ids:
            self._execute(
                f"INSERT INTO channel_windows ({_columns(CHANNEL_WINDOW_COLUMNS)})"
                f" VALUES ({self._marks(4)}) ON CONFLICT (channel_id) DO NOTHING",
                (channel_id, start, 0, "{}"),
            )
            row = self._one(
                f"SELECT {_columns(CHANNEL_WINDOW_COLUMNS)} FROM channel_windows"
                f" WHERE channel_id = {self._p}{self._lock.replace(' SKIP LOCKED', '')}",
                (channel_id,),
            )
            found[channel_id] = channel_window_from_row(row)
        return found

    def save_channel_window(self, window: ChannelWindow) -> None:
        values = channel_window_row(window)
        assignments = ", ".join(f"{name} = {self._p}" for name in CHANNEL_WINDOW_COLUMNS[1:])
        self._execute(
            f"UPDATE channel_windows SET {assignments} WHERE channel_id = {self._p}",
            (*values[1:], window.channel_id),
        )

    def due_notifications(self, now: datetime, limit: int) -> list[Notification]:
        at = micros(now)
        rows = self._rows(
            f"SELECT {_columns(NOTIFICATION_COLUMNS)} FROM notifications"
            f" WHERE state = {PENDING} AND next_attempt_time <= {self._p}"
            f" AND (claimed_by = '' OR claim_until <= {self._p})"
            f" ORDER BY next_attempt_time LIMIT {self._p}{self._lock}",
            (at, at, limit),
        )
        return [notification_from_row(row) for row in rows]

    def claim_these(
        self, notification_ids: Sequence[str], worker: str, lease_until: datetime
    ) -> list[Notification]:
        if not notification_ids:
            return []
        rows = self._rows(
            f"UPDATE notifications SET claimed_by = {self._p}, claim_until = {self._p},"
            f" attempts = attempts + 1 WHERE id IN ({self._marks(len(notification_ids))})"
            f" RETURNING {_columns(NOTIFICATION_COLUMNS)}",
            (worker, micros(lease_until), *notification_ids),
        )
        return sorted((notification_from_row(row) for row in rows), key=lambda n: n.ledger_key)

    def save_digest(self, digest: Notification) -> None:
        self.save_notification(digest)
        self._execute(
            f"UPDATE notifications SET content = {self._p}, reason = {self._p}"
            f" WHERE id = {self._p}",
            (notification_row(digest)[NOTIFICATION_COLUMNS.index("content")], digest.reason,
             digest.id),
        )  # fmt: skip

    def folded_into(self, digest_id: str) -> list[Notification]:
        # `digest_id <> ''` repeats the partial index's condition, as held_by does.
        rows = self._rows(
            f"SELECT {_columns(NOTIFICATION_COLUMNS)} FROM notifications"
            f" WHERE digest_id = {self._p} AND digest_id <> '' AND state = {PENDING}"
            " ORDER BY create_time, ordinal, id",
            (digest_id,),
        )
        return [notification_from_row(row) for row in rows]

    # Silences.

    def add_silence(self, silence: Silence) -> None:
        self._execute(
            f"INSERT INTO silences ({_columns(SILENCE_COLUMNS)})"
            f" VALUES ({self._marks(len(SILENCE_COLUMNS))})",
            silence_row(silence),
        )

    def save_silence(self, silence: Silence) -> None:
        values = silence_row(silence)
        assignments = ", ".join(f"{name} = {self._p}" for name in SILENCE_COLUMNS[1:])
        self._execute(
            f"UPDATE silences SET {assignments} WHERE id = {self._p}", (*values[1:], silence.id)
        )

    def silence(self, silence_id: str) -> Silence | None:
        row = self._one(
            f"SELECT {_columns(SILENCE_COLUMNS)} FROM silences WHERE id = {self._p}",
            (silence_id,),
        )
        return None if row is None else silence_from_row(row)

    def silences_active(self, now: datetime) -> list[Silence]:
        rows = self._rows(
            f"SELECT {_columns(SILENCE_COLUMNS)} FROM silences WHERE end_time > {self._p}",
            (micros(now),),
        )
        return [silence_from_row(row) for row in rows]

    def list_silences(
        self, include_expired: bool, now: datetime, after: tuple[datetime, str] | None, limit: int
    ) -> list[Silence]:
        query = f"SELECT {_columns(SILENCE_COLUMNS)} FROM silences WHERE 1 = 1"
        params: list[Any] = []
        if not include_expired:
            query += f" AND end_time > {self._p}"
            params.append(micros(now))
        if after is not None:
            query += (
                f" AND (create_time < {self._p} OR (create_time = {self._p} AND id < {self._p}))"
            )
            params += [micros(after[0]), micros(after[0]), after[1]]
        query += f" ORDER BY create_time DESC, id DESC LIMIT {self._p}"
        params.append(limit)
        return [silence_from_row(row) for row in self._rows(query, params)]

    # Overrides.

    def add_override(self, override: Override) -> None:
        self._execute(
            f"INSERT INTO overrides ({_columns(OVERRIDE_COLUMNS)})"
            f" VALUES ({self._marks(len(OVERRIDE_COLUMNS))})",
            override_row(override),
        )

    def override(self, override_id: str) -> Override | None:
        row = self._one(
            f"SELECT {_columns(OVERRIDE_COLUMNS)} FROM overrides WHERE id = {self._p}",
            (override_id,),
        )
        return None if row is None else override_from_row(row)

    def delete_override(self, override_id: str) -> bool:
        cursor = self._execute(f"DELETE FROM overrides WHERE id = {self._p}", (override_id,))
        return bool(cursor.rowcount)

    def overrides_between(self, schedule_id: str, start: datetime, end: datetime) -> list[Override]:
        rows = self._rows(
            f"SELECT {_columns(OVERRIDE_COLUMNS)} FROM overrides"
            f" WHERE schedule_id = {self._p} AND start_time < {self._p} AND end_time > {self._p}"
            " ORDER BY start_time, id",
            (schedule_id, micros(end), micros(start)),
        )
        return [override_from_row(row) for row in rows]

    def list_overrides(
        self,
        schedule_id: str,
        include_ended: bool,
        now: datetime,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Override]:
        query = f"SELECT {_columns(OVERRIDE_COLUMNS)} FROM overrides WHERE 1 = 1"
        params: list[Any] = []
        if schedule_id:
            query += f" AND schedule_id = {self._p}"
            params.append(schedule_id)
        if not include_ended:
            query += f" AND end_time > {self._p}"
            params.append(micros(now))
        if after is not None:
            query += f" AND (start_time > {self._p} OR (start_time = {self._p} AND id > {self._p}))"
            params += [micros(after[0]), micros(after[0]), after[1]]
        query += f" ORDER BY start_time, id LIMIT {self._p}"
        params.append(limit)
        return [override_from_row(row) for row in self._rows(query, params)]


PAGING_SCHEMA = (
    """
    CREATE TABLE escalations (
        incident_id TEXT PRIMARY KEY,
        policy_id TEXT NOT NULL,
        route INTEGER NOT NULL,
        policy TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        next_level INTEGER NOT NULL,
        next_round INTEGER NOT NULL,
        due_at BIGINT,
        reason TEXT NOT NULL,
        silenced_by TEXT NOT NULL,
        fence BIGINT NOT NULL
    )
    """,
    "CREATE INDEX escalations_due ON escalations (due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX escalations_by_silence ON escalations (silenced_by) WHERE silenced_by <> ''",
    """
    CREATE TABLE notifications (
        id TEXT PRIMARY KEY,
        incident_id TEXT NOT NULL,
        policy_id TEXT NOT NULL,
        level INTEGER NOT NULL,
        round INTEGER NOT NULL,
        ordinal INTEGER NOT NULL,
        target_kind TEXT NOT NULL,
        target_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        channel_type TEXT NOT NULL,
        recipient TEXT NOT NULL,
        reason TEXT NOT NULL,
        create_time BIGINT NOT NULL,
        content TEXT NOT NULL,
        state INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        update_time BIGINT,
        send_time BIGINT,
        next_attempt_time BIGINT,
        claimed_by TEXT NOT NULL,
        claim_until BIGINT
    )
    """,
    "CREATE INDEX notifications_ledger ON notifications (incident_id, create_time, ordinal, id)",
    f"CREATE INDEX notifications_due ON notifications (next_attempt_time) WHERE state = {PENDING}",
    f"CREATE INDEX notifications_leases ON notifications (claim_until)"
    f" WHERE state = {PENDING} AND claimed_by <> ''",
    """
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        matchers TEXT NOT NULL,
        start_time BIGINT NOT NULL,
        end_time BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        comment TEXT NOT NULL,
        create_time BIGINT NOT NULL,
        expired_by TEXT NOT NULL
    )
    """,
    "CREATE INDEX silences_by_end ON silences (end_time)",
    "CREATE INDEX silences_by_create_time ON silences (create_time, id)",
    """
    CREATE TABLE overrides (
        id TEXT PRIMARY KEY,
        schedule_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        start_time BIGINT NOT NULL,
        end_time BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        create_time BIGINT NOT NULL
    )
    """,
    "CREATE INDEX overrides_by_schedule ON overrides (schedule_id, start_time, id)",
)
"""One migration that both backends apply (BIGINT is an INTEGER in SQLite)."""
PAGING_MIGRATION = ";\n".join(PAGING_SCHEMA)

DIGEST_SCHEMA = (
    "ALTER TABLE notifications ADD COLUMN digest_id TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX notifications_by_digest ON notifications (digest_id) WHERE digest_id <> ''",
    """
    CREATE TABLE channel_windows (
        channel_id TEXT PRIMARY KEY,
        window_start BIGINT NOT NULL,
        used INTEGER NOT NULL,
        open_digests TEXT NOT NULL
    )
    """,
)
"""Rate-limited channels and digests (issue 12): the page -> digest link, and one row per
rate-limited channel holding its window's count (domain/paging/digest.py)."""
DIGEST_MIGRATION = ";\n".join(DIGEST_SCHEMA)
