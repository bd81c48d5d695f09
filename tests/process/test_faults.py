"""Faults a server process must ride out: oversized messages, a subscriber that
stops reading in a flood of events, a database that can no longer be written.

Each test runs real `python -m incident_manager` processes (their memory is
what is measured, their database what is broken) and prints what it tried and
saw. `RELIABILITY_FULL=1` runs the issue's full counts where the default run
uses smaller ones.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from generated.incident_manager.v1 import alert_pb2
from generated.incident_manager.v1 import incident_service_pb2 as service_pb2
from generated.incident_manager.v1 import incident_service_pb2_grpc as service_grpc
from tests.support import alert, error_info, eventually
from tests.support.load import (
    ACKED,
    FULL_COUNTS,
    Ledger,
    assert_the_database_holds_the_ledger,
    first,
    start_clients,
    stop_clients,
)
from tests.support.processes import (
    CALL_TIMEOUT,
    NOT_SERVING,
    SERVING,
    Client,
    StartProcess,
    resident_memory,
)

MiB = 1024 * 1024
DEFAULT_MAX_MESSAGE = 4 * MiB
"""gRPC's default largest message, which the server keeps unless configured."""


def health_status(client: Client) -> int:
    status: int = client.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT).status
    return status


def seconds_until(condition: Callable[[], bool], what: str) -> float:
    """Wait until `condition` holds; returns the seconds it took."""
    began = time.monotonic()
    eventually(condition, what=what, timeout=10.0)
    return time.monotonic() - began


@dataclass
class Reader:
    """A StreamIncidents subscriber on its own channel that reads every event as
    it comes, and resumes from the last one it got if its stream is ended with
    RESOURCE_EXHAUSTED (counted in `resumes`)."""

    name: str
    events: list[tuple[int, str, int, int]] = field(default_factory=list)
    """(sequence, incident id, event type, alert count) of each event received."""
    resumes: int = 0
    last_event_at: float = 0.0
    error: grpc.RpcError | None = None
    stopped: bool = False
    call: object = None
    """The stream being read, so that another thread can cancel it."""

    @property
    def sequences(self) -> list[int]:
        return [event[0] for event in self.events]

    def stop(self) -> None:
        """End the stream from another thread."""
        self.stopped = True
        if self.call is not None:
            self.call.cancel()  # type: ignore[attr-defined]


def read_events(address: str, after: int, until: int | None, reader: Reader) -> None:
    """Read events after `after` up to sequence `until` (or until `reader.stop()`)."""
    with grpc.insecure_channel(address) as channel:
        stub = service_grpc.IncidentServiceStub(channel)
        while not reader.stopped and (until is None or after < until):
            stream = stub.StreamIncidents(
                service_pb2.StreamIncidentsRequest(after_sequence=after), timeout=240
            )
            reader.call = stream
            try:
                for response in stream:
                    event = response.event
                    after = event.sequence
                    reader.events.append(
                        (after, event.incident_id, event.event.type, event.alert_count)
                    )
                    reader.last_event_at = time.monotonic()
                    if until is not None and after >= until:
                        break
            except grpc.RpcError as error:
                if reader.stopped:
                    return
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    reader.error = error
                    return
                reader.resumes += 1
            finally:
                stream.cancel()


def follow(address: str, after: int, until: int | None, reader: Reader) -> threading.Thread:
    thread = threading.Thread(
        target=read_events, args=(address, after, until, reader), name=reader.name, daemon=True
    )
    thread.start()
    return thread


def last_stored_sequence(client: Client) -> int:
    """The last stored event's sequence, as an OUT_OF_RANGE resume names it."""
    stream = client.incidents.StreamIncidents(
        service_pb2.StreamIncidentsRequest(after_sequence=2**62), timeout=CALL_TIMEOUT
    )
    with pytest.raises(grpc.RpcError) as refused:
        next(stream)
    assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE, refused.value
    return int(error_info(refused.value).metadata["last_sequence"])


