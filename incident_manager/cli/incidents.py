"""Commands about incidents: list, show, ack, resolve, note, assign, set, and test alerts."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import click
from google.protobuf import field_mask_pb2
from rich.table import Table
from rich.text import Text

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_pb2, incident_pb2, paging_service_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from incident_manager.cli.base import Session, cli, connection_options, output_option, pass_session
from incident_manager.cli.failures import Failure, Refused, usage
from incident_manager.cli.lookup import get_incident, incident_ids, whole_incident_id
from incident_manager.cli.output import (
    absolute,
    age,
    both,
    console,
    emit_data,
    label_pairs,
    parse_enum,
    parse_enums,
    parse_pairs,
    relative,
    severity_text,
    short_id,
    short_name,
    state_text,
)

SEVERITY = incident_pb2.Severity.DESCRIPTOR
STATE = incident_pb2.IncidentState.DESCRIPTOR
TYPE = incident_pb2.IncidentType.DESCRIPTOR
EVENT_TYPE = incident_pb2.EventType.DESCRIPTOR
METHOD = incident_pb2.ResolutionMethod.DESCRIPTOR
NOTIFICATION_STATE = paging_service_pb2.NotificationState.DESCRIPTOR
TARGET_KIND = paging_service_pb2.TargetKind.DESCRIPTOR

F = TypeVar("F", bound=Callable[..., Any])


def complete_incident_id(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """Open incidents' ids for the shell, from the server (one call; nothing if it fails)."""
    try:
        session = ctx.find_object(Session) or Session()
        # Completion runs outside the command's own invocation: make `ctx` current, so the
        # session finds the connection flags given on the line so far.
        with ctx:
            found = incident_ids(session.server(), incomplete)
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [click.shell_completion.CompletionItem(i, help=title) for i, title in found]


def incident_argument(multiple: bool = False) -> Callable[[F], F]:
    """The ID argument (one or several), with completion from the server."""
    return click.argument(
        "ids" if multiple else "incident_id",
        metavar="ID..." if multiple else "ID",
        nargs=-1 if multiple else 1,
        required=True,
        shell_complete=complete_incident_id,
    )


@cli.command("incidents")
@click.option("--state", "states", multiple=True, help="only these states (investigating,...)")
@click.option("--severity", "severities", multiple=True, help="only these severities (P0,P1)")
@click.option("--source", "sources", multiple=True, help="only from these sources")
@click.option("--type", "types", multiple=True, help="only these types (security,...)")
@click.option("--assignee", default="", help="only incidents assigned to this person")
@click.option("--all", "everything", is_flag=True, help="resolved and closed ones too")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--wide", is_flag=True, help="whole ids and titles")
@output_option
@connection_options
@pass_session
def incidents(
    session: Session,
    states: tuple[str, ...],
    severities: tuple[str, ...],
    sources: tuple[str, ...],
    types: tuple[str, ...],
    assignee: str,
    everything: bool,
    limit: int,
    wide: bool,
    output: str,
) -> None:
    """Open incidents, most severe and newest first (alias: ls)."""
    request = service_pb2.ListIncidentsRequest(
        states=parse_enums(states, STATE, "--state"),
        severities=parse_enums(severities, SEVERITY, "--severity"),
        types=parse_enums(types, TYPE, "--type"),
        sources=[s for text in sources for s in text.split(",") if s],
        assignee=assignee,
        open=not everything and not states,
        order_by="severity",
    )
    server = session.server()
    found: list[incident_pb2.Incident] = []
    token = ""
    total = 0
    while len(found) < limit:
        request.page_size = min(100, limit - len(found))
        request.page_token = token
        page = server.call(server.incidents.ListIncidents, request)
        found.extend(page.incidents)
        total = page.total_size
        token = page.next_page_token
        if not token:
            break
    if output != "table":
        emit_data(
            service_pb2.ListIncidentsResponse(
                incidents=found, next_page_token=token, total_size=total
            ),
            output,
        )
        return
    out = console()
    if not found:
        out.print("no open incidents" if request.open else "no incidents match")
        return
    out.print(incident_table(found, out.width, wide))
    if token or total > len(found):
        out.print(Text(f"{len(found)} of {total}; --limit shows more", style="dim"))


