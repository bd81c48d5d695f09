"""The README shows a grpcurl example for every RPC (tests/process/test_readme_examples.py
runs each of them against a real server)."""

from __future__ import annotations

import re

from incident_manager.entrypoints.auth import SERVED_FILES
from tests.support.docs import README, code_blocks

GRPCURL_BLOCKS = [block for block in code_blocks(README, "sh") if "grpcurl" in block]

SERVED_RPCS = sorted(
    f"{service.name}/{method.name}"
    for served in SERVED_FILES
    for service in served.DESCRIPTOR.services_by_name.values()
    for method in service.methods
)
"""Every RPC of every service the server serves, read from the protos, so a new one
needs an example before this passes."""


def test_the_readme_has_an_example_for_every_rpc() -> None:
    text = "\n".join(GRPCURL_BLOCKS)
    assert "PagingService/TestRoute" in SERVED_RPCS, "the served services were not found"
    for rpc in [*SERVED_RPCS, "grpc.health.v1.Health/Check"]:
        assert rpc in text, f"README has no grpcurl example for {rpc}"


def test_the_readme_says_where_each_id_its_examples_use_comes_from() -> None:
    # The README test sets these from the answers the README names; a reader does the same.
    prose = "\n".join(re.split(r"^```.*?^```", README.read_text(), flags=re.S | re.M))
    used = {name for block in GRPCURL_BLOCKS for name in re.findall(r"\$([A-Z]+)\b", block)}
    assert used == {"INCIDENT", "PAGED", "OVERRIDE", "SILENCE"}
    for name, prefix in (
        ("INCIDENT", "inc_"),
        ("PAGED", "inc_"),
        ("OVERRIDE", "ovr_"),
        ("SILENCE", "sil_"),
    ):
        assert f"`{name}={prefix}...`" in prose, f"the README does not say where ${name} comes from"
