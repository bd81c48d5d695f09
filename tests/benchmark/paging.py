"""`make bench` rows for paging (issue 11): delivery rate, first-page delay, the idle
scheduler's CPU, and what paging costs ingestion.

Every server is its own process on a fresh SQLite file, every page goes to one
local webhook receiver process (`tests/benchmark/receiver.py`) that answers 200
at once. The paging file routes every incident to a policy with one level
notifying that webhook, at 0s (or at 24h for the idle row). Arrival times are
taken by the receiver and ack times by the client, both with `time.time()`
on this one machine.

    python -m tests.benchmark.run [--quick] --only 'Paging|paging'
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import grpc

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from tests.benchmark.run import (
    ROOT,
    CpuMeter,
    Only,
    Process,
    Row,
    alert,
    alerts_from,
    batch_load,
    channel,
    cpu_seconds,
    our_server,
    row,
)
from tests.support import free_port

SECRET_ENV = "BENCH_HOOK_SECRET"
SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtYmVuY2htYXJrLW9ubHk="
"""Pages are signed as in production; the receiver does not check them."""

BATCH = 500


def paging_file(folder: Path, hook_url: str, after: str) -> Path:
    """A paging file that pages every incident to the one webhook, `after` its opening."""
    path = folder / f"paging-{after}.yaml"
    path.write_text(
        f"""\
channels:
  - id: bench-hook
    type: webhook
    url: {hook_url}
    secret_env: {SECRET_ENV}
escalation_policies:
  - id: page-everyone
    levels:
      - after: {after}
        notify: [{{channel: bench-hook}}]
routes:
  - policy: page-everyone
"""
    )
    return path


class WebhookReceiver:
    """The receiver process, and the calls that read what it recorded."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._base = f"http://127.0.0.1:{self.port}"
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.benchmark.receiver", str(self.port)], cwd=ROOT
        )
        self.session: aiohttp.ClientSession | None = None

    async def ready(self) -> None:
        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.count()
                return
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def count(self) -> int:
        assert self.session is not None
        async with self.session.get(f"{self._base}/count") as response:
            return int(await response.json())

    async def take(self) -> list[tuple[float, str, str]]:
        """Every (arrival, webhook-id, incident id) recorded so far; the receiver forgets them."""
        assert self.session is not None
        async with self.session.post(f"{self._base}/take") as response:
            return [(float(a), str(b), str(c)) for a, b, c in await response.json()]

    async def wait_for(self, expected: int, within: float) -> int:
        """Poll until `expected` pages arrived or `within` seconds passed; the count."""
        deadline = time.monotonic() + within
        got = await self.count()
        while got < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            got = await self.count()
        return got

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        self.popen.terminate()
        self.popen.wait(timeout=10)


def paging_server(database: Path, config: Path) -> Process:
    return our_server(database, "--paging-config", str(config), env={SECRET_ENV: SECRET})


def delays(acked: dict[str, float], pages: Iterable[tuple[float, str, str]]) -> list[float]:
    """Per incident: its first page's arrival minus the client's ack time."""
    first: dict[str, float] = {}
    for arrival, _, incident_id in pages:
        if incident_id in acked and arrival < first.get(incident_id, float("inf")):
            first[incident_id] = arrival
    return [arrival - acked[incident_id] for incident_id, arrival in first.items()]


def pages_label(total: int, pages: list[tuple[float, str, str]]) -> str:
    """What went wrong with the deliveries, if anything: missing and repeated pages."""
    ids = {webhook_id for _, webhook_id, _ in pages}
    notes = []
    if len(ids) < total:
        notes.append(f"{total - len(ids)} not delivered in time")
    if len(pages) > len(ids):
        notes.append(f"{len(pages) - len(ids)} repeated")
    return "".join(f", {note}" for note in notes)


