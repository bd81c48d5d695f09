"""`make bench`: the real server and a bare grpc.aio server, driven side by side.

Both run as their own processes on 127.0.0.1; the same load generators drive
both in the same run, so the ratio column is meaningful on a noisy machine.
Unary calls are driven by h2load (a C client) where the request can be the
same every time, and by a Python grpc.aio client where every alert must
differ; streams and batches by the Python client.

    python -m tests.benchmark.run [--quick] [--only REGEX] [--json FILE]

Every ingestion row also says how much CPU the server process spent per
alert (per call or message on the bare rows): user + system time from
/proc/PID/stat, read just before and just after the load, summed over the
replicas where there are several.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc
from incident_manager.adapters.sql.rows import INCIDENT_COLUMNS, column_list
from incident_manager.adapters.sqlite import SqliteStorage
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
TICKS = os.sysconf("SC_CLK_TCK")
SIZES = {
    "full": {
        "unary": 20_000,
        "h2load": 50_000,
        "batch": 200_000,
        "stream": 10_000,
        "fanout_seconds": 10,
        "list_incidents": 1_000_000,
        "rss_alerts": 1_000_000,
        "page_storm": 10_000,
        "page_steady_seconds": 30,
        "idle_incidents": 100_000,
        "idle_seconds": 20,
        "paging_ingest": 20_000,
    },
    "quick": {
        "unary": 3_000,
        "h2load": 10_000,
        "batch": 20_000,
        "stream": 2_000,
        "fanout_seconds": 4,
        "list_incidents": 100_000,
        "rss_alerts": 100_000,
        "page_storm": 3_000,
        "page_steady_seconds": 10,
        "idle_incidents": 20_000,
        "idle_seconds": 10,
        "paging_ingest": 5_000,
    },
}


@dataclass
class Row:
    scenario: str
    rate: float | None
    unit: str
    p50_ms: float | None
    p99_ms: float | None
    rss_mb: float | None
    ratio: float | None = None
    shown: str | None = None
    """Shown in the rate column instead of `rate` (a CPU share needs decimals)."""
    cpu_us: float | None = None
    """Server CPU (user + system) per alert, call or message over the load, in µs."""


class Only:
    """`--only REGEX`: which scenarios run. A name matches if the regex is found in it."""

    def __init__(self, pattern: str | None = None) -> None:
        self.regex = re.compile(pattern) if pattern else None

    def __call__(self, *names: str) -> bool:
        """True if any of `names` is wanted: a reference row runs for the rows it serves."""
        return self.regex is None or any(self.regex.search(name) for name in names)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads, live or ended) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After the name: state is field 3, utime 14 and stime 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / TICKS


class CpuMeter:
    """The CPU the given server processes spend from now until `per` is called."""

    def __init__(self, *servers: Process) -> None:
        self.pids = [s.popen.pid for s in servers]
        self.began = self._now()

    def _now(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def per(self, count: int) -> float:
        """Microseconds of CPU per unit of work, for `count` units since the start."""
        return (self._now() - self.began) * 1e6 / count


class Process:
    """A server process on a free loopback port."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.popen = subprocess.Popen(
            [sys.executable, *argv, "--listen", self.address],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Several servers run at once: none may take the metrics port.
            env={**os.environ, "INCIDENT_MANAGER_METRICS_LISTEN": "off", **(env or {})},
        )
        channel = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(channel).result(timeout=30)
        channel.close()

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()


def our_server(database: Path | str, *args: str, env: Mapping[str, str] | None = None) -> Process:
    return Process(
        "incident-manager",
        ["-m", "incident_manager", "--database", str(database), "--log-level", "WARNING", *args],
        env,
    )


def bare_server() -> Process:
    return Process("bare", ["-m", "tests.benchmark.bare"])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def alert(i: int, *, distinct_every: int = 1, source: str = "llm-sentinel") -> alert_pb2.Alert:
    """Alert number i; `distinct_every` alerts share a fingerprint (10 = 90% duplicates)."""
    return alert_pb2.Alert(
        id=f"bench-{i}",
        source=source,
        title=f"p99 latency above threshold on endpoint {i // distinct_every}",
        severity=incident_pb2.SEVERITY_P2,
        type=incident_pb2.INCIDENT_TYPE_PERFORMANCE,
        affected_resources=["model/gpt-4o"],
        labels={"region": "eu-west-1"},
    )


