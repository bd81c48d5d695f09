"""`kill -9` of a paging server on SQLite, round after round on one database file, while
new incidents keep making steps due and deliveries are on their way to a real receiver.

Each round rewrites the paging file so that its server process posts to a path of its
own (`/hook/round-N`): the receiver then knows which process sent every request. In
every other round the receiver answers only after half a second, so the kill finds
deliveries in flight. A last server on the same file, never killed, delivers whatever
was left. The ledger and the receiver must then agree: one SENT notification per
incident, each received, and a page received twice only when the process that sent
it first died before it could record the send (the copy carries the same id).
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections import defaultdict
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
from tests.support import alert, eventually
from tests.support.hooks import (
    SECRET,
    SECRET_ENV,
    Hit,
    TimedReceiver,
    notifications,
    paging_file,
    receiver_thread,
)
from tests.support.load import assert_no_errors_logged
from tests.support.processes import CALL_TIMEOUT, ServerProcess, StartProcess

ROUNDS = 10
SLOW_ANSWER = 0.5
"""Seconds the receiver waits before answering in the slow rounds (the even ones)."""
CRASH_WINDOW = 2.0
"""Seconds between the receiver's answer and the kill within which a page may come again
(the process had the answer but had not recorded it yet); generous for a loaded machine."""
SENT = paging_pb2.NOTIFICATION_STATE_SENT
RELEASED = re.compile(r"paging: (\d+) deliveries were being sent when the server last stopped")


@dataclass
class Firing:
    """A client thread sending bursts of alerts about new problems until stopped or until
    the server goes away; it keeps the incident each ACCEPTED ack opened."""

    address: str
    round_number: int
    rng: random.Random
    opened: dict[str, str] = field(default_factory=dict)
    """Incident id by alert id, for every ACCEPTED ack."""
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._fire, daemon=True)
        self.thread.start()

    def _fire(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = ingestion_grpc.AlertIngestionServiceStub(channel)
            sent = 0
            while not self.stop.is_set():
                burst = [
                    alert(
                        id=f"crash-{self.round_number}-{sent + n}",
                        title=f"model m{self.round_number}-{sent + n} stopped answering",
                        affected_resources=[f"model/m{self.round_number}-{sent + n}"],
                    )
                    for n in range(self.rng.randint(1, 6))
                ]
                sent += len(burst)
                try:
                    answer = stub.BatchSubmitAlerts(
                        ingestion_pb2.BatchSubmitAlertsRequest(alerts=burst), timeout=CALL_TIMEOUT
                    )
                except grpc.RpcError:
                    self.refused += 1  # the kill: this burst may or may not be stored
                    return
                for ack in answer.acks:
                    if ack.status == alert_pb2.ACK_STATUS_ACCEPTED:
                        self.opened[ack.alert_id] = ack.incident_id
                self.stop.wait(self.rng.uniform(0.01, 0.08))

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=CALL_TIMEOUT + 5)


@dataclass(frozen=True)
class Kill:
    """One round's end: when its process was killed, and what it had in flight."""

    round_number: int
    at: float
    unanswered: list[Hit]
    """Its requests the receiver had not answered yet when the process died."""


def released_at_start(server: ServerProcess) -> int:
    """How many claimed deliveries the server said it found left by a dead process."""
    found = RELEASED.search(server.stderr())
    return int(found.group(1)) if found else 0


def run_round(
    start_process: StartProcess,
    database: Path,
    config: Path,
    receiver: TimedReceiver,
    round_number: int,
    rng: random.Random,
) -> tuple[ServerProcess, Firing, Kill]:
    """Serve one round from a new process, fire alerts at it, and kill it at a random moment
    (in a slow round, once it has a delivery waiting for the receiver's answer)."""
    path = f"round-{round_number}"
    config.write_text(paging_file([("hook", receiver.url_for(path))]))
    slow = round_number % 2 == 0
    receiver.delay = SLOW_ANSWER if slow else 0.0
    server = start_process(database, "--paging-config", str(config))
    firing = Firing(server.address, round_number, random.Random(rng.random()))
    firing.start()
    try:
        if slow:
            eventually(
                lambda: any(
                    h.path == f"/hook/{path}" and h.answered is None for h in receiver.seen()
                ),
                timeout=15,
                what=lambda: (
                    f"round {round_number}: a delivery waiting for the receiver "
                    f"({len(firing.opened)} incidents opened, last requests {receiver.seen()[-3:]})"
                ),
            )
            time.sleep(rng.uniform(0.0, SLOW_ANSWER * 0.8))
        else:
            time.sleep(rng.uniform(0.1, 0.8))
        killed_at = time.monotonic()
        server.signal(signal.SIGKILL)
        assert server.wait_for_exit(timeout=10) == -signal.SIGKILL
    finally:
        firing.finish()
    unanswered = [
        h for h in receiver.seen() if h.path == f"/hook/{path}" and not h.answered_before(killed_at)
    ]
    return server, firing, Kill(round_number, killed_at, unanswered)


