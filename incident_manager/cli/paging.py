"""Commands about paging: silences, who is on call, overrides, and testing a route."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from google.protobuf.duration_pb2 import Duration
from rich.table import Table
from rich.text import Text

from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from incident_manager.cli.base import Session, cli, connection_options, output_option, pass_session
from incident_manager.cli.failures import usage
from incident_manager.cli.incidents import SEVERITY, TARGET_KIND, TYPE
from incident_manager.cli.output import (
    absolute,
    both,
    console,
    emit_data,
    label_pairs,
    parse_duration,
    parse_enum,
    parse_enums,
    parse_pairs,
    parse_time,
    relative,
    short_name,
    span,
    timestamp_of,
)

SILENCE_STATE = paging_pb2.SilenceState.DESCRIPTOR


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for text in values for part in text.split(",") if part.strip()]


def _matchers(m: paging_pb2.SilenceMatchers) -> str:
    parts = []
    if m.sources:
        parts.append("source=" + "|".join(m.sources))
    if m.types:
        parts.append("type=" + "|".join(short_name(t, TYPE) for t in m.types))
    if m.severities:
        parts.append("severity=" + "|".join(short_name(s, SEVERITY) for s in m.severities))
    if m.labels:
        parts.append(label_pairs(m.labels))
    return " ".join(parts)


def _end(start: datetime, until: str | None, duration: str | None) -> datetime:
    if until and duration:
        raise usage("give --for or --until, not both")
    if until:
        return parse_time(until, "--until")
    if duration:
        return start + parse_duration(duration, "--for")
    raise usage("say how long: --for 1h or --until 2026-03-01T18:00")


@cli.group("silence")
def silence() -> None:
    """Hold paging for matching incidents for a while (alerts are still stored)."""


@silence.command("add")
@click.option("--source", "sources", multiple=True, help="only these sources")
@click.option("--type", "types", multiple=True, help="only these types")
@click.option("--severity", "severities", multiple=True, help="only these severities")
@click.option("--matcher", "labels", multiple=True, help="label key=value (repeatable)")
@click.option("--for", "duration", default=None, help="how long: 30m, 1h, 2d")
@click.option("--until", default=None, help="or until when")
@click.option("--start", default=None, help="when it starts; default now")
@click.option("--comment", required=True, help="why: the next person on call reads it")
@output_option
@connection_options
@pass_session
def silence_add(
    session: Session,
    sources: tuple[str, ...],
    types: tuple[str, ...],
    severities: tuple[str, ...],
    labels: tuple[str, ...],
    duration: str | None,
    until: str | None,
    start: str | None,
    comment: str,
    output: str,
) -> None:
    """Silence incidents matching every matcher given."""
    matchers = paging_pb2.SilenceMatchers(
        sources=_split(sources),
        types=parse_enums(types, TYPE, "--type"),
        severities=parse_enums(severities, SEVERITY, "--severity"),
        labels=parse_pairs(labels, "--matcher"),
    )
    if not (matchers.sources or matchers.types or matchers.severities or matchers.labels):
        raise usage("give at least one of --source, --type, --severity, --matcher")
    begin = parse_time(start, "--start") if start else datetime.now(UTC)
    stored = paging_pb2.Silence(
        matchers=matchers,
        end_time=timestamp_of(_end(begin, until, duration)),
        created_by=session.actor(),
        comment=comment,
    )
    if start:
        stored.start_time.CopyFrom(timestamp_of(begin))
    server = session.server()
    made = server.call(
        server.paging.CreateSilence, paging_pb2.CreateSilenceRequest(silence=stored)
    ).silence
    if output != "table":
        emit_data(made, output)
        return
    console().print(
        f"silence {made.id} {short_name(made.state, SILENCE_STATE)} until "
        f"{absolute(made.end_time)} ({relative(made.end_time)}): {_matchers(made.matchers)}"
    )


@silence.command("ls")
@click.option("--all", "everything", is_flag=True, help="ended ones too")
@output_option
@connection_options
@pass_session
def silence_ls(session: Session, everything: bool, output: str) -> None:
    """Active and pending silences, newest first."""
    server = session.server()
    found: list[paging_pb2.Silence] = []
    token = ""
    while True:
        page = server.call(
            server.paging.ListSilences,
            paging_pb2.ListSilencesRequest(
                include_expired=everything, page_size=100, page_token=token
            ),
        )
        found.extend(page.silences)
        token = page.next_page_token
        if not token:
            break
    if output != "table":
        emit_data(paging_pb2.ListSilencesResponse(silences=found), output)
        return
    out = console()
    if not found:
        out.print("no silences")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "STATE", "MATCHES", "ENDS", "BY", "COMMENT"):
        table.add_column(column, no_wrap=column not in ("COMMENT", "MATCHES"))
    for s in found:
        table.add_row(
            s.id,
            short_name(s.state, SILENCE_STATE),
            _matchers(s.matchers),
            relative(s.end_time),
            s.created_by + (f" (ended by {s.expired_by})" if s.expired_by else ""),
            s.comment,
        )
    out.print(table)


@silence.command("expire")
@click.argument("silence_ids", metavar="ID...", nargs=-1, required=True)
@output_option
@connection_options
@pass_session
def silence_expire(session: Session, silence_ids: tuple[str, ...], output: str) -> None:
    """End silences now; what they held starts being paged."""
    server = session.server()
    for silence_id in silence_ids:
        ended = server.call(
            server.paging.ExpireSilence,
            paging_pb2.ExpireSilenceRequest(id=silence_id, actor=session.actor()),
        ).silence
        if output != "table":
            emit_data(ended, output)
        else:
            console().print(f"silence {ended.id} expired")


@cli.command("oncall")
@click.argument("schedules", metavar="[SCHEDULE]...", nargs=-1)
@click.option("--at", "at", default=None, help="when: ISO time, +8h, now")
@output_option
@connection_options
@pass_session
def oncall(session: Session, schedules: tuple[str, ...], at: str | None, output: str) -> None:
    """Who is on call now (or --at a time), until when, and why."""
    names = list(schedules) or (
        [session.settings().schedule] if session.settings().schedule else []
    )
    if not names:
        raise usage("name a schedule (or set IMCTL_SCHEDULE, or `schedule` in the context)")
    server = session.server()
    request = paging_pb2.GetOnCallRequest()
    if at:
        request.time.CopyFrom(timestamp_of(parse_time(at, "--at")))
    answers = []
    for name in names:
        request.schedule_id = name
        answers.append(server.call(server.paging.GetOnCall, request))
    if output != "table":
        for answer in answers:
            emit_data(answer, output)
        return
    out = console()
    for a in answers:
        who = f"{a.user_id} ({a.user_name})" if a.user_name else (a.user_id or "nobody")
        why = (
            f"override {a.override_id}"
            if a.override_id
            else (f"layer {a.layer}" if a.layer else "")
        )
        out.print(
            Text.assemble(
                (a.schedule_id, "bold"),
                f": {who} until {absolute(a.end_time)} ({relative(a.end_time)})",
                (f", {why}" if why else "", "dim"),
            )
        )


@cli.group("override")
def override() -> None:
    """Someone covers a schedule for a while ("bob covers for alice tonight")."""


@override.command("add")
@click.option("--schedule", required=True)
@click.option("--user", required=True, help="who covers")
@click.option("--start", default=None, help="when it starts; default now")
@click.option("--for", "duration", default=None, help="how long: 8h")
@click.option("--until", default=None, help="or until when")
@click.option("--reason", default="")
@output_option
@connection_options
@pass_session
def override_add(
    session: Session,
    schedule: str,
    user: str,
    start: str | None,
    duration: str | None,
    until: str | None,
    reason: str,
    output: str,
) -> None:
    """Make USER on call for SCHEDULE for a span of time."""
    begin = parse_time(start, "--start") if start else datetime.now(UTC)
    made = (
        session.server()
        .call(
            session.server().paging.CreateOverride,
            paging_pb2.CreateOverrideRequest(
                override=paging_pb2.Override(
                    schedule_id=schedule,
                    user_id=user,
                    start_time=timestamp_of(begin),
                    end_time=timestamp_of(_end(begin, until, duration)),
                    created_by=session.actor(),
                    reason=reason,
                )
            ),
        )
        .override
    )
    if output != "table":
        emit_data(made, output)
        return
    console().print(
        f"override {made.id}: {made.user_id} covers {made.schedule_id} from "
        f"{absolute(made.start_time)} until {absolute(made.end_time)}"
    )


@override.command("ls")
@click.option("--schedule", default="")
@click.option("--all", "everything", is_flag=True, help="ended ones too")
@output_option
@connection_options
@pass_session
def override_ls(session: Session, schedule: str, everything: bool, output: str) -> None:
    """Overrides not yet ended, soonest first."""
    server = session.server()
    page = server.call(
        server.paging.ListOverrides,
        paging_pb2.ListOverridesRequest(
            schedule_id=schedule, include_ended=everything, page_size=100
        ),
    )
    if output != "table":
        emit_data(page, output)
        return
    out = console()
    if not page.overrides:
        out.print("no overrides")
    for o in page.overrides:
        out.print(
            f"{o.id}  {o.schedule_id}: {o.user_id} from {both(o.start_time)} until "
            f"{absolute(o.end_time)}" + (f" — {o.reason}" if o.reason else "")
        )


@override.command("rm")
@click.argument("override_id", metavar="ID")
@connection_options
@pass_session
def override_rm(session: Session, override_id: str) -> None:
    """Delete an override."""
    server = session.server()
    server.call(server.paging.DeleteOverride, paging_pb2.DeleteOverrideRequest(id=override_id))
    console().print(f"override {override_id} deleted")


@cli.group("route")
def route() -> None:
    """Routes from the paging configuration."""


@route.command("test")
@click.option("--source", required=True)
@click.option("--severity", required=True, help="P0..P4")
@click.option("--type", "kind", default="application", show_default=True)
@click.option("--label", "labels", multiple=True, help="key=value (repeatable)")
@click.option("--at", "at", default=None, help="when: ISO time, +8h, now")
@output_option
@connection_options
@pass_session
def route_test(
    session: Session,
    source: str,
    severity: str,
    kind: str,
    labels: tuple[str, ...],
    at: str | None,
    output: str,
) -> None:
    """A dry run: which route, policy and silences apply, and who would be paged when."""
    request = paging_pb2.TestRouteRequest(
        source=source,
        type=parse_enum(kind, TYPE, "--type"),
        severity=parse_enum(severity, SEVERITY, "--severity"),
        labels=parse_pairs(labels, "--label"),
    )
    if at:
        request.time.CopyFrom(timestamp_of(parse_time(at, "--at")))
    server = session.server()
    plan = server.call(server.paging.TestRoute, request)
    if output != "table":
        emit_data(plan, output)
        return
    out = console()
    if not plan.matched:
        out.print("no route matches: such an alert pages nobody")
        return
    timeout = _duration(plan.ack_timeout)
    out.print(
        f"route {plan.route} -> policy {plan.policy_id}"
        + (f" (acknowledge within {timeout})" if timeout else "")
    )
    for s in plan.silences:
        out.print(
            Text(
                f"held by silence {s.id} until {absolute(s.end_time)}: {s.comment}", style="yellow"
            )
        )
    for level in plan.levels:
        out.print(
            Text(
                f"level {level.level}, round {level.round}: {both(level.notify_time)}", style="bold"
            )
        )
        for d in level.deliveries:
            target = f"{short_name(d.target_kind, TARGET_KIND)} {d.target_id}"
            if d.problem:
                out.print(Text(f"  {target}: {d.problem}", style="red"))
            elif d.target_kind == paging_pb2.TARGET_KIND_ACTION:
                out.print(f"  {target}: a request to webhook {d.channel_id}")
            else:
                who = f"{d.user_id} " if d.user_id else ""
                out.print(f"  {target}: {who}via {d.channel_id} ({d.recipient})")


def _duration(duration: Duration) -> str:
    if not duration.seconds:
        return ""
    return span(duration.ToTimedelta())