# -- oversized messages -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_oversized_messages_are_refused_and_the_same_server_carries_on(
    start_process: StartProcess, tmp_path: Path
) -> None:
    """A unary call and a message inside StreamAlerts over the default 4 MiB are
    refused with RESOURCE_EXHAUSTED; the alert acked before it on the stream is
    kept, and the same process then answers health checks, takes a batch just
    under the limit, stores new alerts, and a subscriber connected all along
    saw every event."""
    server = start_process(tmp_path / "oversized.db")
    client = server.client()
    watcher = Reader("watcher")
    watching = follow(server.address, 0, 4, watcher)
    huge = "x" * (DEFAULT_MAX_MESSAGE + 1024)

    with pytest.raises(grpc.RpcError) as unary:
        client.ingestion.SubmitAlert(
            ingestion_pb2.SubmitAlertRequest(alert=alert(id="huge-unary", description=huge)),
            timeout=CALL_TIMEOUT,
        )
    assert unary.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, unary.value

    # On a stream: one normal alert, acked, then one too large, then one more.
    before = alert(id="before-huge", title="Jailbreak attempts on tenant acme")
    acked = threading.Event()

    def requests() -> Iterator[ingestion_pb2.StreamAlertsRequest]:
        yield ingestion_pb2.StreamAlertsRequest(alert=before)
        acked.wait(CALL_TIMEOUT)
        yield ingestion_pb2.StreamAlertsRequest(alert=alert(id="huge-streamed", description=huge))
        yield ingestion_pb2.StreamAlertsRequest(
            alert=alert(id="after-huge", title="sent after the refused one")
        )

    acks: list[alert_pb2.AlertAck] = []
    with pytest.raises(grpc.RpcError) as streamed:
        for response in client.ingestion.StreamAlerts(requests(), timeout=CALL_TIMEOUT):
            acks.append(response.ack)
            acked.set()
    assert streamed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, streamed.value
    assert [(ack.alert_id, ack.status) for ack in acks] == [
        ("before-huge", alert_pb2.ACK_STATUS_ACCEPTED)
    ]

    # The same process, on the same channel, carries on.
    assert server.popen.poll() is None
    assert health_status(client) == SERVING
    near_limit = ingestion_pb2.BatchSubmitAlertsRequest(
        alerts=[
            alert(id=f"near-limit-{n}", title="Slow answers on model m7", description="d" * 8000)
            for n in range(500)
        ]
    )
    assert DEFAULT_MAX_MESSAGE - 200 * 1024 < near_limit.ByteSize() < DEFAULT_MAX_MESSAGE
    batch = client.ingestion.BatchSubmitAlerts(near_limit, timeout=CALL_TIMEOUT)
    assert [ack.status in ACKED for ack in batch.acks] == [True] * 500
    after = client.ingestion.SubmitAlert(
        ingestion_pb2.SubmitAlertRequest(alert=alert(id="after", title="GPU node lost")),
        timeout=CALL_TIMEOUT,
    ).ack
    assert after.status == alert_pb2.ACK_STATUS_ACCEPTED

    incidents = client.list_all_incidents()
    assert sorted((i.title, i.alert_count) for i in incidents) == [
        ("GPU node lost", 1),
        ("Jailbreak attempts on tenant acme", 1),
        ("Slow answers on model m7", 500),
    ], "nothing of a refused message was stored"
    # The streamed alert's CREATED, the batch's CREATED and its one ALERT_MERGED (a batch
    # merges once per incident, listing the other 499), the unary alert's CREATED.
    watching.join(timeout=CALL_TIMEOUT)
    assert watcher.error is None, watcher.error
    assert (watcher.sequences, watcher.resumes) == (list(range(1, 5)), 0)
    print(
        f"refused: a {len(huge) / MiB:.2f} MiB SubmitAlert and a {len(huge) / MiB:.2f} MiB "
        f"message inside StreamAlerts; then a {near_limit.ByteSize() / MiB:.2f} MiB batch of "
        f"500 alerts was stored, health SERVING, a subscriber saw events 1-4 uninterrupted"
    )


# -- a subscriber that stops reading ---------------------------------------------

