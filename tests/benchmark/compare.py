"""Before and after a change: the same load on servers built from two commits, side by side.

    python -m tests.benchmark.compare [--load unary|unary-dup|stream|batch] [--alerts 5000]
        [--rounds 3] [--bare] REV [REV ...]

Each REV (a commit, a branch, or `.` for the working tree as it is) is
exported to a temporary folder and started as its own server process on a
fresh SQLite file, all at once; then the rounds drive each in turn (the
order alternates from round to round), so a busy machine slows every side
alike. Prints each side's rates and server CPU µs per alert (user + system
from /proc/PID/stat over the load), and the medians. `--bare` adds the bare
server as a reference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc

from tests.benchmark.run import (
    ROOT,
    CpuMeter,
    Process,
    alerts_from,
    bare_server,
    batch_load,
    stream_load,
    unary_load,
)
from tests.support import free_port


class Built(Process):
    """Our server from the source tree at `root`, with the venv of this checkout."""

    def __init__(self, name: str, root: Path, database: Path) -> None:
        self.name = name
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.popen = subprocess.Popen(
            [
                sys.executable, "-m", "incident_manager", "--database", str(database),
                "--log-level", "WARNING", "--listen", self.address,
            ],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "INCIDENT_MANAGER_METRICS_LISTEN": "off", "PYTHONPATH": str(root)},
        )  # fmt: skip
        channel = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(channel).result(timeout=30)
        channel.close()


def export(rev: str, folder: Path) -> Path:
    """The source tree of `rev` (`.`: the working tree) in a folder of its own."""
    if rev == ".":
        return ROOT
    target = folder / rev.replace("/", "_")
    target.mkdir()
    archive = subprocess.run(
        ["git", "archive", rev], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


async def drive(load: str, address: str, first: int, total: int) -> float:
    if load == "unary":
        rate, _ = await unary_load(address, alerts_from(first), total)
    elif load == "unary-dup":
        rate, _ = await unary_load(address, alerts_from(first, 10), total)
    elif load == "batch":
        rate, _ = await batch_load(address, alerts_from(first, 10), total)
    else:
        rate, _ = await stream_load(address, alerts_from(first, 10), total // 4)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", choices=("unary", "unary-dup", "stream", "batch"))
    parser.add_argument("--alerts", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bare", action="store_true", help="the bare server too")
    parser.add_argument("revs", nargs="+")
    args = parser.parse_args()
    load = args.load or "unary"
    with tempfile.TemporaryDirectory(prefix="im-compare-") as name:
        folder = Path(name)
        servers: dict[str, Process] = {}
        try:
            if args.bare:
                servers["bare"] = bare_server()
            for rev in args.revs:
                servers[rev] = Built(rev, export(rev, folder), folder / f"{len(servers)}.db")
            results: dict[str, list[tuple[float, float]]] = {side: [] for side in servers}
            order = list(servers)
            for round_number in range(args.rounds):
                for side in order if round_number % 2 == 0 else order[::-1]:
                    server = servers[side]
                    meter = CpuMeter(server)
                    first = 10**8 * (round_number + 1)
                    rate = asyncio.run(drive(load, server.address, first, args.alerts))
                    results[side].append((rate, meter.per(args.alerts)))
        finally:
            for server in servers.values():
                server.stop()
    print(f"{load}, {args.alerts:,} alerts a round, {args.rounds} rounds")
    for side, runs in results.items():
        rates = sorted(rate for rate, _ in runs)
        cpus = sorted(cpu for _, cpu in runs)
        each = "  ".join(f"{rate:,.0f}/s {cpu:,.0f} µs" for rate, cpu in runs)
        print(
            f"{side}: median {rates[len(runs) // 2]:,.0f} alerts/s,"
            f" {cpus[len(runs) // 2]:,.0f} µs/alert  ({each})"
        )


if __name__ == "__main__":
    main()
