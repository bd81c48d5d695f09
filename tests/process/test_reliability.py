"""Reliability under the signals operators send: `kill -9` in the middle of traffic,
round after round on one database file, and SIGTERM under load.

Several clients send alerts the three ways the service takes them (one at a
time, in small batches, on a stream), mixing new problems, duplicates of open
ones and retries. Every ack they receive goes into a ledger; once the server is
gone, a fresh server on the same database must agree with every line of it.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.load import (
    Ledger,
    assert_no_errors_logged,
    assert_the_database_holds_the_ledger,
    first,
    start_clients,
    stop_clients,
)
from tests.support.polling import eventually
from tests.support.processes import (
    CALL_TIMEOUT,
    NOT_SERVING,
    SERVING,
    ServerProcess,
    StartProcess,
)

KILL_ROUNDS = 20
SHUTDOWN_REFUSALS = (grpc.StatusCode.UNAVAILABLE.name, grpc.StatusCode.CANCELLED.name)
"""How a call may fail once the server stops listening. UNAVAILABLE is what we
want; gRPC core answers CANCELLED instead to a call it received but had not yet
handed to a handler when shutdown began (grpc/grpc#41785). Either way no handler
ran; the final check resends the call's alerts and counts them exactly."""


@pytest.mark.timeout(180)
def test_every_acked_alert_survives_twenty_kill_9_rounds(
    start_process: StartProcess, tmp_path: Path, rng: random.Random
) -> None:
    database = tmp_path / "kill-9.db"
    ledger = Ledger()
    servers: list[ServerProcess] = []
    calls_cut = 0
    began = time.monotonic()

    for round_number in range(KILL_ROUNDS):
        server = start_process(database)
        servers.append(server)
        acks_before = ledger.ack_count
        stop, clients = start_clients(server.address, ledger, rng, keep_trying=False)
        try:
            time.sleep(rng.uniform(0.2, 1.0))
            # A loaded machine can take longer to answer the first call; a round
            # must kill a server that has answered something.
            eventually(
                lambda before=acks_before: ledger.ack_count > before,  # type: ignore[misc]
                what=f"round {round_number}: a first ack",
                timeout=15,
            )
            calls_cut += ledger.in_flight
            server.signal(signal.SIGKILL)
            assert server.wait_for_exit(timeout=10) == -signal.SIGKILL
        finally:
            stop_clients(stop, clients)
        assert ledger.ack_count > acks_before, f"round {round_number}: no ack before the kill"

    problems = ledger.problems
    assert not problems, problems[:10]
    assert set(ledger.outcomes) <= {"OK", "UNAVAILABLE"}, ledger.outcomes
    assert calls_cut > 0, "every kill fell between calls: nothing was interrupted"
    acks_received = ledger.ack_count
    distinct_acked = len(ledger.acks)

    final = start_process(database)
    servers.append(final)
    checked = assert_the_database_holds_the_ledger(final.client(), ledger)
    assert_no_errors_logged(servers)
    print(
        f"{KILL_ROUNDS} kills, {len(ledger.alerts)} distinct alerts sent "
        f"({ledger.retries_sent} retries sent), {acks_received} acks received "
        f"for {distinct_acked} distinct alerts, {calls_cut} calls in flight at a kill, "
        f"calls {dict(ledger.outcomes)}, checked {checked}, "
        f"{time.monotonic() - began:.1f}s"
    )


@pytest.mark.timeout(180)
def test_sigterm_under_load_drains_then_exits_within_grace(
    start_process: StartProcess, tmp_path: Path, rng: random.Random
) -> None:
    grace, drain_delay, margin = 3.0, 1.0, 3.0
    database = tmp_path / "sigterm.db"
    server = start_process(database, "--shutdown-grace", f"{grace:g}s", "--drain-delay", "1s")
    ledger = Ledger()
    stop, clients = start_clients(server.address, ledger, rng, keep_trying=True)
    health_answers: list[tuple[float, int]] = []
    try:
        time.sleep(1.0)  # load is on
        assert ledger.ack_count > 0
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest()
            assert health.Check(check, timeout=CALL_TIMEOUT).status == SERVING

            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            # Poll until the listener closes: NOT_SERVING first, but still answering.
            while server.popen.poll() is None:
                try:
                    status = health.Check(check, timeout=1.0).status
                except grpc.RpcError as error:
                    assert error.code().name in SHUTDOWN_REFUSALS, error
                    break
                health_answers.append((time.monotonic() - signalled, status))
                time.sleep(0.02)
            returncode = server.wait_for_exit(timeout=grace + drain_delay + margin)
            exited_after = time.monotonic() - signalled
    finally:
        stop_clients(stop, clients)

    assert returncode == 0, server.stderr()
    assert exited_after < grace + drain_delay + margin
    not_serving = [at for at, status in health_answers if status == NOT_SERVING]
    assert not_serving, f"health never said NOT_SERVING: {health_answers}"
    assert not_serving[0] < 0.5, f"NOT_SERVING only {not_serving[0]:.2f}s after SIGTERM"
    assert all(status == NOT_SERVING for at, status in health_answers if at > not_serving[0])
    # During the drain delay the server still answers, health and alerts alike.
    assert not_serving[-1] > drain_delay / 2, f"health stopped answering at {not_serving[-1]:.2f}s"
    served_while_draining = [
        call.ended - signalled
        for call in ledger.calls
        if call.outcome == "OK" and call.ended > signalled + not_serving[0]
    ]
    assert served_while_draining, "no alert call succeeded once health said NOT_SERVING"

    # Calls in flight at SIGTERM, or started well inside the drain delay,
    # finish. Later ones may be refused, as UNAVAILABLE for the client to retry;
    # never INTERNAL or UNKNOWN.
    problems = ledger.problems
    assert not problems, problems[:10]
    draining = signalled + drain_delay / 2
    unfinished = [call for call in ledger.calls if call.started < draining and call.outcome != "OK"]
    assert not unfinished, f"calls in flight at shutdown that failed: {first(unfinished)}"
    refused = [call for call in ledger.calls if call.outcome != "OK"]
    unexpected = [call for call in refused if call.outcome not in SHUTDOWN_REFUSALS]
    assert not unexpected, f"calls refused with an unexpected status: {first(unexpected)}"

    restarted = start_process(database)
    checked = assert_the_database_holds_the_ledger(restarted.client(), ledger)
    assert_no_errors_logged((server, restarted))
    print(
        f"SIGTERM: NOT_SERVING after {not_serving[0] * 1000:.0f} ms, health answered until "
        f"{not_serving[-1]:.2f}s, last OK call {max(served_while_draining):.2f}s, exit 0 after "
        f"{exited_after:.2f}s; {len(ledger.alerts)} alerts sent, {ledger.ack_count} acks, "
        f"calls {dict(ledger.outcomes)}, checked {checked}"
    )
