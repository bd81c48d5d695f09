"""What the server says when it cannot open its database at start: that, why, and what to check.

A client whose write fails is told "storage is unavailable, nothing was
changed"; an operator starting the server needs to know which path is wrong
and how, which SQLite's own "unable to open database file" does not say.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from incident_manager.bootstrap import uses_postgres
from incident_manager.config import env_name
from incident_manager.domain.errors import StorageUnavailable

SETTING = f"--database (or {env_name('database')})"


def database_problem(database: str, error: StorageUnavailable) -> str:
    """The start-up message for a database that could not be opened."""
    if uses_postgres(database):
        return (
            f"cannot open the database: {error.detail}. Check that PostgreSQL is running and "
            f"reachable from here, and the host, port, user, password and database name in "
            f"{SETTING}."
        )
    path = Path(database)
    cause = error.__cause__
    if not isinstance(cause, OSError | sqlite3.Error):
        # Opened, but refused for a reason of its own (another server holds it,
        # a newer schema): its message already says what to do.
        return f"cannot open the database: {error.detail}"
    obstacle = _obstacle(path, cause)
    if obstacle:
        return f"cannot open the database {str(path)!r}: {obstacle}"
    return (
        f"cannot open the database {str(path)!r}: {cause}. Check that {SETTING} names a "
        "file, not a directory; that its directory exists or can be created; and that "
        f"{_this_user()} may read and write both."
    )


def _obstacle(path: Path, cause: OSError | sqlite3.Error) -> str:
    """Why the file cannot be opened and what to check, when the file system shows it."""
    if path.is_dir():
        return (
            f"it is a directory. {SETTING} takes the path of a file, "
            f"such as {str(path / 'incident-manager.db')!r}."
        )
    parent = path.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        consequence = "" if existing == parent else f", so {str(parent)!r} cannot be created"
        return (
            f"{str(existing)!r} is a file, not a directory{consequence}. "
            f"Check the directory part of {SETTING}."
        )
    if existing != parent:
        return (
            f"its directory {str(parent)!r} does not exist and cannot be created in "
            f"{str(existing)!r}: {_why(cause)}. Check {SETTING}, and that {_this_user()} may "
            f"create directories in {str(existing)!r} (or create {str(parent)!r} yourself)."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        return (
            f"{_this_user()} may not create files in its directory {str(parent)!r}, as SQLite "
            "must (the database, its -wal and -shm files and a .lock file). Check the "
            "directory's owner and permissions."
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"{_this_user()} may not read and write it. Check the file's owner and permissions."
    if isinstance(cause, sqlite3.DatabaseError) and "not a database" in str(cause):
        return (
            "the file is not an SQLite database. Check that it is the incident manager's "
            f"database, or give {SETTING} another path."
        )
    return ""


def _why(cause: OSError | sqlite3.Error) -> str:
    return (cause.strerror if isinstance(cause, OSError) else None) or str(cause)


def _this_user() -> str:
    return f"this user (uid {os.getuid()})"
