"""Three paging replicas on one PostgreSQL database, each page claimed by exactly one.

Each replica reads a paging file of its own whose one webhook channel posts to a path
of its own (`/hook/replica-N`) on the same receiver, so the receiver knows which
process sent every request. Alerts about 200 new problems are spread over all three
replicas at once; a client whose replica stops answering sends its alerts to the next
one, as a load balancer would.
"""

from __future__ import annotations

import itertools
import signal
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2_grpc as ingestion_grpc,
)
from generated.incident_manager.v1 import alert_pb2
from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from tests.support import alert, eventually, free_port
from tests.support.hooks import (
    SECRET,
    SECRET_ENV,
    Hit,
    TimedReceiver,
    notifications,
    paging_file,
    receiver_thread,
)
from tests.support.postgres import fresh_database
from tests.support.processes import CALL_TIMEOUT, Launch, ServerProcess, server_environment

INCIDENTS = 200
SLOW_ANSWER = 0.5
"""Seconds the receiver waits before answering while a replica is killed."""
LEASE = 2.0
SENT = paging_pb2.NOTIFICATION_STATE_SENT


@pytest.fixture
def database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database (skipped where no server is reachable)."""
    with fresh_database("im_paging") as url:
        yield url


@pytest.fixture
def receiver() -> Iterator[TimedReceiver]:
    with receiver_thread() as running:
        yield running


StartReplicas = Callable[..., list[ServerProcess]]


@pytest.fixture
def start_replicas(
    launch: Launch, database: str, receiver: TimedReceiver, tmp_path: Path
) -> StartReplicas:
    """`start_replicas(count, *args)`: replicas on the test's database, started at once,
    each paging the receiver at `/hook/replica-N`; returned once all are SERVING."""

    def start(count: int, *extra: str) -> list[ServerProcess]:
        replicas: list[ServerProcess] = []
        for n in range(count):
            config = tmp_path / f"paging-{n}.yaml"
            config.write_text(paging_file([("hook", receiver.url_for(f"replica-{n}"))]))
            address = f"127.0.0.1:{free_port()}"
            args = ["--listen", address, "--log-level", "WARNING", "--paging-config", str(config)]
            replicas.append(
                launch(
                    [*args, *extra],
                    address=address,
                    environment=server_environment(
                        INCIDENT_MANAGER_DATABASE=database, **{SECRET_ENV: SECRET}
                    ),
                    wait=False,
                )
            )
        for replica in replicas:
            replica.wait_until_serving()
        return replicas

    return start


@dataclass
class Spread:
    """Alerts about new problems sent from several client threads, each call to the
    replicas in turn; a call a replica fails goes to the next one."""

    replicas: Sequence[ServerProcess]
    opened: dict[str, str] = field(default_factory=dict)
    """Incident id by alert id, for every ACCEPTED ack."""
    moved: int = 0
    """Calls sent again to another replica because theirs failed."""
    failure: BaseException | None = None
    """What stopped `send_all` on a thread of its own."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def in_background(self, prefix: str, count: int) -> threading.Thread:
        """`send_all` on a thread of its own, started; a failure is kept in `failure`."""

        def send() -> None:
            try:
                self.send_all(prefix, count)
            except BaseException as error:  # raised again by the test once it joins
                self.failure = error

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        return thread

    def send_all(self, prefix: str, count: int) -> None:
        alerts = [
            alert(
                id=f"{prefix}-{n}",
                title=f"{prefix}: embedding service {n} returns NaN",
                affected_resources=[f"service/embed-{n}"],
            )
            for n in range(count)
        ]
        calls = [alerts[start : start + 4] for start in range(0, count, 4)]
        channels = [grpc.insecure_channel(r.address) for r in self.replicas]
        stubs = [ingestion_grpc.AlertIngestionServiceStub(c) for c in channels]
        turn = itertools.count()
        try:
            with ThreadPoolExecutor(max_workers=6) as pool:
                list(pool.map(lambda batch: self._send(stubs, next(turn), batch), calls))
        finally:
            for channel in channels:
                channel.close()

    def _send(
        self,
        stubs: Sequence[ingestion_grpc.AlertIngestionServiceStub],
        turn: int,
        batch: list[alert_pb2.Alert],
    ) -> None:
        for attempt in range(len(stubs)):
            stub = stubs[(turn + attempt) % len(stubs)]
            try:
                if len(batch) == 1 or turn % 3 == 0:
                    acks = [
                        stub.SubmitAlert(
                            ingestion_pb2.SubmitAlertRequest(alert=one), timeout=CALL_TIMEOUT
                        ).ack
                        for one in batch
                    ]
                else:
                    acks = list(
                        stub.BatchSubmitAlerts(
                            ingestion_pb2.BatchSubmitAlertsRequest(alerts=batch),
                            timeout=CALL_TIMEOUT,
                        ).acks
                    )
            except grpc.RpcError:
                with self.lock:
                    self.moved += 1
                continue
            with self.lock:
                for ack in acks:
                    # A batch sent again after a failure gets each stored alert's first answer.
                    assert ack.status == alert_pb2.ACK_STATUS_ACCEPTED, ack
                    self.opened[ack.alert_id] = ack.incident_id
            return
        raise AssertionError(f"no replica took {[a.id for a in batch]}")