async def storm(address: str, receiver: WebhookReceiver, total: int) -> Row:
    """`total` new incidents in batches of 500 (4 in flight), from first ack to last page."""
    make = alerts_from(400_000_000)
    requests = [
        ingestion_pb2.BatchSubmitAlertsRequest(
            alerts=[make(i) for i in range(start, min(start + BATCH, total))]
        )
        for start in range(0, total, BATCH)
    ]
    acked: dict[str, float] = {}
    pending = iter(requests)
    async with channel(address) as ch:
        stub = ingestion_grpc.AlertIngestionServiceStub(ch)

        async def worker() -> None:
            for request in pending:
                response = await stub.BatchSubmitAlerts(request)
                now = time.time()
                for ack in response.acks:
                    acked[ack.incident_id] = now

        began = time.time()
        await asyncio.gather(*(worker() for _ in range(4)))
        ingested = time.time() - began
    await receiver.wait_for(total, within=60 + total / 20)
    pages = await receiver.take()
    first_ack = min(acked.values())
    last_page = max((arrival for arrival, _, _ in pages), default=first_ack)
    delivered = len({webhook_id for _, webhook_id, _ in pages})
    label = (
        f"Paging: {total:,} new incidents in a storm (batches of {BATCH}, ingested in"
        f" {ingested:.1f} s), first ack to last page; p50/p99 ack to page"
        + pages_label(total, pages)
    )
    rate = delivered / (last_page - first_ack) if delivered else 0.0
    return row(label, rate, "pages/s", delays(acked, pages), None)


async def steady(address: str, receiver: WebhookReceiver, rate: int, seconds: float) -> Row:
    """New incidents at `rate` per second (SubmitAlert); delay from each ack to its page."""
    acked: dict[str, float] = {}
    refused = 0
    async with channel(address) as ch:
        stub = ingestion_grpc.AlertIngestionServiceStub(ch)

        async def submit(i: int) -> None:
            nonlocal refused
            request = ingestion_pb2.SubmitAlertRequest(alert=alert(500_000_000 + i))
            try:
                response = await stub.SubmitAlert(request)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                refused += 1
                return
            acked[response.ack.incident_id] = time.time()

        total = int(rate * seconds)
        calls = []
        began = time.perf_counter()
        for i in range(total):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(asyncio.ensure_future(submit(i)))
        await asyncio.gather(*calls)
        achieved = len(acked) / (time.perf_counter() - began)
    await receiver.wait_for(len(acked), within=30)
    pages = await receiver.take()
    label = (
        f"Paging: {rate} new incidents/s for {seconds:.0f} s (SubmitAlert), ack to first page"
        + pages_label(len(acked), pages)
        + (f", {refused} alerts refused by limits" if refused else "")
    )
    return row(label, achieved, "incidents/s", delays(acked, pages), None)


async def idle_cpu(process: Process, seconds: float) -> float:
    """The process's CPU over `seconds` of nothing to do, in % of one core."""
    before, began = cpu_seconds(process.popen.pid), time.monotonic()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds(process.popen.pid) - before) / (time.monotonic() - began)


def cpu_row(label: str, percent: float) -> Row:
    return Row(label, percent, "", None, None, None, shown=f"{percent:.2f} % of a core")


