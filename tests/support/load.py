"""Clients that load real server processes, and the ledger that checks them afterwards.

Several clients send alerts the three ways the service takes them (one at a
time, in small batches, on a stream), mixing new problems, duplicates of open
ones and retries. Every ack they receive goes into a `Ledger`; once the fault
is over, a server on the same database must agree with every line of it.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2_grpc as ingestion_grpc,
)
from generated.incident_manager.v1 import alert_pb2, incident_pb2
from tests.support.builders import alert
from tests.support.processes import CALL_TIMEOUT, Client, ServerProcess

FULL_COUNTS = os.environ.get("RELIABILITY_FULL") == "1"
"""`RELIABILITY_FULL=1 pytest ...` runs the issue's full counts; the default run
uses smaller ones that prove the same property in less time."""
CLIENTS = 4
RESUBMIT_BATCH = 250
ACKED = (alert_pb2.ACK_STATUS_ACCEPTED, alert_pb2.ACK_STATUS_DUPLICATE)
ACTIVE_STATES = (
    incident_pb2.INCIDENT_STATE_DETECTED,
    incident_pb2.INCIDENT_STATE_TRIAGED,
    incident_pb2.INCIDENT_STATE_INVESTIGATING,
    incident_pb2.INCIDENT_STATE_REMEDIATING,
)


def _status_name(status: int) -> str:
    return alert_pb2.AckStatus.Name(status)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Call:
    """One call a client made: when it started and ended (time.monotonic()), and how."""

    started: float
    ended: float
    outcome: str
    """OK, or the name of the status code it failed with."""
    details: str = ""
    """The error's message, if it failed."""


@dataclass
class Ledger:
    """Every alert the clients sent and the first ack each got; shared by client threads.

    Clients cannot raise into the test from their threads, so whatever breaks
    the contract (an ack that is neither ACCEPTED nor DUPLICATE, a retry that
    lands in another incident) is written down in `problems`.
    """

    alerts: dict[str, alert_pb2.Alert] = field(repr=False, default_factory=dict)
    """Every alert sent at least once, by id: what a retry sends again."""
    acks: dict[str, alert_pb2.AlertAck] = field(repr=False, default_factory=dict)
    """The first ACCEPTED or DUPLICATE ack of each alert, by alert id."""
    problems: list[str] = field(repr=False, default_factory=list)
    calls: list[Call] = field(repr=False, default_factory=list)
    ack_count: int = 0
    retries_sent: int = 0
    in_flight: int = 0
    _titles: list[str] = field(repr=False, default_factory=list)
    _acked_ids: list[str] = field(repr=False, default_factory=list)
    _unacked: set[str] = field(repr=False, default_factory=set)
    _lock: threading.Lock = field(repr=False, default_factory=threading.Lock)

    def next_alerts(self, rng: random.Random, count: int) -> list[alert_pb2.Alert]:
        """`count` alerts to send: retries of acked and unacked ones, duplicates, new problems."""
        chosen: list[alert_pb2.Alert] = []
        with self._lock:
            for _ in range(count):
                roll = rng.random()
                if roll < 0.2 and self._acked_ids:
                    chosen.append(self.alerts[rng.choice(self._acked_ids)])
                    self.retries_sent += 1
                elif roll < 0.25 and self._unacked:
                    # Unanswered so far: in flight elsewhere, or cut off by a kill.
                    chosen.append(self.alerts[rng.choice(tuple(self._unacked))])
                    self.retries_sent += 1
                else:
                    chosen.append(self._new_alert(rng, new_problem=roll > 0.95))
        return chosen

    def _new_alert(self, rng: random.Random, *, new_problem: bool) -> alert_pb2.Alert:
        if new_problem or not self._titles:
            self._titles.append(f"Toxic output rate above 2% on model m{len(self._titles)}")
        # Half go to the newest problems, so clients race to open the same incident.
        pool = self._titles[-4:] if rng.random() < 0.5 else self._titles
        sent = alert(id=f"reliability-{len(self.alerts)}", title=rng.choice(pool))
        self.alerts[sent.id] = sent
        self._unacked.add(sent.id)
        return sent

    def record(self, ack: alert_pb2.AlertAck) -> None:
        with self._lock:
            self.ack_count += 1
            if ack.alert_id not in self.alerts:
                self.problems.append(f"ack for an alert never sent: {ack}")
                return
            if ack.status not in ACKED or not ack.incident_id:
                self.problems.append(
                    f"{ack.alert_id}: {_status_name(ack.status)} {ack.incident_id!r} {ack.message}"
                )
                return
            first = self.acks.get(ack.alert_id)
            if first is None:
                self.acks[ack.alert_id] = ack
                self._acked_ids.append(ack.alert_id)
                self._unacked.discard(ack.alert_id)
            elif (first.status, first.incident_id) != (ack.status, ack.incident_id):
                self.problems.append(
                    f"{ack.alert_id} first acked {_status_name(first.status)} into "
                    f"{first.incident_id}, then {_status_name(ack.status)} into {ack.incident_id}"
                )

    def call_started(self) -> float:
        with self._lock:
            self.in_flight += 1
        return time.monotonic()

    def call_ended(self, started: float, outcome: str, details: str = "") -> None:
        with self._lock:
            self.in_flight -= 1
            self.calls.append(Call(started, time.monotonic(), outcome, details))

    @property
    def outcomes(self) -> Counter[str]:
        """Calls by how they ended: OK or a status code name."""
        with self._lock:
            return Counter(call.outcome for call in self.calls)

    def note_problem(self, problem: str) -> None:
        with self._lock:
            self.problems.append(problem)

    def unacked(self) -> list[alert_pb2.Alert]:
        with self._lock:
            return [self.alerts[alert_id] for alert_id in sorted(self._unacked)]


