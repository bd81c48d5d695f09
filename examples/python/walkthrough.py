"""Every operation of the incident manager, from a Python client.

    python examples/python/walkthrough.py --target localhost:9000

Uses the typed stubs in `generated/` (installed with the project: `pip
install -e .`). Prints what each step did; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as incidents
from generated.incident_manager.v1 import incident_service_pb2_grpc as incidents_grpc


def sentinel_alert(alert_id: str, severity: int = incident_pb2.SEVERITY_P2) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        id=alert_id,
        source="llm-sentinel",
        title="p99 latency above 2s on gpt-4o",
        severity=severity,  # type: ignore[arg-type]
        type=incident_pb2.INCIDENT_TYPE_PERFORMANCE,
        affected_resources=["model/gpt-4o", "endpoint/chat"],
        labels={"region": "eu-west-1"},
    )


async def walk(target: str, stream_seconds: float) -> None:
    run = uuid.uuid4().hex[:8]  # fresh alert ids, so each run opens its own incident
    async with grpc.aio.insecure_channel(target) as channel:
        alerts = ingestion_grpc.AlertIngestionServiceStub(channel)
        service = incidents_grpc.IncidentServiceStub(channel)

        # Follow events first, so the stream sees everything below.
        stream = service.StreamIncidents(incidents.StreamIncidentsRequest(sources=["llm-sentinel"]))

        # 1. Submit an alert, then a duplicate of it.
        first = (
            await alerts.SubmitAlert(ingestion.SubmitAlertRequest(alert=sentinel_alert(f"{run}-1")))
        ).ack
        print(f"submit: {alert_pb2.AckStatus.Name(first.status)} -> {first.incident_id}")
        duplicate = (
            await alerts.SubmitAlert(
                ingestion.SubmitAlertRequest(
                    alert=sentinel_alert(f"{run}-2", incident_pb2.SEVERITY_P0)
                )
            )
        ).ack
        print(f"duplicate: {alert_pb2.AckStatus.Name(duplicate.status)} -> {duplicate.incident_id}")
        assert duplicate.incident_id == first.incident_id

        # 2. Stream three more alerts over one bidirectional call.
        async def more() -> AsyncIterator[ingestion.StreamAlertsRequest]:
            for n in range(3, 6):
                yield ingestion.StreamAlertsRequest(alert=sentinel_alert(f"{run}-{n}"))

        acks = [r.ack async for r in alerts.StreamAlerts(more())]
        print(f"stream: {len(acks)} acks, all for {acks[0].incident_id}")

        # 3. Open an incident by hand (safe to retry thanks to request_id).
        created = (
            await service.CreateIncident(
                incidents.CreateIncidentRequest(
                    incident=incident_pb2.Incident(
                        title="Answers in the wrong language for tenant acme",
                        severity=incident_pb2.SEVERITY_P3,
                        type=incident_pb2.INCIDENT_TYPE_APPLICATION,
                        source="support-desk",
                    ),
                    actor="alice",
                    request_id=f"{run}-create",
                )
            )
        ).incident
        print(f"create: {created.id}")

        # 4. Get the alert-driven incident.
        incident = (
            await service.GetIncident(incidents.GetIncidentRequest(id=first.incident_id))
        ).incident
        print(
            f"get: {incident.title!r} {incident_pb2.Severity.Name(incident.severity)} "
            f"alerts={incident.alert_count} timeline={len(incident.timeline)}"
        )

        # 5. List with filters, page by page.
        request = incidents.ListIncidentsRequest(
            sources=["llm-sentinel"], severities=[incident_pb2.SEVERITY_P0], page_size=10
        )
        listed = 0
        while True:
            page = await service.ListIncidents(request)
            listed += len(page.incidents)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        print(f"list: {listed} of {page.total_size} P0 incidents from llm-sentinel")

        # 6. Update: triage and assign, guarded by the etag just read.
        updated = (
            await service.UpdateIncident(
                incidents.UpdateIncidentRequest(
                    incident=incident_pb2.Incident(
                        id=incident.id,
                        state=incident_pb2.INCIDENT_STATE_INVESTIGATING,
                        assignees=["bob"],
                        etag=incident.etag,
                    ),
                    update_mask=FieldMask(paths=["state", "assignees"]),
                    actor="bob",
                )
            )
        ).incident
        print(f"update: {incident_pb2.IncidentState.Name(updated.state)}, assigned to bob")

        # 7. Add a note.
        noted = await service.AddNote(
            incidents.AddNoteRequest(
                incident_id=incident.id, author="bob", content="Rolled back the router config."
            )
        )
        print(f"note: {noted.note.id}")

        # 8. Resolve.
        resolved = (
            await service.ResolveIncident(
                incidents.ResolveIncidentRequest(
                    id=incident.id,
                    method=incident_pb2.RESOLUTION_METHOD_MANUAL,
                    root_cause="router config sent all traffic to one region",
                    resolved_by="bob",
                )
            )
        ).incident
        ttr = resolved.resolution.time_to_resolve.ToTimedelta()
        print(f"resolve: {incident_pb2.IncidentState.Name(resolved.state)} after {ttr}")

        # 9. What the stream saw, reading for at most `stream_seconds`.
        seen: list[str] = []

        async def read() -> None:
            async for response in stream:
                seen.append(incident_pb2.EventType.Name(response.event.event.type))

        try:
            await asyncio.wait_for(read(), stream_seconds)
        except TimeoutError:
            stream.cancel()
        print(f"stream events: {', '.join(seen)}")
        assert "EVENT_TYPE_RESOLVED" in seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="localhost:9000")
    parser.add_argument("--stream-seconds", type=float, default=2.0)
    args = parser.parse_args()
    asyncio.run(walk(args.target, args.stream_seconds))


if __name__ == "__main__":
    main()