async def ingestion_on_off(
    workdir: Path, receiver: WebhookReceiver, config: Path, total: int, n: dict[str, int]
) -> list[Row]:
    """BatchSubmitAlerts of new alerts with paging off and on, in the order off, on, on, off.

    Between measurements the paging server delivers every page of the last one,
    so its sending does not slow the next measurement of the other server.
    """
    off = our_server(workdir / "paging-off.db")
    on = paging_server(workdir / "paging-on.db", config)
    try:
        results: dict[str, list[tuple[float, list[float]]]] = {"off": [], "on": []}
        cpu: dict[str, float] = {"off": 0.0, "on": 0.0}
        drains: list[float] = []
        for round_number, side in enumerate(("off", "on", "on", "off")):
            server = on if side == "on" else off
            make = alerts_from(600_000_000 + round_number * 10_000_000)
            meter = CpuMeter(server)
            results[side].append(await batch_load(server.address, make, total))
            # The load window only: the pages still being sent after it are not counted.
            cpu[side] += meter.per(2 * total)
            if side == "on":
                began = time.perf_counter()
                await receiver.wait_for(total, within=60 + total / 20)
                drains.append(time.perf_counter() - began)
                await receiver.take()
        # Rates over the two measurements of each side: total alerts / total time.
        rates = {side: 2 / sum(1 / rate for rate, _ in runs) for side, runs in results.items()}
        latencies = {side: [x for _, lat in runs for x in lat] for side, runs in results.items()}
        label = f"BatchSubmitAlerts x{BATCH}, all new, 2 x {total:,}"
        rows = [
            row(
                f"{label}, paging off",
                rates["off"],
                "alerts/s",
                latencies["off"],
                None,
                cpu["off"],
            ),
            row(
                f"{label}, paging on (every incident paged; pages still being sent"
                f" {max(drains):.0f} s after the last ack; ratio: on / off)",
                rates["on"],
                "alerts/s",
                latencies["on"],
                on.peak_rss_mb(),
                cpu["on"],
            ),
        ]
        rows[-1].ratio = rates["on"] / rates["off"]
        # The same server without paging at rest: what a process costs with no scheduler.
        await asyncio.sleep(2)
        rows.append(
            cpu_row(
                f"Server without --paging-config at rest ({n['idle_seconds']} s, for reference)",
                await idle_cpu(off, n["idle_seconds"]),
            )
        )
        return rows
    finally:
        off.stop()
        on.stop()


async def idle_scheduler(workdir: Path, config: Path, total: int, seconds: int) -> Row:
    """`total` open incidents, each with a step due in 24 h: the scheduler's CPU at rest."""
    server = paging_server(workdir / "paging-idle.db", config)
    try:
        rate, _ = await batch_load(server.address, alerts_from(700_000_000), total)
        await asyncio.sleep(3)  # the last commits' wake-ups
        percent = await idle_cpu(server, seconds)
        return cpu_row(
            f"Paging scheduler at rest: {total:,} open incidents, each with a step due in 24 h"
            f" (loaded at {rate:,.0f} alerts/s), server CPU over {seconds} s",
            percent,
        )
    finally:
        server.stop()


async def paging_rows(n: dict[str, int], workdir: Path, only: Only | None = None) -> list[Row]:
    """The paging rows, in the order of the issue's benchmark section.

    `only` is matched against the start of each label, the part known
    before the run; ingestion with paging off and on (and the server at rest
    beside it) run together.
    """
    only = only or Only()
    storm_name = f"Paging: {n['page_storm']:,} new incidents in a storm"
    steady_name = f"Paging: 200 new incidents/s for {n['page_steady_seconds']} s (SubmitAlert)"
    idle_name = f"Paging scheduler at rest: {n['idle_incidents']:,} open incidents"
    on_off_label = f"BatchSubmitAlerts x{BATCH}, all new, 2 x {n['paging_ingest']:,}"
    on_off_names = (
        f"{on_off_label}, paging off",
        f"{on_off_label}, paging on",
        "Server without --paging-config at rest",
    )
    if not only(storm_name, steady_name, idle_name, *on_off_names):
        return []
    receiver = WebhookReceiver()
    try:
        await receiver.ready()
        now = paging_file(workdir, receiver.url, "0s")
        tomorrow = paging_file(workdir, receiver.url, "24h")
        rows = []
        if only(storm_name):
            pager = paging_server(workdir / "paging-storm.db", now)
            try:
                rows.append(await storm(pager.address, receiver, n["page_storm"]))
            finally:
                pager.stop()
        if only(steady_name):
            pager = paging_server(workdir / "paging-steady.db", now)
            try:
                rows.append(await steady(pager.address, receiver, 200, n["page_steady_seconds"]))
            finally:
                pager.stop()
        if only(idle_name):
            idle = [await idle_scheduler(workdir, tomorrow, n["idle_incidents"], n["idle_seconds"])]
        else:
            idle = []
        if only(*on_off_names):
            on_off = await ingestion_on_off(workdir, receiver, now, n["paging_ingest"], n)
            return [*rows, *idle, on_off[-1], *on_off[:-1]]
        return [*rows, *idle]
    finally:
        await receiver.close()
