"""`open: true` asks ListIncidents and StreamIncidents for the incidents still being worked on,
without spelling out the four active states."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as pb2
from tests.support import Running, field_violations, new_incident

ACTIVE = (
    incident_pb2.INCIDENT_STATE_DETECTED,
    incident_pb2.INCIDENT_STATE_TRIAGED,
    incident_pb2.INCIDENT_STATE_INVESTIGATING,
    incident_pb2.INCIDENT_STATE_REMEDIATING,
)


async def incident_in(server: Running, state: int, title: str) -> str:
    """An incident moved to `state` the way people move one (resolve first, then close)."""
    created = await server.incidents.CreateIncident(
        pb2.CreateIncidentRequest(incident=new_incident(title=title))
    )
    incident_id = created.incident.id
    if state in (incident_pb2.INCIDENT_STATE_RESOLVED, incident_pb2.INCIDENT_STATE_CLOSED):
        await server.incidents.ResolveIncident(
            pb2.ResolveIncidentRequest(
                id=incident_id, method=incident_pb2.RESOLUTION_METHOD_MANUAL, resolved_by="bob"
            )
        )
    if state not in (incident_pb2.INCIDENT_STATE_DETECTED, incident_pb2.INCIDENT_STATE_RESOLVED):
        await server.incidents.UpdateIncident(
            pb2.UpdateIncidentRequest(
                incident=incident_pb2.Incident(id=incident_id, state=state),  # type: ignore[arg-type]
                update_mask=FieldMask(paths=["state"]),
            )
        )
    return incident_id


@pytest.fixture
async def one_of_each_state(server: Running) -> dict[int, str]:
    """An incident in every state, by state."""
    return {
        state: await incident_in(server, state, incident_pb2.IncidentState.Name(state))
        for state in (
            *ACTIVE,
            incident_pb2.INCIDENT_STATE_RESOLVED,
            incident_pb2.INCIDENT_STATE_CLOSED,
        )
    }


async def test_listing_open_incidents_returns_the_four_active_states_and_nothing_resolved(
    server: Running, one_of_each_state: dict[int, str]
) -> None:
    page = await server.incidents.ListIncidents(pb2.ListIncidentsRequest(open=True))

    assert {i.id for i in page.incidents} == {one_of_each_state[s] for s in ACTIVE}
    assert page.total_size == 4
    spelled_out = await server.incidents.ListIncidents(pb2.ListIncidentsRequest(states=ACTIVE))
    assert [i.id for i in page.incidents] == [i.id for i in spelled_out.incidents]


async def test_open_with_states_keeps_only_the_open_states_listed(
    server: Running, one_of_each_state: dict[int, str]
) -> None:
    page = await server.incidents.ListIncidents(
        pb2.ListIncidentsRequest(
            open=True,
            states=[incident_pb2.INCIDENT_STATE_TRIAGED, incident_pb2.INCIDENT_STATE_CLOSED],
        )
    )

    assert [i.id for i in page.incidents] == [
        one_of_each_state[incident_pb2.INCIDENT_STATE_TRIAGED]
    ]


async def test_open_with_only_closed_states_is_refused_rather_than_matching_everything(
    server: Running,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await server.incidents.ListIncidents(
            pb2.ListIncidentsRequest(open=True, states=[incident_pb2.INCIDENT_STATE_RESOLVED])
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "open" in field_violations(raised.value)["states"]


async def test_pages_of_open_incidents_follow_on_with_their_token(
    server: Running, one_of_each_state: dict[int, str]
) -> None:
    first = await server.incidents.ListIncidents(pb2.ListIncidentsRequest(open=True, page_size=3))
    second = await server.incidents.ListIncidents(
        pb2.ListIncidentsRequest(open=True, page_size=3, page_token=first.next_page_token)
    )

    listed = [i.id for i in (*first.incidents, *second.incidents)]
    assert sorted(listed) == sorted(one_of_each_state[s] for s in ACTIVE)
    assert not second.next_page_token


async def test_streaming_open_incidents_leaves_out_events_of_resolved_and_closed_ones(
    server: Running, one_of_each_state: dict[int, str]
) -> None:
    stream = server.incidents.StreamIncidents(
        pb2.StreamIncidentsRequest(open=True, after_sequence=0)
    )
    events: list[pb2.IncidentEvent] = []

    async def read_replay() -> None:
        async for response in stream:
            events.append(response.event)

    with pytest.raises(TimeoutError):
        # The replay ends, then the stream waits for live events: stop waiting.
        await asyncio.wait_for(read_replay(), 2)
    stream.cancel()

    assert events, "the replay sent nothing"
    assert {e.state for e in events} <= set(ACTIVE)
    assert {e.incident_id for e in events} == {one_of_each_state[s] for s in ACTIVE} | {
        # Each of these was DETECTED, an open state, right after it was created.
        one_of_each_state[incident_pb2.INCIDENT_STATE_RESOLVED],
        one_of_each_state[incident_pb2.INCIDENT_STATE_CLOSED],
    }
    resolved = one_of_each_state[incident_pb2.INCIDENT_STATE_RESOLVED]
    assert [e.event.type for e in events if e.incident_id == resolved] == [
        incident_pb2.EVENT_TYPE_CREATED
    ]
