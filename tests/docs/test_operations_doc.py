"""docs/OPERATIONS.md is the reference for operators: it must not drift from the code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from incident_manager.config import Settings, env_name
from incident_manager.entrypoints.metrics import Metrics

DOC = (Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md").read_text()


def test_every_setting_is_documented_with_its_flag_and_variable() -> None:
    missing = [
        field.name
        for field in dataclasses.fields(Settings)
        if f"`--{field.name.replace('_', '-')}`" not in DOC
        or f"`{env_name(field.name)}`" not in DOC
    ]
    assert not missing, f"settings missing from docs/OPERATIONS.md: {missing}"


def test_every_metric_the_server_exports_is_documented() -> None:
    names = {family.name for family in Metrics().registry.collect()}
    documented = set(re.findall(r"`((?:grpc_server|incident_manager)_[a-z_]+)", DOC))
    # prometheus-client reports counters without their `_total` suffix.
    undocumented = {n for n in names if n not in documented and f"{n}_total" not in documented}
    assert not undocumented, f"metrics missing from docs/OPERATIONS.md: {undocumented}"