def _send(
    stub: ingestion_grpc.AlertIngestionServiceStub, way: str, alerts: list[alert_pb2.Alert]
) -> Iterator[alert_pb2.AlertAck]:
    """Acks as they arrive, so a stream cut short still yields the ones it got."""
    if way == "unary":
        yield stub.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(alert=alerts[0]), timeout=CALL_TIMEOUT
        ).ack
    elif way == "batch":
        yield from stub.BatchSubmitAlerts(
            ingestion_pb2.BatchSubmitAlertsRequest(alerts=alerts), timeout=CALL_TIMEOUT
        ).acks
    else:
        requests = iter([ingestion_pb2.StreamAlertsRequest(alert=one) for one in alerts])
        for response in stub.StreamAlerts(requests, timeout=CALL_TIMEOUT):
            yield response.ack


WAYS = {"unary": (1, 1), "batch": (2, 8), "stream": (5, 20)}
"""How alerts are sent, with how many alerts one call carries (at least, at most)."""


def send_alerts_until(
    stop: threading.Event,
    address: str,
    ledger: Ledger,
    rng: random.Random,
    *,
    keep_trying: bool,
) -> None:
    """One client on its own channel, sending until `stop` (or, unless
    `keep_trying`, until the first call fails)."""
    try:
        with grpc.insecure_channel(address) as channel:
            stub = ingestion_grpc.AlertIngestionServiceStub(channel)
            while not stop.is_set():
                way = rng.choice(tuple(WAYS))
                alerts = ledger.next_alerts(rng, rng.randint(*WAYS[way]))
                started = ledger.call_started()
                try:
                    for ack in _send(stub, way, alerts):
                        ledger.record(ack)
                except grpc.RpcError as error:
                    ledger.call_ended(started, error.code().name, error.details() or "")
                    if not keep_trying:
                        return
                    stop.wait(0.05)  # a client backs off before it retries
                else:
                    ledger.call_ended(started, "OK")
    except Exception as error:  # a thread's exception would otherwise go unseen
        ledger.note_problem(f"client crashed: {error!r}")


