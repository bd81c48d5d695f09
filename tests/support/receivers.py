"""Real receivers for pages: an HTTP webhook receiver (aiohttp) that records each request,
with a Standard Webhooks verifier written from the specification, and an SMTP mailbox
(aiosmtpd) that records each message. Tests script their answers."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

PASSWORD = "correct horse battery staple"
"""The password the mailbox accepts for the login `pager`."""


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks 1.0, "Verifying signatures": the three headers must be present, the
    timestamp within 5 minutes, and one `v1,` signature in the space-separated list must be
    the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`, compared in constant time."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and stamp and signatures) or not stamp.isdigit():
        return False
    if abs(time.time() - int(stamp)) > 5 * 60:
        return False
    # The spec's secrets are `whsec_` + base64; this project also takes a plain secret as bytes.
    prefix = "whsec_"
    key = base64.b64decode(secret[len(prefix) :]) if secret.startswith(prefix) else secret.encode()
    expected = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    for entry in signatures.split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            return True
    return False


@dataclass
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    path: str


Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """A webhook receiver: answers each request with the next scripted behaviour (then 200)
    and records what it got."""

    received: list[Received] = field(default_factory=list)
    script: list[Behaviour] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.received.append(Received(headers, body, request.path_qs))
        if self.script:
            return await self.script.pop(0)(request)
        return web.Response(status=200, text="thanks")

    def then(self, *behaviours: Behaviour) -> None:
        self.script.extend(behaviours)


def status(code: int, **headers: str) -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers=headers, text=f"answer {code}")

    return answer


def hang(seconds: float) -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(status=200)

    return answer


def drop_connection() -> Behaviour:
    async def answer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        # Never answered: the client sees the connection end mid-request.
        await asyncio.sleep(5)
        return web.Response(status=200)

    return answer


@dataclass
class ReceivedMail:
    """One message as the server accepted it."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    over_tls: bool
    authenticated: bool


@dataclass
class Mailbox:
    """An aiosmtpd handler that records accepted messages and can refuse on cue."""

    received: list[ReceivedMail] = field(default_factory=list)
    refuse_recipients: dict[str, str] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if address in self.refuse_recipients:
            return self.refuse_recipients[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(
            ReceivedMail(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                message,
                over_tls=session.ssl is not None,
                authenticated=bool(session.authenticated),
            )
        )
        return "250 OK queued as 4F2A1"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.logins.append((auth_data.login, auth_data.password))
        ok = auth_data.login == b"pager" and auth_data.password == PASSWORD.encode()
        # handled=False: aiosmtpd answers a failure with 535 itself.
        return AuthResult(success=ok, handled=False)


class LoopbackController(Controller):
    """aiosmtpd's Controller on a port the OS chooses: it learns the port before its
    start-up probe connects."""

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


@asynccontextmanager
async def webhook_receiver(recorder: Receiver | None = None) -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1 (a free port) for POSTs to any path: `recorder`
    (a Receiver subclass may add to what is recorded), or a new Receiver."""
    recorder = recorder if recorder is not None else Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", recorder.handle)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    recorder.url = str(server.make_url("/hook"))
    try:
        yield recorder
    finally:
        await server.close()
