"""A webhook receiver on a thread of its own, for tests that drive server processes with
blocking calls, and the smallest paging file that pages it.

`receiver_thread()` serves `webhook_receiver()` on an event loop of its own thread, so
the test's thread can make blocking gRPC calls and signal processes while deliveries
arrive. The receiver checks every signature and notes, for every request, its
`webhook-id`, its path and when (`time.monotonic()`) it arrived and was answered; a
test makes it answer slowly by setting `delay`, so deliveries are in flight when a
process is killed. Reading `hits` or setting `delay` from the test's thread is safe:
both are single reference reads or writes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from aiohttp import web

from generated.incident_manager.v1 import paging_service_pb2 as paging_pb2
from generated.incident_manager.v1 import paging_service_pb2_grpc as paging_grpc
from tests.support.processes import CALL_TIMEOUT
from tests.support.receivers import Receiver, verify_standard_webhook, webhook_receiver

SECRET_ENV = "HOOK_SECRET"
"""The environment variable the paging file's channel reads its signing secret from."""
SECRET = "whsec_cHJvY2Vzcy10ZXN0cy1zaWduaW5nLXNlY3JldC0zMmI="
"""The signing secret the server processes get and the receiver checks."""


@dataclass
class Hit:
    """One request the receiver got."""

    webhook_id: str
    incident_id: str
    """From the body (`data.incident.id`); empty if the body is not a page."""
    path: str
    signed: bool
    """Whether its Standard Webhooks signature verified with `SECRET`."""
    arrived: float
    answered: float | None = None
    """When its handler finished (after the delay); None until then."""

    def answered_before(self, moment: float) -> bool:
        """Whether the receiver had answered it by `moment`."""
        return self.answered is not None and self.answered <= moment


@dataclass
class TimedReceiver(Receiver):
    """A Receiver that also keeps a `Hit` per request and waits `delay` seconds before
    answering each (200)."""

    secret: str = SECRET
    delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.read()  # aiohttp keeps the body: Receiver.handle reads it again
        headers = {name.lower(): value for name, value in request.headers.items()}
        hit = Hit(
            webhook_id=headers.get("webhook-id", ""),
            incident_id=_incident_of(body),
            path=request.path,
            signed=verify_standard_webhook(self.secret, headers, body),
            arrived=arrived,
        )
        self.hits.append(hit)
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        response = await super().handle(request)
        hit.answered = time.monotonic()
        return response

    def seen(self) -> list[Hit]:
        """Every request so far, in the order they arrived."""
        return list(self.hits)

    def url_for(self, name: str) -> str:
        """The receiver's URL with `/name` appended: a path tells its senders apart."""
        return f"{self.url}/{name}"


def _incident_of(body: bytes) -> str:
    try:
        incident = json.loads(body)["data"]["incident"]["id"]
    except (ValueError, KeyError, TypeError):
        return ""
    return incident if isinstance(incident, str) else ""


@contextmanager
def receiver_thread() -> Iterator[TimedReceiver]:
    """A TimedReceiver on 127.0.0.1 (a free port), served from a thread of its own until
    the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="webhook-receiver", daemon=True)
    thread.start()
    receiver = TimedReceiver()
    serving = webhook_receiver(receiver)
    try:
        asyncio.run_coroutine_threadsafe(serving.__aenter__(), loop).result(timeout=10)
        try:
            yield receiver
        finally:
            receiver.delay = 0.0
            asyncio.run_coroutine_threadsafe(serving.__aexit__(None, None, None), loop).result(
                timeout=30
            )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def paging_file(channels: Sequence[tuple[str, str]], policy_channel: str | None = None) -> str:
    """A paging configuration with webhook channels (id, url), signed with `SECRET_ENV`,
    and one route for everything to a policy whose only level, at 0s, notifies
    `policy_channel` (by default the first channel)."""
    lines = ["channels:"]
    for channel_id, url in channels:
        lines += [
            f"  - id: {channel_id}",
            "    type: webhook",
            f"    url: {url}",
            f"    secret_env: {SECRET_ENV}",
            # Shorter than the 2 s lease the replica tests use (the server refuses otherwise).
            "    timeout: 1s",
        ]
    lines += [
        "escalation_policies:",
        "  - id: page-once",
        "    levels:",
        "      - after: 0s",
        f"        notify: [{{channel: {policy_channel or channels[0][0]}}}]",
        "routes:",
        "  - policy: page-once",
    ]
    return "\n".join(lines) + "\n"


def notifications(channel: grpc.Channel, incident_id: str) -> list[paging_pb2.Notification]:
    """The incident's whole delivery ledger (ListNotifications, page after page)."""
    stub = paging_grpc.PagingServiceStub(channel)
    rows: list[paging_pb2.Notification] = []
    token = ""
    while True:
        page = stub.ListNotifications(
            paging_pb2.ListNotificationsRequest(
                incident_id=incident_id, page_size=100, page_token=token
            ),
            timeout=CALL_TIMEOUT,
        )
        rows.extend(page.notifications)
        token = page.next_page_token
        if not token:
            return rows
