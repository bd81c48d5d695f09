"""`make bench` rows for PostgreSQL: one replica and two replicas on one database.

The same load generators as the SQLite rows, spread evenly over the
replicas with the same total concurrency, so the rows compare the backend
and show what a second replica adds on this machine. Skipped (with a row
saying why) where no PostgreSQL is reachable.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import grpc
import psycopg

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_ingestion_service_pb2_grpc as ingestion_grpc
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc
from incident_manager.adapters.postgres import PostgresStorage
from incident_manager.adapters.sql.rows import INCIDENT_COLUMNS, column_list
from tests.benchmark.run import (
    MIXES,
    CpuMeter,
    Only,
    Process,
    Row,
    alert,
    batch_load,
    channel,
    closed_loop,
    our_server,
    row,
    unary_load,
)
from tests.support.postgres import fresh_database, unreachable_reason

Load = Callable[[int, str, int, int], Awaitable[tuple[float, list[float]]]]
"""(replica index, address, share of the total, share of the concurrency) -> (rate, latencies)."""


@contextmanager
def replicas_on(url: str, count: int) -> Iterator[list[Process]]:
    servers = [our_server(url) for _ in range(count)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def spread(
    servers: list[Process], total: int, concurrency: int, load: Load
) -> tuple[float, list[float]]:
    """Run `load` on every replica at once, each with its share; the rate is over all."""
    share, workers = total // len(servers), max(1, concurrency // len(servers))
    began = time.perf_counter()
    results = await asyncio.gather(
        *(load(index, s.address, share, workers) for index, s in enumerate(servers))
    )
    elapsed = time.perf_counter() - began
    return share * len(servers) / elapsed, [x for _, latencies in results for x in latencies]


async def populate(url: str, count: int) -> None:
    """`count` synthetic incidents copied straight into the database (as for SQLite)."""
    await PostgresStorage(url).close()  # creates the schema
    rng = random.Random(7)
    base = 1_700_000_000_000_000
    with psycopg.connect(url) as conn:
        with conn.cursor() as cursor:
            copy_sql = f"COPY incidents ({column_list(INCIDENT_COLUMNS)}) FROM STDIN"
            with cursor.copy(copy_sql.encode()) as copy:
                for i in range(count):
                    copy.write_row(
                        (
                            f"inc_{i:024x}", f"synthetic incident {i}", "", rng.randint(1, 5),
                            rng.randint(1, 7), 1 if rng.random() < 0.7 else 5, f"source-{i % 20}",
                            "[]", "{}", '["alice"]' if i % 10 == 0 else "[]", f"{i:064x}", 1,
                            base + i * 1000, base + i * 1000, None, 1, 1, 0, base + i * 1000,
                            "", None,
                        )
                    )  # fmt: skip
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE incidents")  # as autovacuum would have by now


def series(replica: int, first: int, distinct_every: int) -> Callable[[int], alert_pb2.Alert]:
    """Alert i for one replica: ids of its own, fingerprints shared with the other replicas."""

    def make(i: int) -> alert_pb2.Alert:
        one = alert(first + i, distinct_every=distinct_every)
        one.id = f"{one.id}-r{replica}"
        return one

    return make


def unary(first: int, distinct_every: int) -> Load:
    return lambda replica, address, total, workers: unary_load(
        address, series(replica, first, distinct_every), total, workers
    )


def batches(first: int, distinct_every: int) -> Load:
    return lambda replica, address, total, workers: batch_load(
        address, series(replica, first, distinct_every), total, concurrency=workers
    )


async def first_pages(
    _replica: int, address: str, total: int, concurrency: int
) -> tuple[float, list[float]]:
    """The filtered first page of ListIncidents, `total` times from `concurrency` clients."""
    request = service_pb2.ListIncidentsRequest(
        severities=[incident_pb2.SEVERITY_P0],
        states=[incident_pb2.INCIDENT_STATE_DETECTED],
        page_size=50,
    )
    async with channel(address) as ch:
        stub = service_grpc.IncidentServiceStub(ch)
        return await closed_loop(total, concurrency, lambda _: stub.ListIncidents(request))


async def cross_replica(
    writer: str, follower: str, seconds: float, rate: int, first_id: int
) -> list[float]:
    """Seconds from SubmitAlert on `writer` to the event on a StreamIncidents of `follower`."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    async with channel(writer) as wch, channel(follower) as fch:
        ingestion = ingestion_grpc.AlertIngestionServiceStub(wch)
        stream = service_grpc.IncidentServiceStub(fch).StreamIncidents(
            service_pb2.StreamIncidentsRequest()
        )

        async def follow() -> None:
            try:
                async for response in stream:
                    alert_id = response.event.event.details.get("alert_id", "")
                    if alert_id in sent:
                        latencies.append(time.perf_counter() - sent[alert_id])
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    raise

        following = asyncio.ensure_future(follow())
        await asyncio.sleep(1.0)  # the subscription is registered
        began = time.perf_counter()
        calls = []
        for i in range(int(seconds * rate)):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            one = alert(first_id + i)  # every alert opens an incident: one CREATED event
            sent[one.id] = time.perf_counter()
            calls.append(
                asyncio.ensure_future(
                    ingestion.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=one))
                )
            )
        await asyncio.gather(*calls)
        await asyncio.sleep(1.0)
        stream.cancel()
        await asyncio.gather(following, return_exceptions=True)
    return latencies


