"""IncidentService through a real server and the generated stubs: happy and error paths."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from tests.support import Running, alert, error_info, field_violations, new_incident


async def create(server: Running, **fields: object) -> incident_pb2.Incident:
    response = await server.incidents.CreateIncident(
        pb2.CreateIncidentRequest(incident=new_incident(**fields), actor="alice")
    )
    return response.incident


async def test_create_returns_a_detected_incident_with_its_created_event(server: Running) -> None:
    incident = await create(server, assignees=["alice"], labels={"tenant": "acme"})
    assert incident.id.startswith("inc_")
    assert incident.state == incident_pb2.INCIDENT_STATE_DETECTED
    assert incident.alert_count == 0
    assert incident.etag
    assert incident.create_time.seconds > 0
    assert len(incident.fingerprint) == 64
    [created] = incident.timeline
    assert created.type == incident_pb2.EVENT_TYPE_CREATED
    assert created.actor == "alice"
    assert created.sequence >= 1


async def test_create_ignores_output_only_fields(server: Running) -> None:
    incident = await create(
        server, id="inc_mine", state=incident_pb2.INCIDENT_STATE_CLOSED, alert_count=99
    )
    assert incident.id != "inc_mine"
    assert incident.state == incident_pb2.INCIDENT_STATE_DETECTED
    assert incident.alert_count == 0


async def test_create_without_required_fields_lists_each_of_them(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.CreateIncident(
            pb2.CreateIncidentRequest(
                incident=incident_pb2.Incident(
                    severity=incident_pb2.SEVERITY_P1, type=incident_pb2.INCIDENT_TYPE_DATA
                )
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == {
        "incident.title": "is required",
        "incident.source": "is required",
    }


async def test_create_with_unspecified_severity_is_invalid_not_defaulted(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await create(server, severity=incident_pb2.SEVERITY_UNSPECIFIED)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SEVERITY_P0" in field_violations(refused.value)["incident.severity"]


async def test_get_returns_the_incident_with_timeline_and_notes(server: Running) -> None:
    incident = await create(server)
    await server.incidents.AddNote(
        pb2.AddNoteRequest(incident_id=incident.id, author="bob", content="paged the vendor")
    )
    got = (await server.incidents.GetIncident(pb2.GetIncidentRequest(id=incident.id))).incident
    assert [n.content for n in got.notes] == ["paged the vendor"]
    assert [e.type for e in got.timeline] == [
        incident_pb2.EVENT_TYPE_CREATED,
        incident_pb2.EVENT_TYPE_NOTE_ADDED,
    ]
    assert got.timeline_size == 2


async def test_get_of_an_unknown_id_is_not_found_and_names_it(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.GetIncident(pb2.GetIncidentRequest(id="inc_missing"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "inc_missing" in (refused.value.details() or "")
    assert error_info(refused.value).reason == "INCIDENT_NOT_FOUND"


async def test_get_without_an_id_is_invalid(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.GetIncident(pb2.GetIncidentRequest())
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(refused.value) == {"id": "is required"}


async def test_update_changes_only_the_masked_fields_and_records_each_change(
    server: Running,
) -> None:
    incident = await create(server)
    change = incident_pb2.Incident(
        id=incident.id,
        title="ignored because not in the mask",
        severity=incident_pb2.SEVERITY_P0,
        state=incident_pb2.INCIDENT_STATE_INVESTIGATING,
        assignees=["sre-oncall"],
    )
    updated = (
        await server.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=change,
                update_mask=FieldMask(paths=["severity", "state", "assignees"]),
                actor="carol",
            )
        )
    ).incident
    assert updated.title == incident.title
    assert updated.severity == incident_pb2.SEVERITY_P0
    assert updated.state == incident_pb2.INCIDENT_STATE_INVESTIGATING
    assert list(updated.assignees) == ["sre-oncall"]
    assert updated.etag != incident.etag
    assert [(e.type, e.actor) for e in updated.timeline[1:]] == [
        (incident_pb2.EVENT_TYPE_SEVERITY_CHANGED, "carol"),
        (incident_pb2.EVENT_TYPE_ASSIGNMENT_CHANGED, "carol"),
        (incident_pb2.EVENT_TYPE_STATE_CHANGED, "carol"),
    ]


async def test_update_with_a_stale_etag_is_aborted(server: Running) -> None:
    incident = await create(server)
    mask = FieldMask(paths=["title"])
    await server.incidents.UpdateIncident(
        pb2.UpdateIncidentRequest(
            incident=incident_pb2.Incident(id=incident.id, title="one", etag=incident.etag),
            update_mask=mask,
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(id=incident.id, title="two", etag=incident.etag),
                update_mask=mask,
            )
        )
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert error_info(refused.value).reason == "ETAG_MISMATCH"


@pytest.mark.parametrize(
    ("mask", "field"),
    [([], "update_mask"), (["fingerprint"], "update_mask"), (["alert_count"], "update_mask")],
)
async def test_update_with_a_missing_or_bad_mask_is_invalid(
    server: Running, mask: list[str], field: str
) -> None:
    incident = await create(server)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(id=incident.id), update_mask=FieldMask(paths=mask)
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(refused.value)


async def test_an_invalid_state_move_is_a_failed_precondition_naming_both_states(
    server: Running,
) -> None:
    incident = await create(server)
    mask = FieldMask(paths=["state"])
    await server.incidents.UpdateIncident(
        pb2.UpdateIncidentRequest(
            incident=incident_pb2.Incident(
                id=incident.id, state=incident_pb2.INCIDENT_STATE_REMEDIATING
            ),
            update_mask=mask,
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(
                    id=incident.id, state=incident_pb2.INCIDENT_STATE_TRIAGED
                ),
                update_mask=mask,
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "REMEDIATING" in (refused.value.details() or "")
    assert "TRIAGED" in (refused.value.details() or "")


async def test_update_of_an_unknown_incident_is_not_found(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(id="inc_gone", title="x"),
                update_mask=FieldMask(paths=["title"]),
            )
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_resolve_records_the_resolution_and_time_to_resolve(server: Running) -> None:
    incident = await create(server)
    resolved = (
        await server.incidents.ResolveIncident(
            pb2.ResolveIncidentRequest(
                id=incident.id,
                method=incident_pb2.RESOLUTION_METHOD_MANUAL,
                root_cause="a tenant's scripted jailbreak attempts",
                notes="blocked the tenant key",
                resolved_by="dana",
            )
        )
    ).incident
    assert resolved.state == incident_pb2.INCIDENT_STATE_RESOLVED
    assert resolved.resolution.method == incident_pb2.RESOLUTION_METHOD_MANUAL
    assert resolved.resolution.resolved_by == "dana"
    assert resolved.resolution.root_cause.startswith("a tenant")
    assert resolved.resolution.resolve_time.ToDatetime() >= incident.create_time.ToDatetime()
    assert resolved.resolution.time_to_resolve.ToTimedelta().total_seconds() >= 0
    assert resolved.timeline[-1].type == incident_pb2.EVENT_TYPE_RESOLVED


async def test_resolving_twice_is_a_failed_precondition(server: Running) -> None:
    incident = await create(server)
    request = pb2.ResolveIncidentRequest(
        id=incident.id, method=incident_pb2.RESOLUTION_METHOD_AUTOMATED, resolved_by="bot"
    )
    await server.incidents.ResolveIncident(request)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.ResolveIncident(request)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "INVALID_STATE_TRANSITION"


async def test_resolve_without_method_or_resolver_is_invalid(server: Running) -> None:
    incident = await create(server)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.ResolveIncident(pb2.ResolveIncidentRequest(id=incident.id))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "method" in field_violations(refused.value)


async def test_add_note_returns_the_note_and_the_incident(server: Running) -> None:
    incident = await create(server)
    response = await server.incidents.AddNote(
        pb2.AddNoteRequest(incident_id=incident.id, author="erin", content="rolled back")
    )
    assert response.note.id.startswith("note_")
    assert response.note.author == "erin"
    assert response.incident.timeline[-1].details["note_id"] == response.note.id


@pytest.mark.parametrize(
    ("request_fields", "fields"),
    [
        ({"incident_id": "", "author": "a", "content": "c"}, {"incident_id"}),
        ({"incident_id": "inc_x", "author": "", "content": ""}, {"author", "content"}),
        ({"incident_id": "inc_x", "author": "a", "content": "c" * 8193}, {"content"}),
    ],
)
async def test_add_note_with_bad_fields_is_invalid(
    server: Running, request_fields: dict[str, str], fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.AddNote(pb2.AddNoteRequest(**request_fields))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(refused.value)) == fields


async def test_add_note_to_an_unknown_incident_is_not_found(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.AddNote(
            pb2.AddNoteRequest(incident_id="inc_missing", author="a", content="c")
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_filters_pages_and_counts(server: Running) -> None:
    for i in range(7):
        await server.ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(
                alert=alert(
                    title=f"alert {i}",
                    severity=incident_pb2.SEVERITY_P0 if i % 2 else incident_pb2.SEVERITY_P3,
                )
            )
        )
    request = pb2.ListIncidentsRequest(severities=[incident_pb2.SEVERITY_P0], page_size=2)
    titles: list[str] = []
    while True:
        page = await server.incidents.ListIncidents(request)
        assert page.total_size == 3
        assert all(not i.timeline for i in page.incidents), "BASIC view leaves timelines out"
        titles += [i.title for i in page.incidents]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert titles == ["alert 5", "alert 3", "alert 1"]


async def test_list_full_view_includes_timelines(server: Running) -> None:
    await create(server)
    page = await server.incidents.ListIncidents(
        pb2.ListIncidentsRequest(view=pb2.INCIDENT_VIEW_FULL)
    )
    assert page.incidents[0].timeline


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"order_by": "title"}, "order_by"),
        ({"states": [incident_pb2.INCIDENT_STATE_UNSPECIFIED]}, "states[0]"),
        ({"severities": [42]}, "severities[0]"),
    ],
)
async def test_list_with_bad_arguments_is_invalid(
    server: Running, request_fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.ListIncidents(pb2.ListIncidentsRequest(**request_fields))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(refused.value)


async def test_list_page_size_is_capped_at_100(server: Running) -> None:
    for i in range(105):
        await create(server, title=f"incident {i}")
    page = await server.incidents.ListIncidents(pb2.ListIncidentsRequest(page_size=1000))
    assert len(page.incidents) == 100
    assert page.next_page_token
    default = await server.incidents.ListIncidents(pb2.ListIncidentsRequest())
    assert len(default.incidents) == 50


async def test_one_answer_names_every_bad_field_including_enums(server: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.CreateIncident(
            pb2.CreateIncidentRequest(incident=incident_pb2.Incident())
        )
    assert set(field_violations(refused.value)) == {
        "incident.title",
        "incident.source",
        "incident.severity",
        "incident.type",
    }


async def test_a_retried_create_with_the_same_request_id_creates_nothing(
    server: Running,
) -> None:
    request = pb2.CreateIncidentRequest(incident=new_incident(), request_id="req-7f3a")
    first = (await server.incidents.CreateIncident(request)).incident
    retry = (await server.incidents.CreateIncident(request)).incident
    assert retry.id == first.id
    page = await server.incidents.ListIncidents(pb2.ListIncidentsRequest())
    assert page.total_size == 1


async def test_a_retried_note_with_the_same_request_id_is_added_once(server: Running) -> None:
    incident = await create(server)
    request = pb2.AddNoteRequest(
        incident_id=incident.id, author="ana", content="paged vendor", request_id="req-note-1"
    )
    first = await server.incidents.AddNote(request)
    retry = await server.incidents.AddNote(request)
    assert retry.note.id == first.note.id
    assert retry.incident.notes_size == 1
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.CreateIncident(
            pb2.CreateIncidentRequest(incident=new_incident(), request_id="req-note-1")
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "already used by a AddNote request" in field_violations(refused.value)["request_id"]
