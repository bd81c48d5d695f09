"""Throwaway PostgreSQL databases for tests: each test gets its own, dropped afterwards.

The server is the one at INCIDENT_MANAGER_TEST_POSTGRES (by default the
machine's, 127.0.0.1:5432 as user postgres with trust authentication).
Where none answers, the tests that need one are skipped and say why.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ADMIN_URL = os.environ.get(
    "INCIDENT_MANAGER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def unreachable_reason() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        return f"PostgreSQL not reachable at {ADMIN_URL} ({first_line}); run .ci/run to start it"
    return None


def require_postgres() -> None:
    reason = unreachable_reason()
    if reason is not None:
        pytest.skip(reason)


def url_of(database: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{database}"))


@contextmanager
def fresh_database(prefix: str = "im_test") -> Iterator[str]:
    """The URL of a new empty database, dropped (with its connections) at the end."""
    require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield url_of(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def cluster_version() -> str:
    """The Debian cluster version that pg_ctlcluster manages (`ls /etc/postgresql`)."""
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*") if p.is_dir())
    if not versions:
        pytest.skip("no Debian PostgreSQL cluster under /etc/postgresql to stop and start")
    return versions[0]


def pg_ctlcluster(action: str) -> None:
    """Stop or start the machine's PostgreSQL cluster (needs root, as on CI)."""
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", cluster_version(), "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )
