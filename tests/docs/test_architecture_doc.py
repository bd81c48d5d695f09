"""docs/ARCHITECTURE.md names files and names in them as the one place for a kind of change:
each must exist where it says, or a newcomer following it is lost."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "incident_manager"
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")

NAMED = [
    ("incident_manager.domain.model", "Incident"),
    ("incident_manager.adapters.sql.rows", "INCIDENT_COLUMNS"),
    ("incident_manager.adapters.sql.rows", "incident_row"),
    ("incident_manager.adapters.sql.rows", "incident_from_row"),
    ("incident_manager.adapters.sqlite.schema", "MIGRATIONS"),
    ("incident_manager.adapters.postgres.schema", "MIGRATIONS"),
    ("incident_manager.adapters.sqlite.repositories", "_COUNTER_COLUMNS"),
    ("incident_manager.entrypoints.auth", "ROLE_OF"),
    ("incident_manager.entrypoints.auth", "SERVED_FILES"),
    ("incident_manager.domain.integrations", "EventKind"),
    ("incident_manager.domain.paging.model", "Channel"),
    ("incident_manager.domain.paging.model", "CHANNEL_TYPES"),
    ("incident_manager.paging.file", "_CHANNEL_KEYS"),
    ("incident_manager.paging.file", "FILE_KEYS"),
    ("incident_manager.paging.file", "_webhook"),
    ("incident_manager.adapters.channels.http", "HttpChannel"),
    ("incident_manager.adapters.channels.dispatch", "default_dispatcher"),
    ("incident_manager.adapters.channels.outbox", "channel_settings"),
    ("incident_manager.service.manager", "IncidentManager"),
    ("incident_manager.service.ports", "UnitOfWork"),
    ("incident_manager.service.ports", "Storage"),
    ("incident_manager.service.ports", "Dispatcher"),
    ("incident_manager.entrypoints.server", "SERVICE_NAMES"),
]
"""(module, name) for every name the document tells a reader to edit or extend."""


def paths_named() -> list[str]:
    """Every `span` of the document that is a file or folder path."""
    spans = re.findall(r"`([\w./-]+(?:\.py|\.proto|\.md|/))`", DOC)
    return sorted({span for span in spans if not span.startswith("../")})


def exists(span: str) -> bool:
    """A path from the repository root, from the package, from docs/, or a bare file name
    somewhere in the package."""
    if any((base / span).exists() for base in (ROOT, PACKAGE, ROOT / "docs")):
        return True
    bare = span.rstrip("/")
    return "/" not in bare and any(PACKAGE.rglob(bare))


@pytest.mark.parametrize("span", paths_named())
def test_every_path_the_architecture_names_exists(span: str) -> None:
    assert exists(span), f"docs/ARCHITECTURE.md names {span}, which is not there"


@pytest.mark.parametrize(("module", "name"), NAMED, ids=[f"{m}.{n}" for m, n in NAMED])
def test_every_name_it_sends_a_reader_to_is_defined_there(module: str, name: str) -> None:
    assert name in DOC, f"{name} is no longer named in docs/ARCHITECTURE.md: drop it here"
    assert hasattr(importlib.import_module(module), name), f"{module} has no {name}"


def test_the_dependency_rule_it_states_is_the_one_the_architecture_test_enforces() -> None:
    from tests.unit.test_architecture import TRANSPORT_AND_STORAGE

    stated = " ".join(DOC.split())
    for library in TRANSPORT_AND_STORAGE:
        assert f"`{library}`" in stated, f"the rule's list leaves out {library}"
    assert paths_named(), "no paths found: has the format changed?"
