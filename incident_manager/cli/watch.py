"""`imctl watch`: every change as it happens, one line each, resuming after a disconnect.

It asks for the events after the last one it printed (`after_sequence`), so a
dropped connection or a server restart loses nothing and repeats nothing. Before
the first event it resumes after the newest event it could find at start.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click
import grpc
from rich.text import Text

from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from incident_manager.cli.base import Session, cli, connection_options, pass_session
from incident_manager.cli.connect import Server
from incident_manager.cli.failures import from_rpc_error
from incident_manager.cli.incidents import EVENT_TYPE, SEVERITY, STATE, TYPE
from incident_manager.cli.output import (
    console,
    moment,
    parse_enums,
    severity_text,
    short_id,
    short_name,
    state_text,
    to_json,
)

RETRY_FIRST = 0.2
RETRY_MAX = 5.0


def newest_sequence(server: Server) -> int:
    """The sequence of the newest event of the most recently updated incident (0 if none)."""
    page = server.call(
        server.incidents.ListIncidents,
        service_pb2.ListIncidentsRequest(
            page_size=1, order_by="update_time desc", view=service_pb2.INCIDENT_VIEW_FULL
        ),
    )
    return max((e.sequence for i in page.incidents for e in i.timeline), default=0)


def event_line(event: service_pb2.IncidentEvent) -> Text:
    """`10:02:03 P1 inc_3f2a9c1d created alice: p99 latency above 2s — Incident created`."""
    when = moment(event.event.create_time) or datetime.now(UTC)
    line = Text()
    line.append(when.astimezone().strftime("%H:%M:%S"), style="dim")
    line.append(" ")
    line.append_text(severity_text(event.severity))
    line.append(f" {short_id(event.incident_id)} ")
    line.append(short_name(event.event.type, EVENT_TYPE), style="bold")
    line.append(f" {state_text(event.state)}")
    if event.event.actor:
        line.append(f" by {event.event.actor}")
    line.append(f": {event.title}")
    if event.event.message:
        line.append(f" — {event.event.message}", style="dim")
    return line


@cli.command("watch")
@click.option("--state", "states", multiple=True)
@click.option("--severity", "severities", multiple=True, help="P0,P1")
@click.option("--source", "sources", multiple=True)
@click.option("--type", "types", multiple=True)
@click.option("--assignee", default="")
@click.option("--incident", "incident_id", default="", help="only this incident's events")
@click.option("--open", "only_open", is_flag=True, help="only events of open incidents")
@click.option("--after", type=int, default=None, help="replay stored events after this sequence")
@click.option("--count", type=click.IntRange(1), default=None, help="stop after this many events")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    help="json: one per line",
)
@connection_options
@pass_session
def watch(
    session: Session,
    states: tuple[str, ...],
    severities: tuple[str, ...],
    sources: tuple[str, ...],
    types: tuple[str, ...],
    assignee: str,
    incident_id: str,
    only_open: bool,
    after: int | None,
    count: int | None,
    output: str,
) -> None:
    """Follow changes live, one line each; Ctrl-C stops."""
    request = service_pb2.StreamIncidentsRequest(
        states=parse_enums(states, STATE, "--state"),
        severities=parse_enums(severities, SEVERITY, "--severity"),
        types=parse_enums(types, TYPE, "--type"),
        sources=[s for text in sources for s in text.split(",") if s],
        assignee=assignee,
        incident_id=incident_id,
        open=only_open,
    )
    out = console()
    note = console(stderr=True)
    server = session.server()
    last = after if after is not None else newest_sequence(server)
    seen = 0
    delay = RETRY_FIRST
    lost = False
    try:
        while True:
            request.after_sequence = last
            try:
                for answer in server.stream(server.incidents.StreamIncidents, request):
                    if lost:
                        note.print(Text(f"reconnected; resumed after event {last}", style="green"))
                        lost = False
                    delay = RETRY_FIRST
                    event = answer.event
                    last = max(last, event.sequence)
                    if output == "json":
                        click.echo(to_json(event, indent=None))
                    else:
                        line = event_line(event)
                        if out.is_terminal:
                            # One event, one screen line: the rest is in `imctl show`.
                            line.truncate(out.width, overflow="ellipsis")
                        out.print(line)
                    seen += 1
                    if count is not None and seen >= count:
                        return
                # The server ended the stream (it is stopping): resume.
                why = "the server ended the stream"
            except grpc.RpcError as error:
                failure = from_rpc_error(error, session.settings().server)
                if error.code() == grpc.StatusCode.OUT_OF_RANGE:
                    note.print(
                        f"imctl: the server has no event after {last} "
                        "(was its database replaced?); following new events only"
                    )
                    del request.after_sequence
                    last = newest_sequence(server)
                    continue
                if error.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.INTERNAL,
                    grpc.StatusCode.UNKNOWN,
                ):
                    raise failure from None
                why = str(failure.message)
            if not lost:
                note.print(
                    Text(
                        f"connection lost ({why}); reconnecting, resuming after event {last}",
                        style="yellow",
                    )
                )
                lost = True
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            # A fresh channel: one that failed backs off on its own for seconds.
            session.close()
            session.reopen()
            server = session.server()
    except KeyboardInterrupt:
        return