def start_clients(
    address: str, ledger: Ledger, rng: random.Random, *, keep_trying: bool
) -> tuple[threading.Event, list[threading.Thread]]:
    stop = threading.Event()
    clients = [
        threading.Thread(
            target=send_alerts_until,
            args=(stop, address, ledger, random.Random(rng.getrandbits(64))),
            kwargs={"keep_trying": keep_trying},
            name=f"alert-client-{n}",
            daemon=True,
        )
        for n in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    return stop, clients


def stop_clients(stop: threading.Event, clients: Sequence[threading.Thread]) -> None:
    stop.set()
    for client in clients:
        client.join(timeout=CALL_TIMEOUT + 5)
        assert not client.is_alive(), f"{client.name} still running"


def submit_in_batches(
    client: Client, alerts: Sequence[alert_pb2.Alert]
) -> list[alert_pb2.AlertAck]:
    acks: list[alert_pb2.AlertAck] = []
    for start in range(0, len(alerts), RESUBMIT_BATCH):
        batch = alerts[start : start + RESUBMIT_BATCH]
        response = client.ingestion.BatchSubmitAlerts(
            ingestion_pb2.BatchSubmitAlertsRequest(alerts=batch), timeout=CALL_TIMEOUT
        )
        assert [ack.alert_id for ack in response.acks] == [one.id for one in batch]
        acks.extend(response.acks)
    return acks


def stored_incidents(client: Client) -> dict[str, incident_pb2.Incident]:
    return {incident.id: incident for incident in client.list_all_incidents()}


def alerts_by_incident(acks: Iterable[alert_pb2.AlertAck]) -> dict[str, set[str]]:
    into: dict[str, set[str]] = defaultdict(set)
    for ack in acks:
        into[ack.incident_id].add(ack.alert_id)
    return into


def first(items: Iterable[object], count: int = 5) -> list[object]:
    """A few examples for a failure message, not thousands."""
    return list(items)[:count]


def assert_the_database_holds_the_ledger(client: Client, ledger: Ledger) -> dict[str, int]:
    """Check a restarted server against every ack the clients got; returns what was checked."""
    acked = dict(ledger.acks)
    stored = stored_incidents(client)

    # Every acked alert is in its incident. More is allowed here: an alert
    # committed just before a kill may have lost its ack on the way out.
    acked_into = alerts_by_incident(acked.values())
    lost = [incident_id for incident_id in acked_into if incident_id not in stored]
    assert not lost, f"{len(lost)} acked incidents are gone, e.g. {first(lost)}"
    undercounted = [
        (incident_id, stored[incident_id].alert_count, len(alert_ids))
        for incident_id, alert_ids in acked_into.items()
        if stored[incident_id].alert_count < len(alert_ids)
    ]
    assert not undercounted, f"alert_count below acked alerts (id, count, acked): {undercounted}"

    # Dedup held across every restart: one active incident per problem.
    titles = Counter(i.title for i in stored.values() if i.state in ACTIVE_STATES)
    repeated = {title: n for title, n in titles.items() if n > 1}
    assert not repeated, f"one problem, several active incidents: {repeated}"

    # Every acked alert sent once more is a retry: same answer, nothing counted.
    counts = {incident_id: i.alert_count for incident_id, i in stored.items()}
    for ack in submit_in_batches(client, [ledger.alerts[alert_id] for alert_id in acked]):
        earlier = acked[ack.alert_id]
        assert (ack.status, ack.incident_id) == (earlier.status, earlier.incident_id), (
            f"a retry of {ack.alert_id} got {ack}, first {earlier}"
        )
        assert "retry" in ack.message, ack
    after_retries = {
        incident_id: i.alert_count for incident_id, i in stored_incidents(client).items()
    }
    changed = [(i, counts.get(i), n) for i, n in after_retries.items() if counts.get(i) != n]
    assert not changed, f"retries changed alert counts (id, before, after): {first(changed)}"

    # Now send once each alert that never got an ack (lost with a kill, or never
    # stored). Then every alert sent is stored, and counts must be exact.
    unanswered = ledger.unacked()
    committed_unanswered = 0
    for ack in submit_in_batches(client, unanswered):
        committed_unanswered += "retry" in ack.message
        ledger.record(ack)
    problems = ledger.problems
    assert not problems, problems[:10]
    assert not ledger.unacked()
    stored = stored_incidents(client)
    expected = alerts_by_incident(ledger.acks.values())
    assert set(stored) == set(expected), (
        f"incidents without an acked alert: {first(set(stored) - set(expected))}"
    )
    wrong = [
        (incident_id, incident.alert_count, len(expected[incident_id]))
        for incident_id, incident in stored.items()
        if incident.alert_count != len(expected[incident_id])
    ]
    assert not wrong, f"alert_count differs from alerts stored (id, count, alerts): {first(wrong)}"
    opened = Counter(
        ack.incident_id
        for ack in ledger.acks.values()
        if ack.status == alert_pb2.ACK_STATUS_ACCEPTED
    )
    assert opened == Counter(stored.keys()), "each incident is opened by exactly one ACCEPTED alert"
    return {
        "acked_before_restart": len(acked),
        "unanswered_then_sent": len(unanswered),
        "of_which_already_stored": committed_unanswered,
        "incidents": len(stored),
        "alerts_stored": sum(incident.alert_count for incident in stored.values()),
    }


def assert_no_errors_logged(servers: Iterable[ServerProcess]) -> None:
    for server in servers:
        errors = [line for line in server.stderr().splitlines() if '"level": "ERROR"' in line]
        assert not errors, f"server on {server.address} logged errors:\n" + "\n".join(errors[:5])
