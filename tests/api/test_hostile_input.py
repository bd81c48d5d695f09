"""Odd, extreme and forged requests get a clear client error, never INTERNAL."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from incident_manager.adapters.sqlite import SqliteStorage
from incident_manager.domain.errors import StorageUnavailable
from incident_manager.domain.ratelimit import RateLimit
from tests.support import (
    Running,
    StartServer,
    alert,
    error_info,
    field_violations,
    new_incident,
    status_details,
)

HUGE = "x" * 100_000


def token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    raise AssertionError("the call succeeded")


@pytest.mark.parametrize(
    "page_token",
    [
        token({"v": 1, "k": [1, "a"]}),  # no query digest
        token({"v": 1, "k": [10**30, "a"], "q": "0" * 16}),  # integer beyond 64 bits
        base64.urlsafe_b64encode(b"[" * 100_000).decode()[:1000],  # deep nesting
        token([1, 2, 3]),  # not an object
        "A" * 5000,  # too long
    ],
    ids=["no-digest", "huge-int", "nested", "not-object", "too-long"],
)
async def test_forged_page_tokens_are_invalid_arguments(server: Running, page_token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.ListIncidents(pb2.ListIncidentsRequest(page_token=page_token))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in field_violations(refused.value)


@pytest.mark.parametrize(
    "make_call",
    [
        lambda s: s.incidents.AddNote(
            pb2.AddNoteRequest(incident_id=HUGE, author="a", content="c")
        ),
        lambda s: s.incidents.ResolveIncident(
            pb2.ResolveIncidentRequest(
                id=HUGE, method=incident_pb2.RESOLUTION_METHOD_MANUAL, resolved_by="me"
            )
        ),
        lambda s: s.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(id=HUGE), update_mask=FieldMask(paths=["title"])
            )
        ),
        lambda s: s.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(id="inc_x"),
                update_mask=FieldMask(paths=[f"p{i}" for i in range(2000)]),
            )
        ),
        lambda s: s.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(id="inc_x"), update_mask=FieldMask(paths=[HUGE])
            )
        ),
        lambda s: s.incidents.ListIncidents(pb2.ListIncidentsRequest(order_by=HUGE)),
        lambda s: s.incidents.ListIncidents(
            pb2.ListIncidentsRequest(sources=[f"s{i}" for i in range(1000)])
        ),
        lambda s: s.incidents.GetIncident(pb2.GetIncidentRequest(id=HUGE)),
    ],
    ids=[
        "note-huge-id",
        "resolve-huge-id",
        "update-huge-id",
        "many-mask-paths",
        "huge-mask-path",
        "huge-order-by",
        "many-sources",
        "get-huge-id",
    ],
)
async def test_huge_values_are_refused_as_invalid_not_lost_in_oversized_headers(
    server: Running, make_call: object
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await make_call(server)  # type: ignore[operator]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(refused.value.details() or "") <= 1000


@pytest.mark.parametrize(
    ("make_call", "field"),
    [
        (
            lambda s: s.ingestion.SubmitAlert(
                ingestion_pb2.SubmitAlertRequest(alert=alert(title="p99\x00latency"))
            ),
            "alert.title",
        ),
        (
            lambda s: s.incidents.CreateIncident(
                pb2.CreateIncidentRequest(incident=new_incident(labels={"team": "ml\x00"}))
            ),
            "incident.labels[team]",
        ),
        (
            lambda s: s.incidents.ListIncidents(pb2.ListIncidentsRequest(sources=["shield\x00"])),
            "sources",
        ),
    ],
    ids=["alert", "incident", "filter"],
)
async def test_a_nul_character_is_refused_as_invalid_though_sqlite_could_store_it(
    server: Running, make_call: object, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await make_call(server)  # type: ignore[operator]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NUL (U+0000)" in field_violations(refused.value)[field]
    listed = await server.incidents.ListIncidents(pb2.ListIncidentsRequest())
    assert listed.total_size == 0


async def test_a_stale_etag_of_huge_size_is_invalid(server: Running) -> None:
    created = (
        await server.incidents.CreateIncident(pb2.CreateIncidentRequest(incident=new_incident()))
    ).incident
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(id=created.id, title="t", etag=HUGE),
                update_mask=FieldMask(paths=["title"]),
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_resuming_beyond_the_last_event_is_out_of_range(server: Running) -> None:
    call = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest(after_sequence=10**12))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "was the database replaced" in (refused.value.details() or "")


async def test_a_sequence_beyond_64_bits_is_invalid(server: Running) -> None:
    call = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest(after_sequence=2**63))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_following_an_unknown_incident_is_not_found(server: Running) -> None:
    call = server.incidents.StreamIncidents(pb2.StreamIncidentsRequest(incident_id="inc_nope"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in call:
            pass
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_changing_a_closed_incident_says_it_is_closed(server: Running) -> None:
    created = (
        await server.incidents.CreateIncident(pb2.CreateIncidentRequest(incident=new_incident()))
    ).incident
    await server.incidents.ResolveIncident(
        pb2.ResolveIncidentRequest(
            id=created.id, method=incident_pb2.RESOLUTION_METHOD_MANUAL, resolved_by="me"
        )
    )
    close = pb2.UpdateIncidentRequest(
        incident=incident_pb2.Incident(id=created.id, state=incident_pb2.INCIDENT_STATE_CLOSED),
        update_mask=FieldMask(paths=["state"]),
    )
    await server.incidents.UpdateIncident(close)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(id=created.id, title="renamed"),
                update_mask=FieldMask(paths=["title"]),
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "INCIDENT_CLOSED"
    assert "is CLOSED" in (refused.value.details() or "")


async def test_an_over_limit_source_is_told_when_to_retry_but_p0_gets_through(
    start_server: StartServer,
) -> None:
    server = await start_server(rate_limit=RateLimit(per_second=0.001, burst=2))
    for _ in range(2):
        await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert()))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert()))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(refused.value).reason == "RATE_LIMITED"
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status_details(refused.value).details)
    assert retry.retry_delay.seconds > 0
    p0 = await server.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=alert(severity=incident_pb2.SEVERITY_P0))
    )
    assert p0.ack.status in (alert_pb2.ACK_STATUS_ACCEPTED, alert_pb2.ACK_STATUS_DUPLICATE)

    async def requests() -> AsyncIterator[ingestion_pb2.StreamAlertsRequest]:
        yield ingestion_pb2.StreamAlertsRequest(alert=alert(id="limited"))

    [response] = [r async for r in server.ingestion.StreamAlerts(requests())]
    assert response.ack.status == alert_pb2.ACK_STATUS_RATE_LIMITED
    assert response.ack.alert_id == "limited"
    assert "retry in" in response.ack.message


async def test_a_second_storage_on_the_same_file_is_refused(tmp_path: Path) -> None:
    first = SqliteStorage(tmp_path / "one.db")
    with pytest.raises(StorageUnavailable, match="already in use by another incident-manager"):
        SqliteStorage(tmp_path / "one.db")
    await first.close()
    second = SqliteStorage(tmp_path / "one.db")  # free again once the first has closed
    await second.close()


async def test_an_in_memory_database_is_refused_with_a_reason() -> None:
    with pytest.raises(StorageUnavailable, match="give the path of a database file"):
        SqliteStorage(":memory:")


async def test_a_retry_is_answered_as_before_even_when_its_source_is_limited(
    start_server: StartServer,
) -> None:
    server = await start_server(rate_limit=RateLimit(per_second=0.001, burst=1))
    first = alert(id="only-one")
    stored = await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=first))
    again = await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=first))
    assert again.ack.status == stored.ack.status
    assert again.ack.incident_id == stored.ack.incident_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=alert()))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