FLOOD_EVENTS = 100_000 if FULL_COUNTS else 20_000
"""Alerts sent while one subscriber stops reading; each makes exactly one event
(CREATED for a new problem, ALERT_MERGED for a duplicate): no two alerts of one batch are
the same problem's, since a batch merges each incident's alerts into one event."""
WARMUP_EVENTS = 5_000
"""Alerts sent before memory is first measured, so that caches, the SQLite page
cache and the allocator's arenas are already at their working size."""
BATCH = 1000
PROBLEMS = BATCH
HEALTHY_SUBSCRIBERS = 2
SLOW_READS_FIRST = 10
"""Events the slow subscriber reads before it stops."""
SLOW_DEADLINE = 200 if FULL_COUNTS else 80
"""Seconds until the stalled subscriber's call expires: a stream the server
never ends then fails with DEADLINE_EXCEEDED instead of hanging the test."""
MEMORY_BOUND = 10 * MiB
"""Growth of the server's RSS allowed over the flood; 1-5 MiB is what it takes.
A stalled subscriber whose buffer had no limit (`--stream-buffer 1000000`)
holds every event it did not read, about 700 bytes each: the server then grew
by 14 MiB over 20,000 events."""


def send_flood(client: Client, count: int, tag: str) -> None:
    for start in range(0, count, BATCH):
        alerts = [
            alert(
                id=f"{tag}-{n}",
                title=f"Toxic output rate above 2% on model m{n % PROBLEMS}",
                source="llm-shield",
            )
            for n in range(start, min(start + BATCH, count))
        ]
        response = client.ingestion.BatchSubmitAlerts(
            ingestion_pb2.BatchSubmitAlertsRequest(alerts=alerts), timeout=CALL_TIMEOUT * 3
        )
        assert [ack.status in ACKED for ack in response.acks] == [True] * len(alerts)


@pytest.mark.timeout(SLOW_DEADLINE + 60)
def test_a_subscriber_that_stops_reading_costs_bounded_memory_and_nobody_waits_for_it(
    start_process: StartProcess, tmp_path: Path
) -> None:
    """One StreamIncidents subscriber reads 10 events and stops while 20,000
    (100,000 with RELIABILITY_FULL=1) alerts flow in batches of 1,000, one event
    each; two others read everything. The server's memory stays bounded, the
    readers get every event in order soon after the last ack, on one stream
    each, and the stalled one, once it reads again, gets every event on the
    same stream: what it missed is read back from storage."""
    # A small writer cache: the default 64 MiB fills as the file grows, and would
    # measure SQLite's cache rather than what a stalled subscriber costs.
    server = start_process(tmp_path / "slow-subscriber.db", "--sqlite-cache", "2")
    client = server.client()
    send_flood(client, WARMUP_EVENTS, "warmup")
    base, last = WARMUP_EVENTS, WARMUP_EVENTS + FLOOD_EVENTS

    # The stalled subscriber keeps gRPC's default 64 KiB receive window (no BDP
    # probing to grow it), as a client that stopped reading would.
    slow_channel = grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)])
    slow = service_grpc.IncidentServiceStub(slow_channel).StreamIncidents(
        service_pb2.StreamIncidentsRequest(after_sequence=base), timeout=SLOW_DEADLINE
    )
    readers = [Reader(f"reader-{n}") for n in range(HEALTHY_SUBSCRIBERS)]
    try:
        threads = [follow(server.address, base, last, reader) for reader in readers]
        # The first events of the flood show that every subscriber is connected.
        send_flood(client, SLOW_READS_FIRST, "first")
        slow_seen = [next(slow).event.sequence for _ in range(SLOW_READS_FIRST)]
        assert slow_seen == list(range(base + 1, base + SLOW_READS_FIRST + 1))
        rss_before = resident_memory(server)

        flood_began = time.monotonic()
        send_flood(client, FLOOD_EVENTS - SLOW_READS_FIRST, "flood")
        flood_ended = time.monotonic()
        for thread in threads:
            thread.join(timeout=60)
        rss_after = resident_memory(server)

        # Nobody waited for the stalled subscriber.
        for reader in readers:
            assert reader.error is None, f"{reader.name}: {reader.error}"
            assert reader.sequences == list(range(base + 1, last + 1)), (
                f"{reader.name} got {len(reader.sequences)} events, "
                f"first {reader.sequences[:3]}, last {reader.sequences[-3:]}"
            )
        lag = max(reader.last_event_at for reader in readers) - flood_ended
        assert lag < 30, f"readers got their last event {lag:.1f}s after the last ack"
        growth = rss_after - rss_before
        assert growth < MEMORY_BOUND, (
            f"server RSS grew {growth / MiB:.1f} MiB over {FLOOD_EVENTS} events"
        )

        # The stalled subscriber reads again: on the same stream, what was in
        # flight, then the rest caught up from storage, then the end.
        for response in slow:
            slow_seen.append(response.event.sequence)
            if slow_seen[-1] >= last:
                break
    finally:
        slow.cancel()
        slow_channel.close()
    assert slow_seen == list(range(base + 1, last + 1)), (
        f"the stalled subscriber got {len(slow_seen)} events, first {slow_seen[:3]}, "
        f"last {slow_seen[-3:]}"
    )
    assert [reader.resumes for reader in readers] == [0] * HEALTHY_SUBSCRIBERS, (
        "a subscriber was ended instead of catching up"
    )
    print(
        f"{FLOOD_EVENTS} events in {flood_ended - flood_began:.2f}s "
        f"({FLOOD_EVENTS / (flood_ended - flood_began):.0f}/s) to {HEALTHY_SUBSCRIBERS} readers "
        f"(last event {lag * 1000:.0f} ms after the last ack) and one stalled subscriber; "
        f"server RSS {rss_before / MiB:.1f} -> {rss_after / MiB:.1f} MiB "
        f"({growth / MiB:+.1f}); the stalled one then read all {len(slow_seen)} events "
        "on the same stream"
    )