@pytest.mark.timeout(150)
def test_after_ten_kill_9_rounds_every_page_is_delivered_and_only_the_crash_window_repeats(
    start_process: StartProcess,
    tmp_path: Path,
    rng: random.Random,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)  # the server processes inherit it
    database = tmp_path / "paging.db"
    config = tmp_path / "paging.yaml"
    began = time.monotonic()
    with receiver_thread() as receiver:
        servers: list[ServerProcess] = []
        opened: dict[str, str] = {}
        kills: list[Kill] = []
        firings: list[Firing] = []
        for round_number in range(ROUNDS):
            server, firing, kill = run_round(
                start_process, database, config, receiver, round_number, rng
            )
            servers.append(server)
            opened.update(firing.opened)
            firings.append(firing)
            kills.append(kill)
            assert firing.opened, f"round {round_number}: no alert was accepted before the kill"

        config.write_text(paging_file([("hook", receiver.url_for("final"))]))
        receiver.delay = 0.0
        final = start_process(database, "--paging-config", str(config))
        servers.append(final)
        client = final.client()
        incidents = {incident.id for incident in client.list_all_incidents()}
        eventually(
            lambda: len({h.webhook_id for h in receiver.seen()}) >= len(incidents),
            timeout=30,
            what=lambda: (
                f"{len(incidents)} distinct pages, got "
                f"{len({h.webhook_id for h in receiver.seen()})}"
            ),
        )

        def settled() -> dict[str, list[paging_pb2.Notification]] | None:
            ledgers = {i: notifications(client.channel, i) for i in incidents}
            done = all(rows and all(r.state == SENT for r in rows) for rows in ledgers.values())
            return ledgers if done else None

        ledgers = eventually(settled, timeout=15, interval=0.2, what="every ledger SENT")
        hits = receiver.seen()
    took = time.monotonic() - began

    # Every acked alert's incident is stored, and every stored incident paged exactly once.
    assert set(opened.values()) <= incidents
    assert all(len(rows) == 1 for rows in ledgers.values()), [
        (i, len(rows)) for i, rows in ledgers.items() if len(rows) != 1
    ][:5]
    ledger_ids = {rows[0].id: incident for incident, rows in ledgers.items()}
    assert all(rows[0].channel_id == "hook" for rows in ledgers.values())

    # The receiver saw each of them (none lost), signed, about its own incident, and no other.
    by_id: dict[str, list[Hit]] = defaultdict(list)
    for hit in hits:
        by_id[hit.webhook_id].append(hit)
    assert set(by_id) == set(ledger_ids), (
        f"lost: {sorted(set(ledger_ids) - set(by_id))[:5]}, "
        f"unknown: {sorted(set(by_id) - set(ledger_ids))[:5]}"
    )
    assert all(hit.signed for hit in hits)
    assert all(hit.incident_id == ledger_ids[hit.webhook_id] for hit in hits)

    # A repeat comes only from a later process than the one that sent it first, and that one
    # was killed before it could record the send: no process sent one page twice.
    kill_of = {f"/hook/round-{kill.round_number}": kill for kill in kills}
    order = [*kill_of, "/hook/final"]
    duplicates = {i: copies for i, copies in by_id.items() if len(copies) > 1}
    for webhook_id, copies in duplicates.items():
        senders = [order.index(hit.path) for hit in copies]
        assert senders == sorted(set(senders)), f"{webhook_id} sent by {senders}"
        for earlier in copies[:-1]:
            assert earlier.path in kill_of, f"{webhook_id}: repeated after {earlier.path}"
    # And whatever was unanswered at a kill could not have been recorded: it came again.
    for kill in kills:
        for hit in kill.unanswered:
            assert len(by_id[hit.webhook_id]) > 1, f"{hit.webhook_id} unanswered at a kill, once"
    # Each restart said how many deliveries it took back: at least those left unanswered.
    for kill, after in zip(kills, servers[1:], strict=True):
        assert released_at_start(after) >= len(kill.unanswered), after.stderr()[-2000:]
    assert_no_errors_logged(servers)

    # The rest of the crash window: answered, then the process died before it recorded that.
    answered_then_killed = [
        kill_of[copies[0].path].at - copies[0].answered
        for copies in duplicates.values()
        if copies[0].answered is not None and copies[0].answered <= kill_of[copies[0].path].at
    ]
    # Recording a send takes milliseconds: a page answered long before its process died
    # and sent again would be a lost record, not the crash window.
    assert max(answered_then_killed, default=0) < CRASH_WINDOW, answered_then_killed
    slow_kills = kills[::2]
    kills_in_flight = [k for k in kills if k.unanswered]
    kills_repeating = {
        copies[0].path for copies in duplicates.values() if copies[0].path in kill_of
    }
    assert all(k.unanswered for k in slow_kills), "a slow round's kill found nothing in flight"
    print(
        f"{ROUNDS} kills; {len(incidents)} incidents ({len(opened)} ACCEPTED acks), "
        f"{len(ledger_ids)} deliveries, {len(hits)} requests received, "
        f"{len(duplicates)} pages received twice or more "
        f"({sum(len(c) - 1 for c in duplicates.values())} extra copies, same webhook-id); "
        f"{len(kills_in_flight)} kills hit deliveries the receiver had not answered "
        f"(unanswered per kill {[len(k.unanswered) for k in kills]}), "
        f"{len(answered_then_killed)} answered but not yet recorded at a kill (at most "
        f"{max(answered_then_killed, default=0) * 1000:.0f} ms before it); {len(kills_repeating)}"
        f" kills left pages to repeat; deliveries taken back at each restart "
        f"{[released_at_start(s) for s in servers[1:]]}; {sum(f.refused for f in firings)} "
        f"bursts cut by a kill; {took:.1f}s"
    )
