"""One server interceptor around every call: who is calling, may they, is there room,
and what happened (metrics and one log line).

It wraps the method handlers grpc finds, for all four call types. A
server-streaming handler may yield its responses or write them with
`context.write` (the health service's Watch does); the wrapper handles both.

Authentication, when on, takes a bearer token from the `authorization`
metadata or, with mutual TLS, the client certificate's common name. The
principal is kept in a context variable for the servicers, which make it the
actor of the timeline events a call causes.

Concurrency is limited per method, not per server: grpc's own
`maximum_concurrent_rpcs` would count long-lived StreamIncidents subscribers
and health checks alike, and could starve the probes.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from incident_manager.domain.access import ROLE_NAMES, Credentials, Principal, Role
from incident_manager.entrypoints.metrics import MethodMetrics, Metrics

log = logging.getLogger("incident_manager.rpc")

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler

PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)
"""The authenticated caller of the call being served; None when authentication is off."""


class Access(enum.Enum):
    OPEN = "open"
    """Anyone, with or without credentials (health; reflection when configured so)."""
    AUTHENTICATED = "authenticated"
    """Any caller with valid credentials, whatever its roles."""
    ROLE = "role"
    """A caller holding the method's role."""


@dataclass(frozen=True)
class MethodPolicy:
    access: Access
    role: Role | None = None
    limit: ConcurrencyLimit | None = None


class ConcurrencyLimit:
    """At most `maximum` calls at once; more are refused with RESOURCE_EXHAUSTED.

    Used only from the event loop's thread, so a plain counter is enough.
    """

    def __init__(self, what: str, maximum: int, setting: str) -> None:
        self.what = what
        self.maximum = maximum
        self.setting = setting
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.maximum:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


class Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Authenticator:
    """Decides who the caller is. Off (everyone anonymous) without tokens or mutual TLS."""

    def __init__(self, credentials: Credentials | None, mutual_tls: bool) -> None:
        self.credentials = credentials
        self.mutual_tls = mutual_tls

    @property
    def enabled(self) -> bool:
        return self.credentials is not None or self.mutual_tls

    def identify(self, context: Context) -> Principal | None:
        """The caller, None if it presented nothing; Denied for bad credentials."""
        token = _bearer_token(context.invocation_metadata() or ())
        if token is not None:
            if self.credentials is None:
                raise Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server does not accept bearer tokens (no tokens file is configured); "
                    "authenticate with a client certificate instead",
                )
            principal = self.credentials.by_token(token)
            if principal is None:
                raise Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the bearer token is not known to this server; check that its hash is in "
                    "the tokens file (python -m incident_manager.tokens create makes both)",
                )
            return principal
        if self.mutual_tls:
            names = list(context.auth_context().get("x509_common_name") or ())
            if names:
                name = names[0].decode(errors="replace")
                if not name:
                    # grpc gives an empty name for a certificate without one.
                    raise Denied(
                        grpc.StatusCode.UNAUTHENTICATED,
                        "the client certificate has no subject common name (CN), which this "
                        "server takes as the caller's principal; issue one with a CN",
                    )
                if self.credentials is None:
                    # The certificate authority is the whole trust decision.
                    return Principal(name, frozenset({Role.ADMIN}))
                return self.credentials.by_subject(name) or Principal(name, frozenset())
        return None

    def authorize(self, method: str, policy: MethodPolicy, principal: Principal | None) -> None:
        if policy.access is Access.OPEN or not self.enabled:
            return
        if principal is None:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs credentials: send the metadata "
                "'authorization: Bearer <token>'"
                + (" or a client certificate" if self.mutual_tls else ""),
            )
        if policy.access is Access.ROLE and policy.role and not principal.has(policy.role):
            held = ", ".join(sorted(role.value for role in principal.roles)) or "no roles"
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal.name} ({held}) may not call {method}: it needs the role "
                f"'{policy.role.value}' or 'admin' (roles: {ROLE_NAMES})",
            )


