"""What every HTTP channel shares: one aiohttp session, one POST, and the sorting of transport
errors; a channel adds only its encoder (delivery -> `HttpRequest`) and its classifier
(`HttpResponse` -> `AttemptResult`).

- One `ClientSession` per `HttpClient`, created on first use inside the running loop and
  closed by `close()`; every HTTP channel of a process should share one client.
- Each attempt has its own total timeout (the request's `timeout`).
- Redirects are never followed: a 3xx is the receiver telling us to use another URL, which is
  a configuration change, and following one could send a signed page to another host.
- Connection refused, resets, a connection closed mid-request and timeouts are RETRY; a bad
  URL or a TLS certificate that does not verify is FAILED (retrying will not change it).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import metadata
from typing import Generic
from urllib.parse import urlsplit

import aiohttp

from incident_manager.adapters.channels.base import (
    AttemptResult,
    Channel,
    ChannelMisconfigured,
    Delivery,
    Redactor,
    SettingsT,
    redact,
)
from incident_manager.adapters.channels.retry import parse_retry_after

log = logging.getLogger(__name__)

MAX_RESPONSE_BODY = 4096
"""Bytes of a response body kept for the classifier (Slack answers `ok` or an error word);
the rest is not read."""

_EXCERPT = 120


def _user_agent() -> str:
    try:
        version = metadata.version("incident-manager")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        version = "dev"
    return f"incident-manager/{version}"


@dataclass(frozen=True)
class HttpRequest:
    """One POST, as an encoder builds it."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    timeout: float
    """Seconds for the whole attempt: connecting, sending, and reading the answer."""
    secrets: tuple[str, ...] = ()
    """Values to remove from any detail (a signing secret; for Slack, the whole URL)."""
    note: str = ""
    """Something the encoder wants on the ledger whatever the answer, added to the attempt's
    detail (a message template that failed, so the default message was sent)."""