def settled_ledgers(
    replica: ServerProcess, incidents: set[str], receiver: TimedReceiver, timeout: float
) -> dict[str, list[paging_pb2.Notification]]:
    """Every incident's ledger, once the receiver has seen as many pages and all are SENT."""
    eventually(
        lambda: len({h.webhook_id for h in receiver.seen()}) >= len(incidents),
        timeout=timeout,
        what=lambda: (
            f"{len(incidents)} distinct pages; got {len({h.webhook_id for h in receiver.seen()})}"
        ),
    )
    channel = replica.client().channel

    def all_sent() -> dict[str, list[paging_pb2.Notification]] | None:
        ledgers = {i: notifications(channel, i) for i in incidents}
        done = all(rows and all(r.state == SENT for r in rows) for rows in ledgers.values())
        return ledgers if done else None

    ledger: dict[str, list[paging_pb2.Notification]] = eventually(
        all_sent, timeout=15, interval=0.2, what="every ledger SENT"
    )
    return ledger


def assert_one_page_per_incident(
    ledgers: dict[str, list[paging_pb2.Notification]], hits: Sequence[Hit]
) -> dict[str, list[Hit]]:
    """Each incident has one SENT notification, the receiver saw each (signed, about that
    incident) and nothing else; returns the requests by webhook-id."""
    assert all(len(rows) == 1 for rows in ledgers.values()), [
        (i, len(rows)) for i, rows in ledgers.items() if len(rows) != 1
    ][:5]
    incident_of = {rows[0].id: incident for incident, rows in ledgers.items()}
    by_id: dict[str, list[Hit]] = defaultdict(list)
    for hit in hits:
        by_id[hit.webhook_id].append(hit)
    assert set(by_id) == set(incident_of), (
        f"lost: {sorted(set(incident_of) - set(by_id))[:5]}, "
        f"unknown: {sorted(set(by_id) - set(incident_of))[:5]}"
    )
    assert all(hit.signed for hit in hits)
    assert all(hit.incident_id == incident_of[hit.webhook_id] for hit in hits)
    return by_id


@pytest.mark.timeout(120)
def test_two_hundred_incidents_through_three_replicas_are_each_paged_exactly_once(
    start_replicas: StartReplicas, receiver: TimedReceiver
) -> None:
    replicas = start_replicas(3)
    spread = Spread(replicas)
    began = time.monotonic()
    spread.send_all("storm", INCIDENTS)
    sent_in = time.monotonic() - began
    incidents = set(spread.opened.values())
    assert len(spread.opened) == len(incidents) == INCIDENTS

    ledgers = settled_ledgers(replicas[0], incidents, receiver, timeout=30)
    hits = receiver.seen()
    by_id = assert_one_page_per_incident(ledgers, hits)
    twice = Counter(webhook_id for webhook_id, copies in by_id.items() if len(copies) > 1)
    assert not twice, f"received more than once: {twice.most_common(5)}"
    assert len(hits) == INCIDENTS
    assert all(rows[0].attempts == 1 for rows in ledgers.values())
    delays = sorted(hit.arrived - began for hit in hits)
    by_replica = Counter(hit.path.rsplit("/", 1)[-1] for hit in hits)
    print(
        f"{INCIDENTS} incidents through 3 replicas in {sent_in:.2f}s; {len(hits)} requests, "
        f"{len(by_id)} distinct webhook-ids, none twice; sent by {dict(sorted(by_replica.items()))}"
        f"; last page {delays[-1]:.2f}s after the first alert "
        f"(median {statistics.median(delays):.2f}s)"
    )


