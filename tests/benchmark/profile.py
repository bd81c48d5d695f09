"""Profile the server under a load with py-spy (pip install py-spy).

    python -m tests.benchmark.profile [--load batch|unary|stream] [--alerts 60000]
        [--out profile.txt]

The loads are make bench's: batches of 500 (90% duplicates), SubmitAlert with
64 in flight (all new), or four StreamAlerts streams (90% duplicates).

Writes py-spy's raw (collapsed stack) output; fold it with any flame graph
tool, or count frames of the `sqlite-writer` thread to see where the writer
spends its time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.benchmark.run import (
    CpuMeter,
    alert,
    alerts_from,
    batch_load,
    our_server,
    stream_load,
    unary_load,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", choices=("batch", "unary", "stream"), default="batch")
    parser.add_argument("--alerts", type=int, default=60_000)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument(
        "--gil", action="store_true", help="sample only the thread holding the GIL (py-spy --gil)"
    )
    parser.add_argument("--out", type=Path, default=Path("profile.txt"))
    args = parser.parse_args()
    beside = Path(sys.executable).parent / "py-spy"
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory() as folder:
        server = our_server(Path(folder) / "profile.db")
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "-p",
                str(server.popen.pid),
                "-o",
                str(args.out),
                "-f",
                "raw",
                "-r",
                str(args.rate),
                "-d",
                "600",
                *(["--gil"] if args.gil else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        try:
            meter = CpuMeter(server)
            if args.load == "batch":
                load = batch_load(
                    server.address, lambda i: alert(i, distinct_every=10), args.alerts
                )
            elif args.load == "unary":
                load = unary_load(server.address, alerts_from(0), args.alerts)
            else:
                load = stream_load(server.address, alerts_from(0, 10), args.alerts // 4)
            rate, _ = asyncio.run(load)
            cpu = meter.per(args.alerts)
        finally:
            spy.send_signal(2)  # py-spy writes its output on SIGINT
            spy.wait(timeout=60)
            server.stop()
    print(f"{rate:,.0f} alerts/s, {cpu:,.0f} µs of server CPU per alert; profile in {args.out}")


if __name__ == "__main__":
    main()
