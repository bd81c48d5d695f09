"""IntegrationService through a real server: module events become deduplicated incidents."""

from __future__ import annotations

import grpc
import pytest

from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import integrations_pb2 as pb2
from generated.incident_manager.v1 import integrations_pb2_grpc as pb2_grpc
from tests.support import Running, field_violations


def latency(event_id: str, score: float = 0.8) -> pb2.ModuleEvent:
    return pb2.ModuleEvent(
        id=event_id,
        source="llm-sentinel",
        anomaly=pb2.AnomalyEvent(
            model="gpt-4o",
            endpoint="/chat",
            metric=pb2.ANOMALY_METRIC_LATENCY_P99,
            observed_value=3.2,
            baseline_value=0.9,
            anomaly_score=score,
        ),
    )


async def test_a_repeating_anomaly_on_one_endpoint_becomes_one_incident(server: Running) -> None:
    stub = pb2_grpc.IntegrationServiceStub(server.channel)
    first = (await stub.SubmitModuleEvent(pb2.SubmitModuleEventRequest(event=latency("s-1")))).ack
    again = (
        await stub.SubmitModuleEvent(pb2.SubmitModuleEventRequest(event=latency("s-2", 0.95)))
    ).ack
    assert first.status == alert_pb2.ACK_STATUS_ACCEPTED
    assert again.status == alert_pb2.ACK_STATUS_DUPLICATE
    assert again.incident_id == first.incident_id
    incident = (
        await server.incidents.GetIncident(service_pb2.GetIncidentRequest(id=first.incident_id))
    ).incident
    assert incident.title == "p99 latency anomaly on gpt-4o /chat"
    assert incident.type == incident_pb2.INCIDENT_TYPE_PERFORMANCE
    assert incident.severity == incident_pb2.SEVERITY_P1  # raised by the second event
    assert incident.alert_count == 2
    assert list(incident.affected_resources) == ["model/gpt-4o", "endpoint//chat"]


async def test_a_batch_maps_every_kind_and_rejects_only_bad_events(server: Running) -> None:
    stub = pb2_grpc.IntegrationServiceStub(server.channel)
    events = [
        latency("b-1"),
        pb2.ModuleEvent(
            id="b-2",
            source="llm-shield",
            security=pb2.SecurityEvent(
                category=pb2.THREAT_CATEGORY_PII_LEAK, confidence=0.9, application="crm"
            ),
        ),
        pb2.ModuleEvent(id="b-3", source="edge", edge_agent=pb2.EdgeAgentEvent(agent_id="edge-17")),
        pb2.ModuleEvent(
            id="b-4", source="gov", governance=pb2.GovernanceEvent(policy_id="eu-ai-act-art-10")
        ),
        pb2.ModuleEvent(id="b-5", source="llm-shield"),  # no kind: rejected
    ]
    response = await stub.BatchSubmitModuleEvents(pb2.BatchSubmitModuleEventsRequest(events=events))
    statuses = [a.status for a in response.acks]
    assert statuses[:4] == [alert_pb2.ACK_STATUS_ACCEPTED] * 4
    assert statuses[4] == alert_pb2.ACK_STATUS_REJECTED
    assert "events[4].kind" in response.acks[4].message
    page = await server.incidents.ListIncidents(
        service_pb2.ListIncidentsRequest(severities=[incident_pb2.SEVERITY_P0])
    )
    assert [i.title for i in page.incidents] == ["pii leak on crm (not blocked)"]


async def test_a_resolved_module_event_resolves_its_incident(server: Running) -> None:
    stub = pb2_grpc.IntegrationServiceStub(server.channel)
    opened = (await stub.SubmitModuleEvent(pb2.SubmitModuleEventRequest(event=latency("r-1")))).ack
    signal = pb2.ModuleEvent(
        id="r-1", source="llm-sentinel", status=alert_pb2.ALERT_STATUS_RESOLVED
    )
    cleared = (await stub.SubmitModuleEvent(pb2.SubmitModuleEventRequest(event=signal))).ack
    assert cleared.status == alert_pb2.ACK_STATUS_CLEARED
    incident = (
        await server.incidents.GetIncident(service_pb2.GetIncidentRequest(id=opened.incident_id))
    ).incident
    assert incident.state == incident_pb2.INCIDENT_STATE_RESOLVED


async def test_an_invalid_event_names_its_fields(server: Running) -> None:
    stub = pb2_grpc.IntegrationServiceStub(server.channel)
    bad = pb2.ModuleEvent(
        source="llm-sentinel",
        anomaly=pb2.AnomalyEvent(model="m", metric=pb2.ANOMALY_METRIC_UNSPECIFIED),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubmitModuleEvent(pb2.SubmitModuleEventRequest(event=bad))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"event.id", "event.anomaly.metric"} <= set(field_violations(refused.value))


async def test_a_nul_character_in_a_module_event_is_refused_naming_the_field(
    server: Running,
) -> None:
    stub = pb2_grpc.IntegrationServiceStub(server.channel)
    bad = pb2.ModuleEvent(
        id="n-1",
        source="gov",
        governance=pb2.GovernanceEvent(policy_id="p-1", violation="kept\x00forever"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubmitModuleEvent(pb2.SubmitModuleEventRequest(event=bad))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NUL (U+0000)" in field_violations(refused.value)["event.governance.violation"]
