"""The webhook receiver of the paging rows, as a process of its own.

It records each page's arrival time and answers 200 at once, and checks
nothing, so what the rows measure is the server. It runs as its own process
so that the load generator's work does not delay the arrival times it
records.

    python -m tests.benchmark.receiver PORT

`POST /hook` records a page. `GET /count` answers how many are recorded.
`POST /take` answers every record as JSON `[arrival, webhook-id, incident id]`
(arrival in Unix seconds) and forgets them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web


def application() -> web.Application:
    """The receiver's routes around one list of (arrival, webhook-id, body)."""
    arrivals: list[tuple[float, str, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        arrivals.append((time.time(), request.headers.get("webhook-id", ""), body))
        return web.Response(text="ok")

    async def count(request: web.Request) -> web.Response:
        return web.json_response(len(arrivals))

    async def take(request: web.Request) -> web.Response:
        # Bodies are decoded here, after the measurement, not while pages arrive.
        records = [
            (arrival, webhook_id, json.loads(body)["data"]["incident"]["id"])
            for arrival, webhook_id, body in arrivals
        ]
        arrivals.clear()
        return web.json_response(records)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/count", count)
    app.router.add_post("/take", take)
    return app


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:`port` until the process is ended."""
    runner = web.AppRunner(application(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