cli.add_command(incidents, "ls")

WIDE_ENOUGH = 110
"""Below this many columns, assignees and the acknowledger share one WHO column."""


def _owner(incident: incident_pb2.Incident) -> Text:
    if incident.acknowledged_by:
        return Text(f"✓{incident.acknowledged_by}", style="green")
    return Text(",".join(incident.assignees) or "-")


def incident_table(found: list[incident_pb2.Incident], width: int, wide: bool) -> Table:
    """The incidents as a table fitted to `width`: the title gets what the other columns
    leave, cut with an ellipsis (`wide`: whole ids and titles, wrapped)."""
    narrow = width < WIDE_ENOUGH and not wide
    headers = ["ID", "SEV", "STATE", "TITLE", "SOURCE", "ALERTS", "AGE"]
    headers += ["WHO"] if narrow else ["ASSIGNEES", "ACK BY"]
    limits = {"SOURCE": 12, "ASSIGNEES": 16, "ACK BY": 12, "WHO": 10}
    rows: list[list[str | Text]] = []
    for incident in found:
        row: list[str | Text] = [
            incident.id if wide else short_id(incident.id),
            severity_text(incident.severity),
            state_text(incident.state),
            incident.title,
            incident.source,
            str(incident.alert_count),
            age(incident.create_time),
        ]
        if narrow:
            row.append(_owner(incident))
        else:
            row += [",".join(incident.assignees) or "-", incident.acknowledged_by or "-"]
        rows.append(row)
    used = 0
    for index, header in enumerate(headers):
        if header == "TITLE":
            continue
        cells = [len(header), *(len(str(row[index])) for row in rows)]
        used += min(max(cells), limits.get(header, 10_000)) + 1
    table = Table(box=None, pad_edge=False, header_style="bold", padding=(0, 1, 0, 0))
    for header in headers:
        if header == "TITLE":
            if wide:
                table.add_column(header, overflow="fold")
            else:
                title_width = max(12, width - used - 1)
                table.add_column(header, no_wrap=True, overflow="ellipsis", max_width=title_width)
        else:
            table.add_column(
                header,
                no_wrap=True,
                overflow="ellipsis",
                max_width=limits.get(header),
                justify="right" if header in ("ALERTS", "AGE") else "left",
            )
    for row in rows:
        table.add_row(*row)
    return table


@cli.command("show")
@incident_argument()
@output_option
@connection_options
@pass_session
def show(session: Session, incident_id: str, output: str) -> None:
    """One incident: its fields, timeline, notes and delivery ledger. A unique id prefix will do."""
    server = session.server()
    incident = get_incident(server, incident_id)
    if output != "table":
        emit_data(incident, output)
        return
    deliveries = _deliveries(session, incident.id)
    _print_incident(incident, deliveries)


def _deliveries(session: Session, incident_id: str) -> list[paging_service_pb2.Notification]:
    server = session.server()
    found: list[paging_service_pb2.Notification] = []
    token = ""
    try:
        while True:
            page = server.call(
                server.paging.ListNotifications,
                paging_service_pb2.ListNotificationsRequest(
                    incident_id=incident_id, page_size=100, page_token=token
                ),
            )
            found.extend(page.notifications)
            token = page.next_page_token
            if not token or len(found) >= 500:
                return found
    except Failure:
        # A token that may read incidents but not the ledger still sees the incident.
        return found


