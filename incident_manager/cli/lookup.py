"""Finding an incident from what a person typed: its id, or a prefix of it that is unique."""

from __future__ import annotations

import re

import grpc

from generated.incident_manager.v1 import incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from incident_manager.cli.connect import Server
from incident_manager.cli.failures import Failure, usage

WHOLE_ID = re.compile(r"inc_[0-9a-f]{24}")
"""What a server-made incident id looks like (domain/model.py makes them; the API says
only that ids are strings, so anything else is still looked up)."""

SCAN_PAGES = 10
"""How many pages of 100 (newest first) a prefix is looked for in."""


def get_incident(server: Server, typed: str) -> incident_pb2.Incident:
    """The incident `typed` names: an exact id, else the only one whose id starts with it
    (with or without `inc_`)."""
    typed = typed.strip()
    if not typed:
        raise usage("give an incident id")
    try:
        return server.call(
            server.incidents.GetIncident, service_pb2.GetIncidentRequest(id=typed)
        ).incident
    except Failure as failure:
        if failure.status not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise
        matches = _matching(server, typed)
        if len(matches) == 1:
            return server.call(
                server.incidents.GetIncident, service_pb2.GetIncidentRequest(id=matches[0])
            ).incident
        if not matches:
            raise
        shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
        raise usage(f"{typed!r} is the start of {len(matches)} incident ids: {shown}") from None


def whole_incident_id(server: Server, typed: str) -> str:
    """The whole id `typed` names; a whole id is taken as it is, without a call, so a
    token that may act but not read (or a missing incident) gets the action's own answer."""
    typed = typed.strip()
    if WHOLE_ID.fullmatch(typed):
        return typed
    return get_incident(server, typed).id


def _matching(server: Server, typed: str) -> list[str]:
    prefixes = (typed, f"inc_{typed}")
    found: list[str] = []
    token = ""
    for _page in range(SCAN_PAGES):
        page = server.call(
            server.incidents.ListIncidents,
            service_pb2.ListIncidentsRequest(page_size=100, page_token=token),
        )
        found.extend(i.id for i in page.incidents if i.id.startswith(prefixes))
        token = page.next_page_token
        if not token:
            break
    return found


def incident_ids(server: Server, typed: str) -> list[tuple[str, str]]:
    """(id, title) of open incidents whose id starts with `typed`, for shell completion."""
    page = server.call(
        server.incidents.ListIncidents,
        service_pb2.ListIncidentsRequest(open=True, page_size=100, order_by="severity"),
    )
    prefixes = (typed, f"inc_{typed}")
    return [(i.id, i.title) for i in page.incidents if i.id.startswith(prefixes)]