def _bearer_token(metadata: Any) -> str | None:
    values = [value for key, value in metadata if key == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        # A proxy in front may have checked another entry than the one we would use.
        raise Denied(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the call has {len(values)} authorization metadata entries; send only one",
        )
    value = values[0]
    text = value if isinstance(value, str) else value.decode(errors="replace")
    scheme, _, token = text.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Denied(
            grpc.StatusCode.UNAUTHENTICATED,
            "the authorization metadata must be 'Bearer <token>'",
        )
    return token.strip()


class _Call:
    """Bookkeeping of one call, from its start to its status."""

    __slots__ = (
        "acquired", "error", "metrics", "peer", "principal", "request", "response", "started",
    )  # fmt: skip

    def __init__(self, metrics: MethodMetrics | None, peer: str = "") -> None:
        self.started = time.perf_counter()
        self.peer = peer
        self.metrics = metrics
        self.principal: Principal | None = None
        self.acquired: ConcurrencyLimit | None = None
        self.error: BaseException | None = None
        self.request: Any = None
        """The request message, kept (not for client streams) to name its incident in the log."""
        self.response: Any = None
        if metrics is not None:
            metrics.started.inc()


_SERVER_SIDE = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        policies: Callable[[str], MethodPolicy],
        authenticator: Authenticator,
        metrics: Metrics | None,
        rpc_log: str = "all",
    ) -> None:
        self.policies = policies
        self.authenticator = authenticator
        self.metrics = metrics
        self.rpc_log = rpc_log
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    # -- wrapping, per call type --------------------------------------------

    def _wrap(self, method: str, handler: Handler) -> Handler:
        policy = self.policies(method)
        service, _, name = method.strip("/").rpartition("/")
        kind = {
            (False, False): "unary",
            (True, False): "client_stream",
            (False, True): "server_stream",
            (True, True): "bidi_stream",
        }[(handler.request_streaming, handler.response_streaming)]
        metrics = self.metrics.for_method(kind, service, name) if self.metrics else None
        # grpc's stubs type behaviours as synchronous; on a grpc.aio server they are async.
        behaviors: Any = handler
        codecs: Mapping[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if kind == "unary":
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, policy, metrics, behaviors.unary_unary), **codecs
            )
        if kind == "server_stream":
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, policy, metrics, behaviors.unary_stream, False), **codecs
            )
        if kind == "client_stream":
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, policy, metrics, behaviors.stream_unary, True), **codecs
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(method, policy, metrics, behaviors.stream_stream, True), **codecs
        )

    def _unary(
        self,
        method: str,
        policy: MethodPolicy,
        metrics: MethodMetrics | None,
        behavior: Callable[[Any, Context], Awaitable[Any]],
        streaming_requests: bool = False,
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def wrapper(request: Any, context: Context) -> Any:
            call = self._start(metrics, context)
            try:
                request = await self._admit(
                    method, policy, call, context, request, streaming_requests
                )
                call.response = await behavior(request, context)
                if metrics is not None:
                    metrics.sent.inc()
                return call.response
            except BaseException as error:
                call.error = error
                raise
            finally:
                self._finish(method, call, context)

        return wrapper

    def _streaming(
        self,
        method: str,
        policy: MethodPolicy,
        metrics: MethodMetrics | None,
        behavior: Callable[[Any, Context], Any],
        streaming_requests: bool,
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
            call = self._start(metrics, context)
            try:
                request = await self._admit(
                    method, policy, call, context, request, streaming_requests
                )
                given: Any = context
                if metrics is not None and not inspect.isasyncgenfunction(behavior):
                    # Its messages go out through context.write, not through us.
                    given = _CountedWrites(context, metrics)
                result = behavior(request, given)
                if inspect.isasyncgen(result):
                    async for response in result:
                        if metrics is not None:
                            metrics.sent.inc()
                        yield response
                else:  # the handler writes with context.write (health Watch)
                    await result
            except BaseException as error:
                call.error = error
                raise
            finally:
                self._finish(method, call, context)

        return wrapper

    # -- the checks and the record ------------------------------------------

    def _start(self, metrics: MethodMetrics | None, context: Context) -> _Call:
        # The peer is read now: reading it once the call is torn down (a stream
        # finishing at shutdown) crashes grpc with a segmentation fault.
        return _Call(metrics, context.peer() if self.rpc_log != "off" else "")

    async def _admit(
        self,
        method: str,
        policy: MethodPolicy,
        call: _Call,
        context: Context,
        request: Any,
        streaming_requests: bool,
    ) -> Any:
        """Authenticate, authorize and take a slot, or abort; returns the request to serve."""
        try:
            # Open methods ignore credentials: a stale token must not fail a probe.
            if self.authenticator.enabled and policy.access is not Access.OPEN:
                call.principal = self.authenticator.identify(context)
                self.authenticator.authorize(method, policy, call.principal)
                PRINCIPAL.set(call.principal)
            limit = policy.limit
            if limit is not None:
                if not limit.try_acquire():
                    raise Denied(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"too many {limit.what} in progress ({limit.maximum}, the limit set by "
                        f"{limit.setting}); retry with backoff",
                    )
                call.acquired = limit
        except Denied as denied:
            await context.abort(denied.code, denied.message)
        if streaming_requests:
            return _counted(request, call.metrics)
        if call.metrics is not None:
            call.metrics.received.inc()
        call.request = request
        return request

    def _finish(self, method: str, call: _Call, context: Context) -> None:
        if call.acquired is not None:
            call.acquired.release()
        code = _status_code(context, call.error)
        seconds = time.perf_counter() - call.started
        if call.metrics is not None:
            call.metrics.handled(code, seconds)
        if self.rpc_log == "off" or (self.rpc_log == "errors" and code is grpc.StatusCode.OK):
            return
        level = logging.WARNING if code in _SERVER_SIDE else logging.INFO
        if not log.isEnabledFor(level):
            return
        extra: dict[str, object] = {
            "method": method,
            "grpc_code": code.name,
            "duration_ms": round(seconds * 1000, 3),
            "peer": call.peer,
        }
        if call.principal is not None:
            extra["principal"] = call.principal.name
        incident_id = _incident_id(call.request, call.response)
        if incident_id:
            extra["incident_id"] = incident_id
        if code is not grpc.StatusCode.OK:
            details = context.details()
            if details:
                extra["error"] = details if isinstance(details, str) else details.decode()
        log.log(level, "rpc", extra=extra)


class _CountedWrites:
    """A servicer context that counts the messages a handler sends with `write`."""

    def __init__(self, context: Context, metrics: MethodMetrics) -> None:
        self._context = context
        self._metrics = metrics

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._metrics.sent.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _status_code(context: Context, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int) and code in _CODES:
        return _CODES[code]
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    if isinstance(error, asyncio.CancelledError):
        # grpc cancels the handler both when the client gives up and when the
        # deadline passes; the client sees DEADLINE_EXCEEDED then, and so must we.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


async def _counted(
    requests: AsyncIterator[Any], metrics: MethodMetrics | None
) -> AsyncIterator[Any]:
    async for request in requests:
        if metrics is not None:
            metrics.received.inc()
        yield request


def _incident_id(request: Any, response: Any) -> str:
    """The incident a call was about, for its log line; empty if none."""
    for candidate in (response, request):
        if not isinstance(candidate, Message):
            continue
        message: Any = candidate
        fields = message.DESCRIPTOR.fields_by_name
        if "incident_id" in fields and message.incident_id:
            return str(message.incident_id)
        if "incident" in fields and message.HasField("incident"):
            return str(message.incident.id)
        if "ack" in fields and message.HasField("ack") and message.ack.incident_id:
            return str(message.ack.incident_id)
        if "id" in fields and message.DESCRIPTOR.full_name.endswith(
            ("GetIncidentRequest", "ResolveIncidentRequest")
        ):
            return str(message.id)
    return ""