# -- a database that cannot be written --------------------------------------------


class Fault:
    """One way to make the database unwritable while the server runs, and undo it."""

    cause = ""
    """What SQLite says, in the message callers get."""

    def database(self) -> Path:
        raise NotImplementedError

    def inject(self) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Undo whatever is left at the end of the test."""


class DiskFull(Fault):
    """The database lives on a small tmpfs mounted by the test; a file then takes
    every free byte. (We run as root, so file modes would not stop a write.)"""

    cause = "database or disk is full"

    def __init__(self, tmp_path: Path) -> None:
        self.disk = tmp_path / "small-disk"
        self.filler = self.disk / "filler"
        self.disk.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("mount is not installed")
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "incident-manager-test", str(self.disk)],
            capture_output=True,
            text=True,
        )
        if mount.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
        self.mounted = True

    def database(self) -> Path:
        return self.disk / "incident-manager.db"

    def inject(self) -> None:
        descriptor = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            chunk = b"\0" * MiB
            while True:
                try:
                    if os.write(descriptor, chunk) < len(chunk):
                        chunk = chunk[: len(chunk) // 2] or b"\0"
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(descriptor)
        assert shutil.disk_usage(self.disk).free == 0

    def clear(self) -> None:
        self.filler.unlink()

    def release(self) -> None:
        if self.mounted:
            # Lazily: a server process may still hold the files open.
            subprocess.run(["umount", "--lazy", str(self.disk)], check=True)
            self.mounted = False


class ReadOnlyLog(Fault):
    """The write-ahead log, which every commit appends to, is made immutable with
    `chattr +i`: unlike file modes, that stops root too."""

    cause = "disk I/O error"

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "read-only"
        self.folder.mkdir()
        self.log = self.folder / "incident-manager.db-wal"
        probe = self.folder / "probe"
        probe.touch()
        if shutil.which("chattr") is None:
            pytest.skip("chattr is not installed")
        tried = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
        if tried.returncode != 0:
            pytest.skip(f"this file system has no immutable flag: {tried.stderr.strip()}")
        subprocess.run(["chattr", "-i", str(probe)], check=True)
        probe.unlink()

    def database(self) -> Path:
        return self.folder / "incident-manager.db"

    def inject(self) -> None:
        assert self.log.exists(), "the server has not opened its write-ahead log"
        subprocess.run(["chattr", "+i", str(self.log)], check=True)

    def clear(self) -> None:
        subprocess.run(["chattr", "-i", str(self.log)], check=True)

    def release(self) -> None:
        # An immutable file left behind could not be deleted with the tmp folder.
        if self.log.exists():
            self.clear()


FAULTS: dict[str, Callable[[Path], Fault]] = {"disk-full": DiskFull, "read-only-log": ReadOnlyLog}
LOAD_SECONDS = 0.8
"""Seconds of traffic before the fault, and again once it is cleared."""


@pytest.fixture(params=sorted(FAULTS))
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fault]:
    made = FAULTS[request.param](tmp_path)
    try:
        yield made
    finally:
        made.release()


@pytest.mark.timeout(90)
def test_an_unwritable_database_refuses_writes_as_unavailable_and_recovers_by_itself(
    fault: Fault, start_process: StartProcess, rng: random.Random
) -> None:
    """Four clients send alerts (unary, batches, streams; new, duplicates and
    retries) while the database becomes unwritable. Writes fail UNAVAILABLE
    naming the cause, health turns NOT_SERVING, reads still work. With the
    clients stopped, the fault is cleared: health turns SERVING by itself (no
    traffic, no restart) and new traffic is all served. Every ack received is
    in the database with exact alert counts, on the same process and after a
    kill -9 and restart; a subscriber connected all along saw exactly the
    stored events."""
    database = fault.database()
    server = start_process(database)
    client = server.client()
    ledger = Ledger()
    watcher = Reader("watcher")
    watching = follow(server.address, 0, None, watcher)

    stop, clients = start_clients(server.address, ledger, rng, keep_trying=True)
    try:
        time.sleep(LOAD_SECONDS)
        assert ledger.outcomes["OK"] > 0, ledger.outcomes
        fault.inject()
        faulted = time.monotonic()
        eventually(
            lambda: any(c.started > faulted and c.outcome != "OK" for c in ledger.calls),
            what="a call started after the fault failed",
        )
        to_not_serving = seconds_until(
            lambda: health_status(client) == NOT_SERVING, "health NOT_SERVING"
        )
        # On-call can still read what is stored.
        assert client.list_all_incidents(), "no incident readable during the fault"
    finally:
        stop_clients(stop, clients)
    during = ledger.outcomes
    acked_before_clearing = len(ledger.acks)

    fault.clear()
    to_serving = seconds_until(lambda: health_status(client) == SERVING, "health SERVING again")
    assert server.popen.poll() is None, "the server exited"
    cleared = time.monotonic()
    stop, clients = start_clients(server.address, ledger, rng, keep_trying=True)
    try:
        time.sleep(LOAD_SECONDS)
    finally:
        stop_clients(stop, clients)

    problems = ledger.problems
    assert not problems, problems[:10]
    refused = [c for c in ledger.calls if c.outcome != "OK"]
    assert refused, "no call failed while the database could not be written"
    assert {c.outcome for c in refused} == {"UNAVAILABLE"}, first(refused)
    unclear = [
        c
        for c in refused
        if not ("storage is unavailable" in c.details and fault.cause in c.details)
    ]
    assert not unclear, f"refusals that do not say why: {first(unclear)}"
    after_clearing = [c for c in ledger.calls if c.started > cleared]
    assert after_clearing, "no call was made after the fault was cleared"
    failed_after = [c for c in after_clearing if c.outcome != "OK"]
    assert not failed_after, f"calls failed after the fault was cleared: {first(failed_after)}"

    checked_live = assert_the_database_holds_the_ledger(client, ledger)
    last = last_stored_sequence(client)
    eventually(lambda: watcher.sequences[-1:] == [last], what="the watcher got the last event")
    watcher.stop()
    watching.join(timeout=CALL_TIMEOUT)
    assert watcher.error is None, watcher.error

    server.signal(signal.SIGKILL)
    server.wait_for_exit(timeout=10)
    restarted = start_process(database)
    checked_restarted = assert_the_database_holds_the_ledger(restarted.client(), ledger)
    stored = Reader("stored")
    read_events(restarted.address, 0, last, stored)
    assert stored.error is None, stored.error
    assert watcher.events == stored.events, "live events differ from the stored ones"
    print(
        f"{type(fault).__name__}: calls before clearing {dict(during)}, "
        f"{acked_before_clearing} alerts acked; NOT_SERVING {to_not_serving:.2f}s after the "
        f"first refusal, SERVING {to_serving:.2f}s after clearing with no traffic; "
        f"{len(after_clearing)} calls after, all OK; checked live {checked_live}, "
        f"after kill -9 {checked_restarted}; {len(stored.events)} events, watcher saw "
        f"the same; e.g. {refused[0].details!r}"
    )
