"""The README shows a grpcurl example for every RPC (tests/process/test_readme_examples.py
runs each of them against a real server)."""

from __future__ import annotations

from tests.support.docs import README, code_blocks

GRPCURL_BLOCKS = [block for block in code_blocks(README, "sh") if "grpcurl" in block]


def test_the_readme_has_an_example_for_every_rpc() -> None:
    text = "\n".join(GRPCURL_BLOCKS)
    for rpc in (
        "AlertIngestionService/SubmitAlert",
        "AlertIngestionService/StreamAlerts",
        "AlertIngestionService/BatchSubmitAlerts",
        "IntegrationService/SubmitModuleEvent",
        "AlertIngestionService/HealthCheck",
        "IncidentService/CreateIncident",
        "IncidentService/GetIncident",
        "IncidentService/UpdateIncident",
        "IncidentService/ResolveIncident",
        "IncidentService/AddNote",
        "IncidentService/ListIncidents",
        "IncidentService/StreamIncidents",
        "grpc.health.v1.Health/Check",
    ):
        assert rpc in text, f"README has no grpcurl example for {rpc}"