def alerts_from(first: int, distinct_every: int = 1) -> Callable[[int], alert_pb2.Alert]:
    """Alert i of a series starting at id `first`, so no two scenarios share alert ids."""
    return lambda i: alert(first + i, distinct_every=distinct_every)


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)


async def closed_loop(
    total: int, concurrency: int, call: Callable[[int], Awaitable[object]]
) -> tuple[float, list[float]]:
    """`call(i)` for i below `total`, from `concurrency` workers: calls/s and latencies."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            began = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - began), latencies


async def unary_load(
    address: str, make: Callable[[int], alert_pb2.Alert], total: int, concurrency: int = 64
) -> tuple[float, list[float]]:
    async with channel(address) as ch:
        stub = ingestion_grpc.AlertIngestionServiceStub(ch)
        return await closed_loop(
            total,
            concurrency,
            lambda i: stub.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=make(i))),
        )


async def batch_load(
    address: str,
    make: Callable[[int], alert_pb2.Alert],
    total: int,
    batch: int = 500,
    concurrency: int = 4,
) -> tuple[float, list[float]]:
    requests = [
        ingestion_pb2.BatchSubmitAlertsRequest(
            alerts=[make(i) for i in range(start, min(start + batch, total))]
        )
        for start in range(0, total, batch)
    ]
    latencies: list[float] = []
    pending = iter(requests)
    async with channel(address) as ch:
        stub = ingestion_grpc.AlertIngestionServiceStub(ch)

        async def worker() -> None:
            for request in pending:
                began = time.perf_counter()
                response = await stub.BatchSubmitAlerts(request)
                latencies.append(time.perf_counter() - began)
                assert len(response.acks) == len(request.alerts)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return total / elapsed, latencies


async def stream_load(
    address: str, make: Callable[[int], alert_pb2.Alert], per_stream: int, streams: int = 4
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    async with channel(address) as ch:
        stub = ingestion_grpc.AlertIngestionServiceStub(ch)

        async def one(offset: int) -> None:
            sent: list[float] = []

            async def requests() -> AsyncIterator[ingestion_pb2.StreamAlertsRequest]:
                for i in range(per_stream):
                    sent.append(time.perf_counter())
                    yield ingestion_pb2.StreamAlertsRequest(alert=make(offset + i))

            received = 0
            async for _ in stub.StreamAlerts(requests()):
                latencies.append(time.perf_counter() - sent[received])
                received += 1

        began = time.perf_counter()
        await asyncio.gather(*(one(s * 10_000_000) for s in range(streams)))
        elapsed = time.perf_counter() - began
    return streams * per_stream / elapsed, latencies


def h2load(address: str, method: str, message: bytes, total: int) -> tuple[float, list[float]]:
    """Unary calls from h2load (8 connections x 16 streams), all with the same body."""
    with tempfile.TemporaryDirectory() as folder:
        body = Path(folder) / "body"
        body.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
        log = Path(folder) / "log"
        began = time.perf_counter()
        subprocess.run(
            [
                "h2load", "-n", str(total), "-c", "8", "-m", "16",
                "-H", "content-type: application/grpc", "-H", "te: trailers",
                "-d", str(body), f"--log-file={log}", f"http://{address}{method}",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        elapsed = time.perf_counter() - began
        rows = [line.split("\t") for line in log.read_text().splitlines()]
    failed = sum(1 for r in rows if r[1] != "200")
    if failed:
        raise RuntimeError(f"h2load: {failed} of {len(rows)} calls failed")
    return total / elapsed, [int(r[2]) / 1e6 for r in rows]


async def fanout(
    address: str, seconds: float, rate: int, subscribers: int, filtered: bool, first_id: int
) -> tuple[float, list[float], int, int]:
    """Delivery latency of StreamIncidents while alerts arrive at `rate` per second.

    Filtered: each subscriber follows one of `subscribers` sources, so every
    event goes to one subscriber. Unfiltered: every event goes to all.
    """
    latencies: list[float] = []
    ended_early = 0
    async with channel(address) as ch:
        incidents = service_grpc.IncidentServiceStub(ch)
        ingestion = ingestion_grpc.AlertIngestionServiceStub(ch)
        calls = [
            incidents.StreamIncidents(
                service_pb2.StreamIncidentsRequest(sources=[f"src-{n}"] if filtered else [])
            )
            for n in range(subscribers)
        ]

        async def follow(call: object) -> None:
            nonlocal ended_early
            try:
                async for response in call:  # type: ignore[attr-defined]
                    event_time = response.event.event.create_time
                    sent = event_time.seconds + event_time.nanos / 1e9
                    latencies.append(time.time() - sent)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    ended_early += 1

        async def submit(request: ingestion_pb2.SubmitAlertRequest) -> int:
            try:
                await ingestion.SubmitAlert(request)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                return 0
            return 1

        followers = [asyncio.ensure_future(follow(c)) for c in calls]
        await asyncio.sleep(1.0)  # let every subscription register
        total = int(seconds * rate)
        began = time.perf_counter()
        submits = []
        for i in range(total):
            due = began + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            source = f"src-{i % subscribers}"
            request = ingestion_pb2.SubmitAlertRequest(alert=alert(first_id + i, source=source))
            submits.append(asyncio.ensure_future(submit(request)))
        stored = sum(await asyncio.gather(*submits))
        refused = total - stored
        # Alerts stored per second, until the last answer: below the offered
        # rate when the server cannot keep up (and its limits refuse the excess).
        achieved = stored / (time.perf_counter() - began)
        await asyncio.sleep(2.0)
        for call in calls:
            call.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    return achieved, latencies, ended_early, refused


async def populate(database: Path, count: int) -> None:
    """`count` synthetic incidents written straight into a fresh database."""
    storage = SqliteStorage(database)
    await storage.close()
    rng = random.Random(7)
    base = 1_700_000_000_000_000
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA synchronous = OFF")
    rows = (
        (
            f"inc_{i:024x}", f"synthetic incident {i}", "", rng.randint(1, 5), rng.randint(1, 7),
            1 if rng.random() < 0.7 else 5, f"source-{i % 20}", "[]", "{}",
            '["alice"]' if i % 10 == 0 else "[]", f"{i:064x}", 1, base + i * 1000,
            base + i * 1000, None, 1, 1, 0, base + i * 1000, "", None,
        )
        for i in range(count)
    )  # fmt: skip
    conn.executemany(
        f"INSERT INTO incidents ({column_list(INCIDENT_COLUMNS)}) "
        f"VALUES ({', '.join('?' * len(INCIDENT_COLUMNS))})",
        rows,
    )
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


async def list_load(address: str) -> tuple[list[float], list[float], float]:
    """First-page latency (repeated), and the last 100 pages of a walk of up to 1000."""
    request = service_pb2.ListIncidentsRequest(
        severities=[incident_pb2.SEVERITY_P0],
        states=[incident_pb2.INCIDENT_STATE_DETECTED],
        page_size=50,
    )
    first: list[float] = []
    deep: list[float] = []
    async with channel(address) as ch:
        stub = service_grpc.IncidentServiceStub(ch)
        for _ in range(200):
            began = time.perf_counter()
            await stub.ListIncidents(request)
            first.append(time.perf_counter() - began)
        walk = service_pb2.ListIncidentsRequest()
        walk.CopyFrom(request)
        walk_began = time.perf_counter()
        walked: list[float] = []
        for _ in range(1000):
            began = time.perf_counter()
            response = await stub.ListIncidents(walk)
            walked.append(time.perf_counter() - began)
            if not response.next_page_token:
                break
            walk.page_token = response.next_page_token
        deep = walked[-100:]
        walk_seconds = time.perf_counter() - walk_began
    return first, deep, walk_seconds


def ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


def row(
    scenario: str,
    rate: float,
    unit: str,
    latencies: list[float],
    rss: float | None,
    cpu_us: float | None = None,
) -> Row:
    return Row(scenario, rate, unit, ms(latencies, 0.5), ms(latencies, 0.99), rss, cpu_us=cpu_us)


SUBMIT = "/incident_manager.v1.AlertIngestionService/SubmitAlert"
H2LOAD_ROWS = ("bare: unary, h2load", "SubmitAlert, h2load, one alert retried")
UNARY_ROWS = ("bare: unary, Python client", "SubmitAlert, all new", "SubmitAlert, 90% duplicates")
BATCH_ROWS = (
    "bare: batch of 500",
    "BatchSubmitAlerts x500, all new",
    "BatchSubmitAlerts x500, 90% duplicates",
)
STREAM_ROWS = ("bare: 4 bidi streams", "StreamAlerts, 4 streams, 90% dup")
FANOUT_ROWS = (
    "StreamIncidents, 100 subscribers, 1000 events/s, each follows 1 source",
    "StreamIncidents, 100 subscribers, 100 events/s, all follow everything",
)
MIXES = (("all new", 1), ("90% duplicates", 10))


async def ingestion_rows(n: dict[str, int], workdir: Path, only: Only) -> list[Row]:
    """Our server and the bare one, side by side: unary, h2load, batches, streams, fan-out.

    A bare row runs when it or a row compared with it is wanted.
    """
    groups = (*H2LOAD_ROWS, *UNARY_ROWS, *BATCH_ROWS, *STREAM_ROWS)
    if not only(*groups, *FANOUT_ROWS):
        return []
    rows: list[Row] = []
    ours = our_server(workdir / "ingest.db")
    bare = bare_server() if only(*groups) else None
    try:
        body = ingestion_pb2.SubmitAlertRequest(alert=alert(0)).SerializeToString()
        if bare and only(*H2LOAD_ROWS) and shutil.which("h2load"):
            meter = CpuMeter(bare)
            rate, lat = h2load(bare.address, SUBMIT, body, n["h2load"])
            rss = bare.peak_rss_mb()
            rows.append(row(H2LOAD_ROWS[0], rate, "calls/s", lat, rss, meter.per(n["h2load"])))
            bare_h2 = rate
            if only(H2LOAD_ROWS[1]):
                meter = CpuMeter(ours)
                rate, lat = h2load(ours.address, SUBMIT, body, n["h2load"])
                rows.append(row(H2LOAD_ROWS[1], rate, "calls/s", lat, None, meter.per(n["h2load"])))
                rows[-1].ratio = rate / bare_h2
        if bare and only(*UNARY_ROWS):
            meter = CpuMeter(bare)
            rate, lat = await unary_load(bare.address, alert, n["unary"])
            rows.append(row(UNARY_ROWS[0], rate, "calls/s", lat, None, meter.per(n["unary"])))
            bare_unary = rate
            for name, (_, every) in zip(UNARY_ROWS[1:], MIXES, strict=True):
                if not only(name):
                    continue
                make = alerts_from(1_000_000 * every, every)
                meter = CpuMeter(ours)
                rate, lat = await unary_load(ours.address, make, n["unary"])
                rows.append(row(name, rate, "alerts/s", lat, None, meter.per(n["unary"])))
                rows[-1].ratio = rate / bare_unary

        if bare and only(*BATCH_ROWS):
            meter = CpuMeter(bare)
            rate, lat = await batch_load(bare.address, alert, n["batch"])
            rows.append(row(BATCH_ROWS[0], rate, "alerts/s", lat, None, meter.per(n["batch"])))
            bare_batch = rate
            for name, (_, every) in zip(BATCH_ROWS[1:], MIXES, strict=True):
                if not only(name):
                    continue
                make = alerts_from(50_000_000 * every, every)
                meter = CpuMeter(ours)
                rate, lat = await batch_load(ours.address, make, n["batch"])
                rows.append(row(name, rate, "alerts/s", lat, None, meter.per(n["batch"])))
                rows[-1].ratio = rate / bare_batch

        if bare and only(*STREAM_ROWS):
            sent = 4 * n["stream"]
            meter = CpuMeter(bare)
            rate, lat = await stream_load(bare.address, alert, n["stream"])
            rows.append(row(STREAM_ROWS[0], rate, "msgs/s", lat, None, meter.per(sent)))
            bare_stream = rate
            if only(STREAM_ROWS[1]):
                meter = CpuMeter(ours)
                make = alerts_from(300_000_000, 10)
                rate, lat = await stream_load(ours.address, make, n["stream"])
                rows.append(row(STREAM_ROWS[1], rate, "alerts/s", lat, None, meter.per(sent)))
                rows[-1].ratio = rate / bare_stream

        fanouts = ((True, 1000, 10**8), (False, 100, 2 * 10**8))
        for name, (filtered, rate_target, first_id) in zip(FANOUT_ROWS, fanouts, strict=True):
            if not only(name):
                continue
            meter = CpuMeter(ours)
            achieved, lat, ended, refused = await fanout(
                ours.address, n["fanout_seconds"], rate_target, 100, filtered, first_id
            )
            stored = int(n["fanout_seconds"] * rate_target) - refused
            label = (
                name
                + (f", {ended} ended as too slow" if ended else "")
                + (f", {refused} alerts refused by limits" if refused else "")
            )
            cpu = meter.per(max(stored, 1))
            rows.append(row(label, achieved, "events/s", lat, ours.peak_rss_mb(), cpu))
        rows.append(
            Row("incident-manager peak RSS so far", None, "", None, None, ours.peak_rss_mb())
        )
    finally:
        ours.stop()
        if bare:
            bare.stop()
    return rows


async def listing_rows(n: dict[str, int], workdir: Path, only: Only) -> list[Row]:
    count = n["list_incidents"]
    names = (
        f"ListIncidents first page, filtered, {count:,} stored",
        "ListIncidents, last 100 of up to 1000 pages walked",
    )
    if not only(*names):
        return []
    listing_db = workdir / "listing.db"
    await populate(listing_db, count)
    lister = our_server(listing_db)
    try:
        first, deep, _ = await list_load(lister.address)
        return [
            row(names[0], 0, "", first, None),
            row(names[1], 0, "", deep, lister.peak_rss_mb()),
        ]
    finally:
        lister.stop()


async def memory_rows(n: dict[str, int], workdir: Path, only: Only) -> list[Row]:
    total = n["rss_alerts"]
    name = f"{total:,} alerts into 10,000 incidents (batches of 500)"
    if not only(name):
        return []
    memory = our_server(workdir / "memory.db")
    try:
        spread = alerts_from(900_000_000, total // 10_000)
        meter = CpuMeter(memory)
        rate, lat = await batch_load(memory.address, spread, total)
        return [row(name, rate, "alerts/s", lat, memory.peak_rss_mb(), meter.per(total))]
    finally:
        memory.stop()


async def run(size: str, workdir: Path, only: Only) -> list[Row]:
    n = SIZES[size]
    # Imported here: these modules build on this one's load generators.
    from tests.benchmark.paging import paging_rows
    from tests.benchmark.replicas import postgres_rows

    rows = await ingestion_rows(n, workdir, only)
    rows.extend(await listing_rows(n, workdir, only))
    rows.extend(await memory_rows(n, workdir, only))
    rows.extend(await paging_rows(n, workdir, only))
    rows.extend(await postgres_rows(n, only))
    return rows


def render(rows: list[Row]) -> str:
    header = (
        "| scenario | rate | p50 ms | p99 ms | peak RSS MB | ratio to bare | server CPU µs/alert |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rate = r.shown if r.shown is not None else f"{r.rate:,.0f} {r.unit}" if r.rate else ""
        p50 = f"{r.p50_ms:.2f}" if r.p50_ms is not None else ""
        p99 = f"{r.p99_ms:.2f}" if r.p99_ms is not None else ""
        rss = f"{r.rss_mb:.0f}" if r.rss_mb is not None else ""
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        cpu = f"{r.cpu_us:,.0f}" if r.cpu_us is not None else ""
        lines.append(f"| {r.scenario} | {rate} | {p50} | {p99} | {rss} | {ratio} | {cpu} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--only",
        metavar="REGEX",
        help="only the scenarios whose name (as in the table) the regex is found in;"
        " a bare row runs too when a row compared with it does",
    )
    parser.add_argument(
        "--postgres-only", action="store_true", help="only the PostgreSQL rows: --only PostgreSQL"
    )
    parser.add_argument(
        "--paging-only", action="store_true", help="only the paging rows: --only Paging|paging"
    )
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    pattern = args.only
    if args.postgres_only:
        pattern = "PostgreSQL"
    elif args.paging_only:
        pattern = "Paging|paging"
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="im-bench-") as folder:
        rows = asyncio.run(run(size, Path(folder), Only(pattern)))
    print(
        f"\nmachine: {os.cpu_count()} cores; sizes: {size}; took {time.perf_counter() - began:.0f}s"
    )
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))


if __name__ == "__main__":
    main()