@pytest.mark.timeout(120)
def test_a_replica_killed_with_pages_in_flight_loses_none_the_others_take_them_over(
    start_replicas: StartReplicas, receiver: TimedReceiver
) -> None:
    replicas = start_replicas(3, "--paging-lease", f"{LEASE:g}s")
    victim, path = replicas[0], "/hook/replica-0"
    receiver.delay = SLOW_ANSWER
    spread = Spread(replicas)
    began = time.monotonic()
    sender = spread.in_background("takeover", INCIDENTS)

    def victim_in_flight() -> list[Hit]:
        return [h for h in receiver.seen() if h.path == path and h.answered is None]

    # Mid-run: a third of the incidents opened, and the victim waiting on five pages.
    eventually(
        lambda: len(spread.opened) >= INCIDENTS // 3 and len(victim_in_flight()) >= 5,
        timeout=30,
        what=lambda: (
            f"{INCIDENTS // 3} incidents ({len(spread.opened)}) and replica 0 "
            f"waiting on 5 pages ({len(victim_in_flight())})"
        ),
    )
    killed_at = time.monotonic()
    victim.signal(signal.SIGKILL)
    assert victim.wait_for_exit(timeout=10) == -signal.SIGKILL
    sender.join(timeout=60)
    assert not sender.is_alive(), "the alerts were not all sent within 60s"
    if spread.failure is not None:
        raise spread.failure
    incidents = set(spread.opened.values())
    assert len(spread.opened) == len(incidents) == INCIDENTS

    ledgers = settled_ledgers(replicas[1], incidents, receiver, timeout=45)
    hits = receiver.seen()
    finished = time.monotonic()
    by_id = assert_one_page_per_incident(ledgers, hits)

    # What the victim had sent and not had answered when it died came again, from a survivor.
    in_flight = [h for h in hits if h.path == path and not h.answered_before(killed_at)]
    assert in_flight, "the kill found no page in flight"
    assert all(len(by_id[h.webhook_id]) == 2 for h in in_flight)
    # A page received twice was first sent by the victim, then by one survivor after the
    # kill (its lease ran out only then): never by two live replicas, never twice by one.
    duplicates = {i: copies for i, copies in by_id.items() if len(copies) > 1}
    takeovers: list[float] = []
    for webhook_id, copies in duplicates.items():
        first, *later = copies
        assert first.path == path and len(later) == 1, (webhook_id, [h.path for h in copies])
        assert later[0].path != path and later[0].arrived > killed_at, (webhook_id, copies)
        takeovers.append(later[0].arrived - killed_at)
    # Claimed by the victim but not yet sent: attempt 2 by a survivor is the only request.
    claimed_unsent = [
        rows[0].id
        for rows in ledgers.values()
        if rows[0].attempts > 1 and len(by_id[rows[0].id]) == 1
    ]
    assert all(by_id[i][0].arrived > killed_at for i in claimed_unsent)
    by_replica = Counter(hit.path.rsplit("/", 1)[-1] for hit in hits)
    print(
        f"{INCIDENTS} incidents, replica 0 killed {killed_at - began:.2f}s in with "
        f"{len(in_flight)} pages unanswered; {len(duplicates)} pages received twice (same "
        f"webhook-id), {len(claimed_unsent)} claimed by it but unsent, taken over "
        f"{min(takeovers):.2f}-{max(takeovers):.2f}s after the kill (lease {LEASE:g}s); "
        f"{spread.moved} calls moved to another replica; requests by sender "
        f"{dict(sorted(by_replica.items()))}; all {INCIDENTS} SENT "
        f"{finished - killed_at:.2f}s after the kill"
    )