@dataclass(frozen=True)
class HttpResponse:
    """What the receiver answered, as a classifier sees it."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    """Header names in lower case."""
    body: bytes = b""
    """At most `MAX_RESPONSE_BODY` bytes."""

    @property
    def retry_after(self) -> float | None:
        """The `Retry-After` header in seconds, if the receiver sent a readable one."""
        return parse_retry_after(self.headers.get("retry-after"))

    @property
    def excerpt(self) -> str:
        """The start of the body as one printable line, for a detail."""
        text = self.body[: _EXCERPT * 4].decode("utf-8", errors="replace")
        text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
        return text[:_EXCERPT]

    def describe(self) -> str:
        """`HTTP 503 Service Unavailable`, plus the start of the body when there is one."""
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = ""
        described = f"HTTP {self.status} {phrase}".rstrip()
        return f"{described}: {self.excerpt}" if self.excerpt else described


HttpEncoder = Callable[[Delivery[SettingsT]], HttpRequest]
"""Builds the request of one attempt; raises `ChannelMisconfigured` when it cannot."""

HttpClassifier = Callable[[HttpResponse], AttemptResult]
"""Says what an answer means; transport errors never reach it."""


def classify_http_status(response: HttpResponse) -> AttemptResult:
    """The Standard Webhooks handling: 2xx SENT; 408, 429 and 5xx RETRY (with the receiver's
    Retry-After); 3xx FAILED (we don't follow redirects); 410 FAILED and disables the
    channel; any other status FAILED."""
    status = response.status
    if 200 <= status < 300:
        return AttemptResult.sent(f"HTTP {status}", status)
    if status in (408, 429) or 500 <= status < 600:
        return AttemptResult.retry(response.describe(), status, response.retry_after)
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        moved = f" to {_origin(location)}" if location else ""
        return AttemptResult.failed(
            f"HTTP {status}: the receiver redirects{moved}; redirects are not followed, "
            "set the channel's url to where it should go",
            status,
        )
    if status == 410:
        return AttemptResult.failed(
            f"{response.describe()}: the receiver wants no more messages",
            status,
            disable_channel=True,
        )
    return AttemptResult.failed(response.describe(), status)


def _origin(url: str) -> str:
    """Scheme, host and port of a URL only: the path and query of a redirect target may hold
    a token."""
    try:
        parsed = urlsplit(url)
        host, port = parsed.hostname, parsed.port
    except ValueError:
        return "another URL"
    if not (parsed.scheme and host):
        return "another path"
    shown = f"[{host}]" if ":" in host else host
    return f"{parsed.scheme}://{shown}" + (f":{port}" if port else "")


KEEPALIVE = 4.0
"""Seconds an idle connection is kept for the next page. Below the 5 s that common servers
(Node's among them) keep one open, so we rarely send on a connection the receiver is closing
(which would cost the page a retry)."""


class HttpClient:
    """An aiohttp session shared by HTTP channels: created when first needed, so it belongs
    to the loop that sends; `close()` ends it (a later send would open a new one).

    At most `connections` requests are in flight at once; a further one waits for a
    connection *within its own timeout*, so the outbox should send at most that many at a
    time."""

    def __init__(self, *, connections: int = 100, user_agent: str | None = None) -> None:
        self._connections = connections
        self._user_agent = user_agent or _user_agent()
        self._session: aiohttp.ClientSession | None = None

    def _current(self) -> aiohttp.ClientSession:
        # No await between the check and the assignment: two sends can't both create one.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._connections, keepalive_timeout=KEEPALIVE
                ),
                headers={"User-Agent": self._user_agent},
                # Session cookies would carry state from one receiver's answer into the
                # next attempt; pages carry their own authentication.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def post(self, request: HttpRequest) -> HttpResponse:
        """POST the request and read the start of the answer; raises aiohttp's and asyncio's
        errors for transport failures."""
        session = self._current()
        async with session.post(
            request.url,
            data=request.body,
            headers=dict(request.headers),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=request.timeout),
        ) as response:
            body = await response.content.read(MAX_RESPONSE_BODY)
            headers = {name.lower(): value for name, value in response.headers.items()}
            return HttpResponse(response.status, headers, body)

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpChannel(Channel[SettingsT], Generic[SettingsT]):
    """A channel that POSTs: an encoder and a classifier over a shared `HttpClient`."""

    def __init__(
        self,
        encode: HttpEncoder[SettingsT],
        classify: HttpClassifier = classify_http_status,
        client: HttpClient | None = None,
    ) -> None:
        self._encode = encode
        self._classify = classify
        self._owns_client = client is None
        self._client = client or HttpClient()

    async def send(self, delivery: Delivery[SettingsT]) -> AttemptResult:
        """Encode, POST, classify; every failure becomes a redacted result."""
        try:
            request = self._encode(delivery)
        except ChannelMisconfigured as error:
            return AttemptResult.failed(str(error))
        redacted = Redactor(request.secrets)
        answer = ""
        try:
            response = await self._client.post(request)
        except Exception as error:
            result = classify_transport_error(error, request.timeout, redacted)
            if result is None:
                # Not a failure we know: worth a retry (the schedule is bounded) and a log
                # line, since it may be our bug; the message is redacted, no traceback.
                log.warning(
                    "unexpected error sending a delivery",
                    extra={"delivery_id": delivery.delivery_id, "error": redacted(repr(error))},
                )
                result = AttemptResult.retry(f"unexpected error: {type(error).__name__}")
        else:
            # Redacted before the classifier quotes it: a detail is cut to length, and a
            # secret cut in half would no longer be found and removed.
            text = response.body.decode("utf-8", errors="replace")
            answer = redacted(text)
            safe = HttpResponse(response.status, response.headers, answer.encode())
            result = self._classify(safe)
        detail = f"{result.detail}; {request.note}" if request.note else result.detail
        return AttemptResult(
            result.outcome,
            redacted(detail),
            result.status,
            result.retry_after,
            result.disable_channel,
            response=answer,
        )

    async def close(self) -> None:
        """Close the HTTP client if this channel made it; a shared one is closed by its owner."""
        if self._owns_client:
            await self._client.close()


def classify_transport_error(
    error: BaseException, timeout: float, redact: Callable[[str], str] = redact
) -> AttemptResult | None:
    """What a failure before any answer means, or None for an error we don't know. Texts
    taken from the error pass through `redact` before they are put in a detail."""

    def _reason(cause: BaseException) -> str:
        if isinstance(cause, OSError) and cause.strerror:
            return redact(cause.strerror)
        return redact(str(cause) or type(cause).__name__)

    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return AttemptResult.failed(
            f"TLS certificate of {error.host}:{error.port} not trusted: "
            f"{_reason(error.certificate_error)}"
        )
    if isinstance(error, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return AttemptResult.failed("the channel's url is not a valid http(s) URL")
    if isinstance(error, TimeoutError):
        # aiohttp's own timeouts subclass it; on 3.11 asyncio.TimeoutError is this builtin.
        return AttemptResult.retry(f"no answer within {timeout:g}s")
    if isinstance(error, aiohttp.ClientConnectorError):
        return AttemptResult.retry(
            f"cannot connect to {error.host}:{error.port}: {_reason(error.os_error)}"
        )
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return AttemptResult.retry("the receiver closed the connection before answering")
    if isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return AttemptResult.retry(f"connection failed: {_reason(error)}")
    if isinstance(error, ssl.SSLError | ConnectionError):
        return AttemptResult.retry(f"connection failed: {_reason(error)}")
    return None