def _print_incident(
    incident: incident_pb2.Incident, deliveries: list[paging_service_pb2.Notification]
) -> None:
    out = console()
    head = Text()
    head.append(incident.id, style="bold")
    head.append("  ")
    head.append_text(severity_text(incident.severity))
    head.append(f"  {state_text(incident.state)}")
    out.print(head)
    out.print(Text(incident.title, style="bold"))
    if incident.description:
        out.print(incident.description)
    facts = [
        ("source", incident.source),
        ("type", short_name(incident.type, TYPE)),
        ("alerts", str(incident.alert_count)),
        ("created", both(incident.create_time)),
        ("updated", both(incident.update_time)),
        ("assignees", ", ".join(incident.assignees) or "-"),
    ]
    if incident.acknowledged_by:
        facts.append(
            ("acknowledged", f"by {incident.acknowledged_by} {relative(incident.acknowledge_time)}")
        )
    if incident.labels:
        facts.append(("labels", label_pairs(incident.labels)))
    if incident.affected_resources:
        facts.append(("resources", ", ".join(incident.affected_resources)))
    if incident.HasField("resolution"):
        r = incident.resolution
        facts.append(
            (
                "resolved",
                f"by {r.resolved_by} {relative(r.resolve_time)} "
                f"({short_name(r.method, METHOD)}): {r.root_cause}"
                + (f"; {r.notes}" if r.notes else ""),
            )
        )
    facts.append(("etag", incident.etag))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    for name, value in facts:
        grid.add_row(name, value)
    out.print(grid)

    shown = len(incident.timeline)
    of = f" (last {shown} of {incident.timeline_size})" if incident.timeline_size > shown else ""
    out.print(Text(f"\nTimeline{of}", style="bold"))
    timeline = Table(box=None, pad_edge=False, show_header=False, padding=(0, 1, 0, 0))
    timeline.add_column(no_wrap=True, style="dim", justify="right")
    timeline.add_column(no_wrap=True, style="dim")
    timeline.add_column(no_wrap=True)
    timeline.add_column(min_width=20, overflow="fold")
    for event in incident.timeline:
        timeline.add_row(
            relative(event.create_time),
            absolute(event.create_time)[:19],
            short_name(event.type, EVENT_TYPE),
            _what(event),
        )
    out.print(timeline)

    if incident.notes:
        out.print(Text(f"\nNotes ({incident.notes_size})", style="bold"))
        for written in incident.notes:
            out.print(
                Text.assemble(
                    (f"{relative(written.create_time)}  ", "dim"),
                    (written.author, "bold"),
                    f": {written.content}",
                )
            )
    out.print(Text(f"\nDeliveries ({len(deliveries)})", style="bold"))
    if not deliveries:
        out.print(Text("none", style="dim"))
    for n in deliveries:
        out.print(delivery_line(n))


def delivery_line(n: paging_service_pb2.Notification) -> Text:
    """`33s ago  level 1/1  alice (schedule primary) via mail alice@example.com: sent, 1 try`."""
    kind = short_name(n.target_kind, TARGET_KIND)
    to = f"{n.user_id} ({kind} {n.target_id})" if n.user_id else f"{kind} {n.target_id}"
    via = n.channel_id + (f" {n.recipient}" if n.recipient and n.recipient != n.channel_id else "")
    if via == n.target_id and n.target_kind in (
        paging_service_pb2.TARGET_KIND_CHANNEL,
        paging_service_pb2.TARGET_KIND_ACTION,  # `action kill-switch`: its webhook is its id
    ):
        via = ""
    state = short_name(n.state, NOTIFICATION_STATE)
    tries = f"{n.attempts} {'try' if n.attempts == 1 else 'tries'}"
    line = Text.assemble(
        (f"{relative(n.create_time)}  ", "dim"),
        f"level {n.level}/{n.round}  {to}",
        f" via {via}" if via else "",
        ": ",
        (state, "green" if n.state == paging_service_pb2.NOTIFICATION_STATE_SENT else "yellow"),
        f", {tries}",
    )
    if n.state == paging_service_pb2.NOTIFICATION_STATE_PENDING and n.HasField("next_attempt_time"):
        line.append(f", next {relative(n.next_attempt_time)}")
    if n.last_error:
        line.append(f" — {n.last_error}", style="dim")
    elif n.reason:
        line.append(f" ({n.reason})", style="dim")
    return line


def _what(event: incident_pb2.TimelineEvent) -> Text:
    """The event's message, with its actor in front unless the message starts with it."""
    if event.actor and not event.message.startswith(event.actor):
        return Text.assemble((event.actor, "bold"), ": ", event.message)
    return Text(event.message)


