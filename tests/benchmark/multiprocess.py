"""Does a second server process pay on this machine? The bare server, 1 vs 2 processes.

    python -m tests.benchmark.multiprocess

Runs the bare grpc.aio server (no work) as one process, then as two sharing
the port (grpc sets SO_REUSEPORT by default), and drives each with h2load,
twice, alternating. If the framework's own ceiling does not rise with a
second process, neither would ours.
"""

from __future__ import annotations

import subprocess
import sys
import time

import grpc

from generated.incident_manager.v1 import alert_ingestion_service_pb2 as ingestion_pb2
from tests.benchmark.run import ROOT, alert, h2load, percentile
from tests.support import free_port

METHOD = "/incident_manager.v1.AlertIngestionService/SubmitAlert"


def start(processes: int, port: int) -> list[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "tests.benchmark.bare", "--listen", f"127.0.0.1:{port}"]
    started = [subprocess.Popen(argv, cwd=ROOT) for _ in range(processes)]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=20)
    channel.close()
    time.sleep(1)  # let every process bind before the load starts
    return started


def main() -> None:
    body = ingestion_pb2.SubmitAlertRequest(alert=alert(0)).SerializeToString()
    for processes in (1, 2, 1, 2):
        port = free_port()
        started = start(processes, port)
        try:
            rate, latencies = h2load(f"127.0.0.1:{port}", METHOD, body, 40_000)
        finally:
            for process in started:
                process.terminate()
                process.wait()
        print(
            f"{processes} bare process(es): {rate:,.0f} calls/s, "
            f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
