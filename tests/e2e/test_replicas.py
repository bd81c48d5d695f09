"""Several server processes on one PostgreSQL database, as replicas behind a load balancer.

Each test gets its own database and its own replicas (`python -m
incident_manager`). Clients spread identical and overlapping alerts over all
replicas at once, the three ways the service takes them; the database alone
must keep dedup exact and the event streams of every replica gap-free.
"""

from __future__ import annotations

import itertools
import queue
import random
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2_grpc as ingestion_grpc,
)
from generated.incident_manager.v1 import alert_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc
from tests.e2e import test_process
from tests.e2e.test_process import (
    CALL_TIMEOUT,
    Client,
    Launch,
    ServerProcess,
    free_port,
    server_environment,
)
from tests.helpers import alert
from tests.integration.postgres import fresh_database

pytestmark = pytest.mark.slow

ACKED = (alert_pb2.ACK_STATUS_ACCEPTED, alert_pb2.ACK_STATUS_DUPLICATE)

StartReplica = Callable[..., ServerProcess]
launch = test_process.launch
"""The fixture that starts server processes and kills them at the end."""
WARM_UP = 5
"""Latency samples left out at first: they include connecting the channels."""


@pytest.fixture
def database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database (skipped where no server is reachable)."""
    with fresh_database("im_e2e") as url:
        yield url


@pytest.fixture
def start_replica(launch: Launch) -> StartReplica:
    """Start replicas on a database URL (test_process's `launch` kills them at the end)."""

    def start(url: str, *, wait: bool = True) -> ServerProcess:
        address = f"127.0.0.1:{free_port()}"
        return launch(
            ["--listen", address, "--log-level", "WARNING"],
            address=address,
            environment=server_environment(
                INCIDENT_MANAGER_DATABASE=url, INCIDENT_MANAGER_METRICS_LISTEN="off"
            ),
            wait=wait,
        )

    return start


def start_replicas(start: StartReplica, url: str, count: int) -> list[ServerProcess]:
    """`count` replicas started at the same moment (they race to migrate the schema)."""
    replicas = [start(url, wait=False) for _ in range(count)]
    for replica in replicas:
        replica.wait_until_serving()
    return replicas


def send(
    stub: ingestion_grpc.AlertIngestionServiceStub, way: str, alerts: Sequence[alert_pb2.Alert]
) -> list[alert_pb2.AlertAck]:
    if way == "unary":
        return [
            stub.SubmitAlert(ingestion_pb2.SubmitAlertRequest(alert=one), timeout=CALL_TIMEOUT).ack
            for one in alerts
        ]
    if way == "batch":
        response = stub.BatchSubmitAlerts(
            ingestion_pb2.BatchSubmitAlertsRequest(alerts=alerts), timeout=CALL_TIMEOUT
        )
        return list(response.acks)
    requests = iter([ingestion_pb2.StreamAlertsRequest(alert=one) for one in alerts])
    return [r.ack for r in stub.StreamAlerts(requests, timeout=CALL_TIMEOUT)]


def storm(fingerprints: int, per_fingerprint: int, prefix: str) -> list[alert_pb2.Alert]:
    """Distinct alerts: `per_fingerprint` of them for each of `fingerprints` problems."""
    return [
        alert(
            id=f"{prefix}-{problem}-{n}",
            title=f"Refusal rate above 10% on model m{problem}",
            affected_resources=[f"model/m{problem}"],
        )
        for problem in range(fingerprints)
        for n in range(per_fingerprint)
    ]


@dataclass
class Acks:
    """Every ack the clients got, by alert id; shared by client threads."""

    by_alert: dict[str, list[alert_pb2.AlertAck]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, sent: Sequence[alert_pb2.Alert], acks: Sequence[alert_pb2.AlertAck]) -> None:
        with self.lock:
            if [a.alert_id for a in acks] != [s.id for s in sent]:
                self.failures.append(f"acks {[a.alert_id for a in acks]} for {len(sent)} alerts")
            for ack in acks:
                self.by_alert[ack.alert_id].append(ack)


def spread_over(
    replicas: Sequence[ServerProcess],
    calls: Sequence[tuple[str, list[alert_pb2.Alert]]],
    acks: Acks,
) -> None:
    """Make every call from many client threads, each call to a replica in turn."""
    channels = [grpc.insecure_channel(r.address) for r in replicas]
    stubs = [ingestion_grpc.AlertIngestionServiceStub(c) for c in channels]
    counter = itertools.count()

    def make(call: tuple[str, list[alert_pb2.Alert]]) -> None:
        way, alerts = call
        stub = stubs[next(counter) % len(stubs)]
        try:
            acks.record(alerts, send(stub, way, alerts))
        except grpc.RpcError as error:
            with acks.lock:
                acks.failures.append(f"{way}: {error.code().name} {error.details()}")

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(make, calls))
    finally:
        for channel in channels:
            channel.close()