def _done(output: str, incident: incident_pb2.Incident, line: str) -> None:
    if output != "table":
        emit_data(incident, output)
    else:
        console().print(line)


@cli.command("ack")
@incident_argument(multiple=True)
@output_option
@connection_options
@pass_session
def ack(session: Session, ids: tuple[str, ...], output: str) -> None:
    """Acknowledge incidents: you are on it, so paging stops."""
    server = session.server()
    failed: list[Failure] = []
    for typed in ids:
        try:
            done = server.call(
                server.incidents.AcknowledgeIncident,
                service_pb2.AcknowledgeIncidentRequest(
                    id=whole_incident_id(server, typed), actor=session.actor()
                ),
            ).incident
        except Failure as failure:
            if len(ids) == 1:
                raise
            failure.show()
            failed.append(failure)
            continue
        _done(output, done, f"acknowledged {done.id} by {done.acknowledged_by}: {done.title}")
    if failed:
        raise Refused(f"{len(failed)} of {len(ids)} not acknowledged")


@cli.command("resolve")
@incident_argument()
@click.option("--root-cause", required=True, help="what caused it")
@click.option("--method", default="manual", show_default=True, help="manual, automated, ...")
@click.option("--notes", default="", help="what was done")
@output_option
@connection_options
@pass_session
def resolve(
    session: Session, incident_id: str, root_cause: str, method: str, notes: str, output: str
) -> None:
    """Resolve an incident, saying what caused it."""
    server = session.server()
    incident = get_incident(server, incident_id)
    done = server.call(
        server.incidents.ResolveIncident,
        service_pb2.ResolveIncidentRequest(
            id=incident.id,
            method=parse_enum(method, METHOD, "--method"),
            root_cause=root_cause,
            notes=notes,
            resolved_by=session.actor(),
            etag=incident.etag,
        ),
    ).incident
    _done(output, done, f"resolved {done.id} by {done.resolution.resolved_by}: {done.title}")


@cli.command("note")
@incident_argument()
@click.argument("text", nargs=-1, required=True)
@output_option
@connection_options
@pass_session
def note(session: Session, incident_id: str, text: tuple[str, ...], output: str) -> None:
    """Add a note to an incident's timeline (TEXT `-` reads it from stdin)."""
    content = sys.stdin.read().strip() if text == ("-",) else " ".join(text)
    if not content:
        raise usage("the note is empty")
    server = session.server()
    incident = get_incident(server, incident_id)
    answer = server.call(
        server.incidents.AddNote,
        service_pb2.AddNoteRequest(
            incident_id=incident.id,
            author=session.actor(),
            content=content,
            # The same request id on a retry adds the note once.
            request_id=str(uuid.uuid4()),
        ),
    )
    _done(output, answer.incident, f"noted on {incident.id} by {answer.note.author}")


def _update(
    session: Session,
    incident: incident_pb2.Incident,
    change: incident_pb2.Incident,
    paths: list[str],
) -> incident_pb2.Incident:
    """UpdateIncident with exactly `paths` in the mask and the etag that was read, so a
    change someone made meanwhile is refused (ABORTED) instead of overwritten."""
    change.id = incident.id
    change.etag = incident.etag
    server = session.server()
    return server.call(
        server.incidents.UpdateIncident,
        service_pb2.UpdateIncidentRequest(
            incident=change,
            update_mask=field_mask_pb2.FieldMask(paths=paths),
            actor=session.actor(),
        ),
    ).incident


