"""Several server processes on one PostgreSQL database, as replicas behind a load balancer.

Each test gets its own database and its own replicas (`python -m
incident_manager`). Clients spread identical and overlapping alerts over all
replicas at once, the three ways the service takes them; the database alone
must keep dedup exact and the event streams of every replica gap-free.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2_grpc as ingestion_grpc,
)
from generated.incident_manager.v1 import alert_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc
from tests.support import alert, eventually, free_port
from tests.support.postgres import fresh_database, pg_ctlcluster
from tests.support.processes import (
    CALL_TIMEOUT,
    NOT_SERVING,
    SERVING,
    Client,
    Launch,
    ServerProcess,
    server_environment,
)

ACKED = (alert_pb2.ACK_STATUS_ACCEPTED, alert_pb2.ACK_STATUS_DUPLICATE)

StartReplica = Callable[..., ServerProcess]
WARM_UP = 5
"""Latency samples left out at first: they include connecting the channels."""


@pytest.fixture
def database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database (skipped where no server is reachable)."""
    with fresh_database("im_e2e") as url:
        yield url


@pytest.fixture
def start_replica(launch: Launch) -> StartReplica:
    """Start replicas on a database URL (`launch` kills them at the end)."""

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


@dataclass
class Load:
    """Clients sending new alerts about a few problems to every replica until stopped."""

    replicas: Sequence[ServerProcess]
    problems: int = 5
    sent: dict[str, alert_pb2.Alert] = field(default_factory=dict)
    acks: dict[str, alert_pb2.AlertAck] = field(default_factory=dict)
    refusals: list[tuple[str, str]] = field(default_factory=list)
    """(status code, details) of every failed call."""
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, clients: int = 4) -> None:
        for n in range(clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        channel = grpc.insecure_channel(self.replicas[n % len(self.replicas)].address)
        stub = ingestion_grpc.AlertIngestionServiceStub(channel)
        ids = itertools.count()
        while not self.stop.is_set():
            way = rng.choice(("unary", "batch", "stream"))
            alerts = [
                alert(id=f"load-{n}-{next(ids)}", title=f"GPU memory errors on node {p}")
                for p in (rng.randrange(self.problems) for _ in range(rng.randint(1, 6)))
            ]
            with self.lock:
                self.sent.update((a.id, a) for a in alerts)
            try:
                acks = send(stub, way, alerts)
            except grpc.RpcError as error:
                with self.lock:
                    self.refusals.append((error.code().name, error.details() or ""))
                self.stop.wait(0.05)
                continue
            with self.lock:
                self.acks.update((ack.alert_id, ack) for ack in acks)
        channel.close()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=CALL_TIMEOUT + 5)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acks)


def wait_for_health(replica: ServerProcess, status: int, timeout: float) -> float:
    """Seconds until the replica's health says `status`; fails after `timeout`."""
    began = time.monotonic()
    with grpc.insecure_channel(replica.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def says_status() -> bool:
            with contextlib.suppress(grpc.RpcError):
                answer: int = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                return answer == status
            return False

        eventually(says_status, timeout=timeout, what=f"{replica.address} to say {status}")
        return time.monotonic() - began


@pytest.mark.timeout(150)
def test_replicas_refuse_calls_while_postgres_is_down_and_recover_without_losing_an_ack(
    start_replica: StartReplica, database: str
) -> None:
    a, b = start_replicas(start_replica, database, 2)
    follower = Follower(b.address, after_sequence=0)
    load = Load([a, b])
    load.start()
    try:
        time.sleep(1.0)
        assert load.acked_count() > 0
        acked_before_stop = load.acked_count()
        try:
            pg_ctlcluster("stop")
            with pytest.raises(grpc.RpcError) as refused:
                a.client().ingestion.SubmitAlert(
                    ingestion_pb2.SubmitAlertRequest(alert=alert(id="while-down")),
                    timeout=CALL_TIMEOUT,
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "storage is unavailable" in (refused.value.details() or "")
            assert "PostgreSQL at 127.0.0.1:5432" in (refused.value.details() or "")
            health_went_down = max(wait_for_health(r, NOT_SERVING, 5.0) for r in (a, b))
            time.sleep(0.5)
        finally:
            pg_ctlcluster("start")
        recovered_in = max(wait_for_health(r, SERVING, 30.0) for r in (a, b))
        acked_at_restart = load.acked_count()
        eventually(
            lambda: load.acked_count() >= acked_at_restart + 50,
            timeout=30,
            interval=0.1,
            what="50 acks after PostgreSQL came back",
        )
    finally:
        load.finish()

    codes = Counter(code for code, _ in load.refusals)
    assert set(codes) <= {"UNAVAILABLE"}, load.refusals[:5]
    assert codes["UNAVAILABLE"] > 0
    assert all("storage is unavailable" in details for _, details in load.refusals)

    # Every acked alert is stored: sent once more, each is a retry with the same answer.
    client = a.client()
    acked = dict(load.acks)
    for start in range(0, len(acked), 250):
        ids = list(acked)[start : start + 250]
        batch = [load.sent[i] for i in ids]
        for ack in send(client.ingestion, "batch", batch):
            first = acked[ack.alert_id]
            assert (ack.status, ack.incident_id) == (first.status, first.incident_id), ack
            assert "retry" in ack.message, ack
    # Alerts never acked (refused, or cut off with the connection) are sent once;
    # then every alert sent is stored exactly once.
    unacked = [one for alert_id, one in load.sent.items() if alert_id not in acked]
    for start in range(0, len(unacked), 250):
        for ack in send(client.ingestion, "batch", unacked[start : start + 250]):
            assert ack.status in ACKED, ack
            acked[ack.alert_id] = ack
    expected = Counter(ack.incident_id for ack in acked.values())
    assert len(expected) == load.problems
    assert stored_counts(b.client()) == dict(expected)

    # The stream on B carried on after the restart: every event, in order.
    last = last_sequence(client)
    got = follower.take(until_sequence=last, timeout=30)
    follower.close()
    assert [s for _, s, _ in got] == list(range(1, last + 1))
    # And a stream resumed on the other replica from the middle has no gap either.
    middle = last // 2
    resumed = Follower(a.address, after_sequence=middle)
    try:
        assert [s for _, s, _ in resumed.take(until_sequence=last)] == list(
            range(middle + 1, last + 1)
        )
    finally:
        resumed.close()
    print(
        f"acked {acked_before_stop} before the stop, {len(load.acks)} in all; "
        f"{codes['UNAVAILABLE']} calls refused as UNAVAILABLE; "
        f"health NOT_SERVING {health_went_down:.2f}s after that refusal; SERVING again "
        f"{recovered_in:.2f}s after PostgreSQL's start returned; "
        f"{len(unacked)} unacked alerts sent again"
    )