def stored_counts(client: Client) -> dict[str, int]:
    return {i.id: i.alert_count for i in client.list_all_incidents()}


@pytest.mark.timeout(120)
def test_a_storm_over_three_replicas_makes_one_incident_per_problem_with_exact_counts(
    start_replica: StartReplica, database: str
) -> None:
    fingerprints, per_fingerprint = 8, 40
    alerts = storm(fingerprints, per_fingerprint, "storm")
    rng = random.Random(5)
    # Every alert twice (the second is a retry, possibly through another
    # replica at the same moment), shuffled, in calls of 1 to 12 alerts.
    sends = alerts + alerts
    rng.shuffle(sends)
    calls: list[tuple[str, list[alert_pb2.Alert]]] = []
    while sends:
        way = rng.choice(("unary", "batch", "stream"))
        size = 1 if way == "unary" else rng.randint(2, 12)
        calls.append((way, sends[:size]))
        sends = sends[size:]
    replicas = start_replicas(start_replica, database, 3)
    acks = Acks()

    began = time.monotonic()
    spread_over(replicas, calls, acks)
    took = time.monotonic() - began

    assert not acks.failures, acks.failures[:5]
    assert sorted(acks.by_alert) == sorted(a.id for a in alerts)
    assert all(len(answers) == 2 for answers in acks.by_alert.values())
    answers = {
        alert_id: {(a.status, a.incident_id) for a in got}
        for alert_id, got in acks.by_alert.items()
    }
    changed = {alert_id: got for alert_id, got in answers.items() if len(got) != 1}
    assert not changed, f"a retry got another answer than the first: {list(changed.items())[:3]}"
    assert all(status in ACKED for got in answers.values() for status, _ in got)
    into: dict[str, set[str]] = defaultdict(set)
    for alert_id, got in answers.items():
        into[next(iter(got))[1]].add(alert_id)
    opened = [alert_id for alert_id, got in answers.items() if next(iter(got))[0] == ACKED[0]]
    assert len(opened) == fingerprints, f"{len(opened)} alerts opened an incident"
    assert len(into) == fingerprints

    for replica in replicas:
        counts = stored_counts(replica.client())
        assert counts == {incident_id: per_fingerprint for incident_id in into}
    # Once more, every alert through another replica: all retries, nothing counted.
    resent = [("batch", alerts[start : start + 100]) for start in range(0, len(alerts), 100)]
    again = Acks()
    spread_over(replicas[1:], resent, again)
    assert not again.failures, again.failures[:5]
    assert all("retry" in got[0].message for got in again.by_alert.values())
    assert stored_counts(replicas[0].client()) == {i: per_fingerprint for i in into}
    print(f"{len(calls)} calls, {2 * len(alerts)} alerts over 3 replicas in {took:.2f}s")