@cli.command("assign")
@incident_argument()
@click.argument("users", nargs=-1, required=True)
@click.option("--replace", is_flag=True, help="assign exactly these, dropping the others")
@click.option("--remove", is_flag=True, help="unassign these instead")
@output_option
@connection_options
@pass_session
def assign(
    session: Session,
    incident_id: str,
    users: tuple[str, ...],
    replace: bool,
    remove: bool,
    output: str,
) -> None:
    """Assign people to an incident (added to those already assigned)."""
    if replace and remove:
        raise usage("--replace and --remove do not go together")
    incident = get_incident(session.server(), incident_id)
    if replace:
        wanted = list(dict.fromkeys(users))
    elif remove:
        wanted = [a for a in incident.assignees if a not in users]
    else:
        wanted = list(dict.fromkeys([*incident.assignees, *users]))
    done = _update(session, incident, incident_pb2.Incident(assignees=wanted), ["assignees"])
    _done(output, done, f"{done.id} assigned to {', '.join(done.assignees) or 'nobody'}")


@cli.command("set")
@incident_argument()
@click.option("--state", default=None, help="investigating, remediating, closed, ...")
@click.option("--severity", default=None, help="P0..P4")
@click.option("--title", default=None)
@click.option("--etag", default=None, help="refuse unless the incident still has this etag")
@output_option
@connection_options
@pass_session
def set_fields(
    session: Session,
    incident_id: str,
    state: str | None,
    severity: str | None,
    title: str | None,
    etag: str | None,
    output: str,
) -> None:
    """Change an incident's state, severity or title; refused if someone changed it since
    imctl read it (or since --etag, from `show -o json`)."""
    change = incident_pb2.Incident()
    paths: list[str] = []
    if state is not None:
        change.state = parse_enum(state, STATE, "--state")
        paths.append("state")
    if severity is not None:
        change.severity = parse_enum(severity, SEVERITY, "--severity")
        paths.append("severity")
    if title is not None:
        change.title = title
        paths.append("title")
    if not paths:
        raise usage("say what to change: --state, --severity or --title")
    incident = get_incident(session.server(), incident_id)
    if etag is not None:
        incident.etag = etag
    done = _update(session, incident, change, paths)
    _done(
        output,
        done,
        f"{done.id} is {state_text(done.state)}, "
        f"{severity_text(done.severity).plain}: {done.title}",
    )


@cli.group("alert")
def alert() -> None:
    """Alerts, as a monitoring module sends them."""


@alert.command("send")
@click.option("--source", required=True)
@click.option("--title", required=True)
@click.option("--severity", required=True, help="P0..P4")
@click.option("--type", "kind", default="application", show_default=True)
@click.option("--label", "labels", multiple=True, help="key=value (repeatable)")
@click.option("--resource", "resources", multiple=True, help="an affected resource (repeatable)")
@click.option("--description", default="")
@click.option("--dedup-key", default=None)
@click.option("--id", "alert_id", default=None, help="the alert's id; default a new one")
@output_option
@connection_options
@pass_session
def alert_send(
    session: Session,
    source: str,
    title: str,
    severity: str,
    kind: str,
    labels: tuple[str, ...],
    resources: tuple[str, ...],
    description: str,
    dedup_key: str | None,
    alert_id: str | None,
    output: str,
) -> None:
    """Submit a test alert, to try routes and paging end to end."""
    sent = alert_pb2.Alert(
        id=alert_id or f"imctl-{uuid.uuid4().hex[:12]}",
        source=source,
        title=title,
        description=description,
        severity=parse_enum(severity, SEVERITY, "--severity"),
        type=parse_enum(kind, TYPE, "--type"),
        labels=parse_pairs(labels, "--label"),
        affected_resources=list(resources),
        status=alert_pb2.ALERT_STATUS_FIRING,
    )
    if dedup_key is not None:
        sent.dedup_key = dedup_key
    server = session.server()
    answer = server.call(
        server.ingestion.SubmitAlert, ingestion_pb2.SubmitAlertRequest(alert=sent)
    ).ack
    if output != "table":
        emit_data(answer, output)
    else:
        status = short_name(answer.status, alert_pb2.AckStatus.DESCRIPTOR)
        where = f" -> {answer.incident_id}" if answer.incident_id else ""
        console().print(
            f"alert {answer.alert_id}: {status}{where}"
            + (f" ({answer.message})" if answer.message else "")
        )
    if answer.status == alert_pb2.ACK_STATUS_REJECTED:
        raise Refused(f"the alert was rejected: {answer.message}")
