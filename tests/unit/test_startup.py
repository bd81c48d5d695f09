"""Start-up mistakes, said so a new user can fix them: the database that cannot be opened,
the mistyped flag, the duration shown as it is written."""

from __future__ import annotations

import errno
import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.config import format_duration, load_settings, parse_duration
from incident_manager.domain.errors import StorageUnavailable
from incident_manager.startup import database_problem


def failure(detail: str, cause: BaseException | None) -> StorageUnavailable:
    """A StorageUnavailable as the storage raises it, with its cause."""
    try:
        raise StorageUnavailable(detail) from cause
    except StorageUnavailable as error:
        return error


def refuse_access_to(monkeypatch: pytest.MonkeyPatch, refused: Path) -> None:
    """os.access as for a user without rights on `refused` (the tests may run as root)."""
    real = os.access

    def access(path: object, mode: int) -> bool:
        return Path(str(path)) != refused and real(path, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)


UNABLE = sqlite3.OperationalError("unable to open database file")


def test_a_directory_the_user_may_not_write_in_is_named_with_the_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refuse_access_to(monkeypatch, tmp_path)

    message = database_problem(str(tmp_path / "x.db"), failure("cannot open", UNABLE))

    assert message.startswith(f"cannot open the database {str(tmp_path / 'x.db')!r}: ")
    assert f"may not create files in its directory {str(tmp_path)!r}" in message
    assert f"uid {os.getuid()}" in message
    assert "permissions" in message


def test_a_database_file_the_user_may_not_read_and_write_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "x.db"
    database.write_bytes(b"")
    refuse_access_to(monkeypatch, database)

    message = database_problem(str(database), failure("cannot open", UNABLE))

    assert "may not read and write it" in message


def test_a_missing_directory_that_cannot_be_created_says_where_and_why(tmp_path: Path) -> None:
    database = tmp_path / "missing" / "deeper" / "x.db"
    denied = PermissionError(errno.EACCES, "Permission denied", str(database.parent))

    message = database_problem(str(database), failure("cannot open", denied))

    assert f"its directory {str(database.parent)!r} does not exist" in message
    assert f"cannot be created in {str(tmp_path)!r}: Permission denied" in message


def test_a_file_that_is_not_a_database_is_told_apart_from_a_path_mistake(tmp_path: Path) -> None:
    database = tmp_path / "notes.db"
    database.write_text("shopping list\n" * 100)
    with pytest.raises(StorageUnavailable) as raised:
        SqliteStorage(database)

    message = database_problem(str(database), raised.value)

    assert message == (
        f"cannot open the database {str(database)!r}: the file is not an SQLite database. "
        "Check that it is the incident manager's database, or give --database "
        "(or INCIDENT_MANAGER_DATABASE) another path."
    )


def test_a_refusal_that_already_says_what_to_do_is_passed_on_as_it_is() -> None:
    detail = (
        "database '/srv/im.db' is already in use by another incident-manager (pid 7); "
        "stop it, or give this one another --database"
    )

    message = database_problem("/srv/im.db", failure(detail, None))

    assert message == f"cannot open the database: {detail}"


def test_a_postgres_database_says_what_to_check_without_its_password() -> None:
    url = "postgresql://im:s3cret@db.internal:5432/incidents"
    detail = "cannot open PostgreSQL at db.internal:5432/incidents: connection refused"

    message = database_problem(url, failure(detail, OSError("connection refused")))

    assert message.startswith(f"cannot open the database: {detail}. Check that PostgreSQL")
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (timedelta(minutes=15), "15m"),
        (timedelta(seconds=10), "10s"),
        (timedelta(seconds=90), "90s"),
        (timedelta(hours=1), "1h"),
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(0), "0s"),
    ],
)
def test_durations_are_shown_as_they_are_written_and_read_back_the_same(
    value: timedelta, written: str
) -> None:
    assert format_duration(value) == written
    assert parse_duration(written) == value


def test_a_mistyped_flag_gets_the_nearest_flag_and_no_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings(["--tokens-flie", "/etc/im/tokens"], environ={})

    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "incident-manager: error: unrecognized arguments: --tokens-flie /etc/im/tokens",
        "incident-manager: did you mean --tokens-file? `incident-manager --help` lists every flag",
    ]


def test_a_flag_like_none_of_ours_gets_only_the_pointer_to_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        load_settings(["--verbose"], environ={})

    assert capsys.readouterr().err.splitlines()[1] == (
        "incident-manager: `incident-manager --help` lists every flag and its environment variable"
    )


def test_a_bad_environment_variable_is_named_once_with_the_value_it_had(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings([], environ={"INCIDENT_MANAGER_KEEPALIVE_TIME": "often"})

    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert error.count("INCIDENT_MANAGER_KEEPALIVE_TIME") == 1
    assert "'often' is not a duration" in error