class Follower:
    """A StreamIncidents subscriber on one replica, read on its own thread."""

    def __init__(self, address: str, after_sequence: int | None) -> None:
        self.channel = grpc.insecure_channel(address)
        request = service_pb2.StreamIncidentsRequest()
        if after_sequence is not None:
            request.after_sequence = after_sequence
        self.call = service_grpc.IncidentServiceStub(self.channel).StreamIncidents(
            request, timeout=120
        )
        self.events: queue.Queue[tuple[float, service_pb2.StreamIncidentsResponse] | None] = (
            queue.Queue()
        )
        self.ended: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.events.put((time.monotonic(), response))
        except grpc.RpcError as error:
            self.ended = error
        self.events.put(None)

    def take(self, until_sequence: int, timeout: float = 20.0) -> list[tuple[float, int, str]]:
        """(received at, sequence, incident id) of events until `until_sequence` is seen."""
        got: list[tuple[float, int, str]] = []
        deadline = time.monotonic() + timeout
        while not got or got[-1][1] < until_sequence:
            try:
                item = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"stream stopped at {got[-1][1] if got else None}, expected {until_sequence}"
                ) from None
            if item is None:
                raise AssertionError(f"stream ended early: {self.ended}")
            received, response = item
            got.append((received, response.event.sequence, response.event.incident_id))
        return got

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=5)
        self.channel.close()


def last_sequence(client: Client) -> int:
    """The greatest sequence stored: every event is on one incident's timeline."""
    return sum(i.timeline_size for i in client.list_all_incidents())


@pytest.mark.timeout(120)
def test_a_subscriber_on_one_replica_sees_every_event_of_the_others_in_order(
    start_replica: StartReplica, database: str
) -> None:
    a, b, c = start_replicas(start_replica, database, 3)
    follower = Follower(c.address, after_sequence=0)
    writers = [a, b]
    latencies: list[float] = []
    try:
        # Paced single alerts through A and B: how long from the call on one
        # replica to the event on the subscriber's replica.
        clients = [w.client() for w in writers]
        for n in range(200):
            sent_at = time.monotonic()
            ack = (
                clients[n % 2]
                .ingestion.SubmitAlert(
                    ingestion_pb2.SubmitAlertRequest(
                        alert=alert(id=f"paced-{n}", title=f"problem {n % 7}")
                    ),
                    timeout=CALL_TIMEOUT,
                )
                .ack
            )
            assert ack.status in ACKED
            seen = follower.take(until_sequence=n + 1)
            if n >= WARM_UP:
                latencies.append(seen[-1][0] - sent_at)
            time.sleep(0.005)
        # Then a storm through A and B while the subscriber follows on C.
        alerts = storm(6, 30, "followed")
        calls = [
            (way, alerts[start : start + 6])
            for start, way in zip(
                range(0, len(alerts), 6),
                itertools.cycle(("batch", "stream", "unary")),
                strict=False,
            )
        ]
        spread_over(writers, calls, Acks())
        last = last_sequence(a.client())
        got = follower.take(until_sequence=last)
        sequences = [sequence for _, sequence, _ in got]
        assert sequences == list(range(201, last + 1)), "a gap or a repeat on the stream"

        # Reconnect to another replica in the middle of a second storm.
        resume_from = last
        follower.close()
        more = storm(6, 30, "resumed")
        writer = threading.Thread(
            target=spread_over,
            args=(writers, [("batch", more[s : s + 5]) for s in range(0, len(more), 5)], Acks()),
        )
        writer.start()
        time.sleep(0.2)
        follower = Follower(a.address, after_sequence=resume_from)
        writer.join(timeout=60)
        final = last_sequence(b.client())
        got = follower.take(until_sequence=final)
        assert [s for _, s, _ in got] == list(range(resume_from + 1, final + 1))
    finally:
        follower.close()
    p50 = statistics.median(latencies) * 1000
    p99 = sorted(latencies)[int(0.99 * len(latencies))] * 1000
    print(
        f"cross-replica latency, SubmitAlert on A or B to StreamIncidents on C: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(latencies)} alerts"
    )
