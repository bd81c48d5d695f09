"""Profile the server under a batch load with py-spy (pip install py-spy).

    python -m tests.benchmark.profile [--alerts 60000] [--out profile.txt]

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

from tests.benchmark.run import alert, batch_load, our_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=60_000)
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
                "200",
                "-d",
                "600",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        try:
            rate, _ = asyncio.run(
                batch_load(server.address, lambda i: alert(i, distinct_every=10), args.alerts)
            )
        finally:
            spy.send_signal(2)  # py-spy writes its output on SIGINT
            spy.wait(timeout=60)
            server.stop()
    print(f"{rate:,.0f} alerts/s; profile in {args.out}")


if __name__ == "__main__":
    main()