async def postgres_rows(n: dict[str, int], only: Only | None = None) -> list[Row]:
    """The PostgreSQL rows; the CPU column sums every replica (PostgreSQL's own is not in it)."""
    only = only or Only()
    reason = unreachable_reason()
    rows: list[Row] = []
    for count in (1, 2):
        label = f"PostgreSQL, {count} replica{'s' if count > 1 else ''}"
        listing = (
            f"{label}: ListIncidents first page, filtered, "
            f"{n['list_incidents']:,} stored, 8 clients"
        )
        unary_names = [f"{label}: SubmitAlert, {mix}" for mix, _ in MIXES]
        batch_names = [f"{label}: BatchSubmitAlerts x500, {mix}" for mix, _ in MIXES]
        cross_name = "PostgreSQL, 2 replicas: SubmitAlert on A, event on B (StreamIncidents)"
        ingest = [*unary_names, *batch_names, *([cross_name] if count == 2 else [])]
        if not only(*ingest, listing):
            continue
        if reason is not None:
            return [Row(f"PostgreSQL rows skipped: {reason}", None, "", None, None, None)]
        first = 1_000_000_000 * (count + 1)
        if only(*ingest):
            with fresh_database("im_bench") as url, replicas_on(url, count) as servers:
                for name, (_, every), offset in zip(unary_names, MIXES, (0, 1), strict=True):
                    if only(name):
                        meter = CpuMeter(*servers)
                        load = unary(first + offset * 10**8, every)
                        rate, lat = await spread(servers, n["unary"], 64, load)
                        rows.append(row(name, rate, "alerts/s", lat, None, meter.per(n["unary"])))
                for name, (_, every), offset in zip(batch_names, MIXES, (2, 3), strict=True):
                    if only(name):
                        meter = CpuMeter(*servers)
                        load = batches(first + offset * 10**8, every)
                        rate, lat = await spread(servers, n["batch"], 4, load)
                        rss = max(s.peak_rss_mb() for s in servers)
                        rows.append(row(name, rate, "alerts/s", lat, rss, meter.per(n["batch"])))
                if count == 2 and only(cross_name):
                    lat = await cross_replica(
                        servers[0].address, servers[1].address, n["fanout_seconds"], 100, first
                    )
                    rate = len(lat) / n["fanout_seconds"]
                    rows.append(row(cross_name, rate, "events/s", lat, None))
        if only(listing):
            with fresh_database("im_bench") as url:
                await populate(url, n["list_incidents"])
                with replicas_on(url, count) as servers:
                    rate, lat = await spread(servers, 2000, 8, first_pages)
                    rows.append(row(listing, rate, "calls/s", lat, None))
    return rows
