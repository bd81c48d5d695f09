"""Imports point inward: the domain and the service layer know nothing of gRPC, protobuf or SQL.

The service layer owns the storage ports (incident_manager.service.ports);
the adapters implement them, and only incident_manager.bootstrap chooses one.

Read from the syntax tree of every module under incident_manager/, so imports
inside functions and `if TYPE_CHECKING:` blocks count too, and relative
imports are resolved to the modules they name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "incident_manager"

TRANSPORT_AND_STORAGE = (
    "grpc",
    "google.protobuf",
    "generated",
    "sqlite3",
    "psycopg",
    "psycopg_pool",
    "prometheus_client",
)
OUTER_LAYERS = (
    "incident_manager.adapters",
    "incident_manager.service",
    "incident_manager.entrypoints",
)


@dataclass(frozen=True)
class Import:
    """One module a source file imports, and where."""

    importer: str
    target: str
    location: str

    def __str__(self) -> str:
        return f"{self.location}: {self.importer} imports {self.target}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(
    source: str, module: str, *, is_package: bool = False, path: str = "<source>"
) -> Iterator[Import]:
    """Every module the source imports; `from x import y` yields both x and x.y,
    since y may be a submodule (`from incident_manager import adapters`)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, filename=path)):
        if not isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
            continue
        where = f"{path}:{node.lineno}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, where)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if node.module:
                yield Import(module, base, where)
            for alias in node.names:
                if alias.name != "*":
                    yield Import(module, f"{base}.{alias.name}", where)
        elif (
            isinstance(node, ast.Call)
            and _called_name(node.func) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(module, node.args[0].value, where)


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def is_within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def all_imports() -> list[Import]:
    found: list[Import] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        found.extend(
            imports_of(
                path.read_text(encoding="utf-8"),
                module_name(path),
                is_package=path.name == "__init__.py",
                path=path.relative_to(ROOT).as_posix(),
            )
        )
    return found


IMPORTS = all_imports()


def report(flagged: list[Import]) -> list[str]:
    """One line per offending import: `from x import y` is reported as x, not also as x.y."""
    return sorted(
        {
            str(found)
            for found in flagged
            if not any(
                other.location == found.location
                and other.target != found.target
                and is_within(found.target, other.target)
                for other in flagged
            )
        }
    )


def violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return report(
        [
            found
            for found in IMPORTS
            if is_within(found.importer, layer)
            and any(is_within(found.target, prefix) for prefix in forbidden)
        ]
    )


def test_the_domain_imports_no_transport_storage_or_outer_layer() -> None:
    wrong = violations("incident_manager.domain", TRANSPORT_AND_STORAGE + OUTER_LAYERS)
    assert not wrong, "the domain must not depend on these:\n" + "\n".join(wrong)


def test_the_service_layer_imports_no_transport_or_storage() -> None:
    wrong = violations("incident_manager.service", TRANSPORT_AND_STORAGE)
    assert not wrong, "the service layer must not depend on these:\n" + "\n".join(wrong)


def outside(layer: str, allowed: tuple[str, ...]) -> list[str]:
    """Imports of our own modules, from within `layer`, that fall outside `allowed`."""
    return report(
        [
            found
            for found in IMPORTS
            if is_within(found.importer, layer)
            and is_within(found.target, "incident_manager")
            and not any(is_within(found.target, prefix) for prefix in allowed)
        ]
    )


def test_the_service_layer_imports_only_the_domain_and_its_own_modules() -> None:
    wrong = outside(
        "incident_manager.service", ("incident_manager.domain", "incident_manager.service")
    )
    assert not wrong, "the service layer may import only the domain and itself:\n" + "\n".join(
        wrong
    )


def test_the_adapters_import_only_the_ports_the_domain_and_each_other() -> None:
    wrong = outside(
        "incident_manager.adapters",
        ("incident_manager.domain", "incident_manager.service.ports", "incident_manager.adapters"),
    )
    assert not wrong, "adapters implement the ports and need nothing else of ours:\n" + "\n".join(
        wrong
    )


def test_only_the_bootstrap_imports_the_adapters() -> None:
    wrong = report(
        [
            found
            for found in IMPORTS
            if is_within(found.target, "incident_manager.adapters")
            and not is_within(found.importer, "incident_manager.adapters")
            and found.importer != "incident_manager.bootstrap"
        ]
    )
    assert not wrong, "choose a storage in incident_manager.bootstrap only:\n" + "\n".join(wrong)


def test_only_the_entrypoints_and_the_command_line_import_the_generated_stubs() -> None:
    wrong = report(
        [
            found
            for found in IMPORTS
            if is_within(found.target, "generated")
            and not is_within(found.importer, "incident_manager.entrypoints")
            and not is_within(found.importer, "incident_manager.cli")
        ]
    )
    assert not wrong, "only the entrypoints and imctl may import generated:\n" + "\n".join(wrong)


def test_the_command_line_speaks_only_the_public_api() -> None:
    """imctl is a client like any other: the stubs, never the server's own code."""
    wrong = report(
        [
            found
            for found in IMPORTS
            if is_within(found.importer, "incident_manager.cli")
            and is_within(found.target, "incident_manager")
            and not is_within(found.target, "incident_manager.cli")
            # The package's version (incident_manager/__init__.py) is all it shares.
            and found.target not in ("incident_manager", "incident_manager.__version__")
        ]
    )
    assert not wrong, "imctl may import only itself and generated/:\n" + "\n".join(wrong)


def test_the_checks_see_the_imports_that_are_allowed() -> None:
    """Guards against the scan silently finding nothing (a moved package, a bad glob)."""
    modules = {found.importer for found in IMPORTS}
    assert {"incident_manager.domain.model", "incident_manager.service.handlers"} <= modules
    targets = {(f.importer, f.target) for f in IMPORTS}
    assert ("incident_manager.entrypoints.conversions", "generated.incident_manager.v1") in targets
    assert ("incident_manager.cli.connect", "generated.incident_manager.v1") in targets
    assert ("incident_manager.adapters.sqlite.writer", "sqlite3") in targets
    assert (
        "incident_manager.adapters.sql.repositories",
        "incident_manager.service.ports",
    ) in targets


@pytest.mark.parametrize(
    ("source", "module", "is_package", "target"),
    [
        ("import grpc", "incident_manager.domain.model", False, "grpc"),
        (
            "import google.protobuf.timestamp_pb2",
            "incident_manager.domain.x",
            False,
            "google.protobuf.timestamp_pb2",
        ),
        ("from google import protobuf", "incident_manager.domain.x", False, "google.protobuf"),
        (
            "from .. import adapters",
            "incident_manager.domain.x",
            False,
            "incident_manager.adapters",
        ),
        (
            "from ..service.commands import AddNote",
            "incident_manager.domain.x",
            False,
            "incident_manager.service.commands",
        ),
        (
            "from . import model",
            "incident_manager.domain",
            True,
            "incident_manager.domain.model",
        ),
        (
            "def f():\n    import sqlite3\n",
            "incident_manager.service.x",
            False,
            "sqlite3",
        ),
        (
            "if TYPE_CHECKING:\n    from generated.incident_manager.v1 import alert_pb2\n",
            "incident_manager.service.x",
            False,
            "generated.incident_manager.v1.alert_pb2",
        ),
        (
            "import importlib\nimportlib.import_module('grpc.aio')",
            "incident_manager.domain.x",
            False,
            "grpc.aio",
        ),
    ],
)
def test_the_scan_finds_every_kind_of_import(
    source: str, module: str, is_package: bool, target: str
) -> None:
    found = {i.target for i in imports_of(source, module, is_package=is_package)}
    assert target in found, found
