"""One server interceptor around every call: who is calling, may they, is there room,
and what happened (metrics and one log line).

It wraps the method handlers grpc finds, for all four call types. A
server-streaming handler may yield its responses or write them with
`context.write` (the health service's Watch does); the wrapper handles both.

Who the caller is and what it may call are decided in `auth.py`; this module
only runs those checks before each call.

Concurrency is limited per method, not per server: grpc's own
`maximum_concurrent_rpcs` would count long-lived StreamIncidents subscribers
and health checks alike, and could starve the probes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from incident_manager.domain.access import Principal
from incident_manager.entrypoints.auth import Authenticator, Denied, MethodPolicy
from incident_manager.entrypoints.metrics import MethodMetrics, Metrics

log = logging.getLogger("incident_manager.rpc")

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler


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


@dataclass(frozen=True)
class _Method:
    """What the interceptor knows of one method: its name, who may call it, its limit."""

    name: str
    policy: MethodPolicy
    limit: ConcurrencyLimit | None
    metrics: MethodMetrics | None


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
    """Admits each call (authentication, role, concurrency limit), then records it."""

    def __init__(
        self,
        policies: Callable[[str], MethodPolicy],
        limits: Callable[[str], ConcurrencyLimit | None],
        authenticator: Authenticator,
        metrics: Metrics | None,
        rpc_log: str = "all",
    ) -> None:
        self.policies = policies
        self.limits = limits
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
        service, _, name = method.strip("/").rpartition("/")
        kind = {
            (False, False): "unary",
            (True, False): "client_stream",
            (False, True): "server_stream",
            (True, True): "bidi_stream",
        }[(handler.request_streaming, handler.response_streaming)]
        spec = _Method(
            method,
            self.policies(method),
            self.limits(method),
            self.metrics.for_method(kind, service, name) if self.metrics else None,
        )
        # grpc's stubs type behaviours as synchronous; on a grpc.aio server they are async.
        behaviors: Any = handler
        codecs: Mapping[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if kind == "unary":
            return grpc.unary_unary_rpc_method_handler(
                self._unary(spec, behaviors.unary_unary), **codecs
            )
        if kind == "server_stream":
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(spec, behaviors.unary_stream, False), **codecs
            )
        if kind == "client_stream":
            return grpc.stream_unary_rpc_method_handler(
                self._unary(spec, behaviors.stream_unary, True), **codecs
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(spec, behaviors.stream_stream, True), **codecs
        )

    def _unary(
        self,
        spec: _Method,
        behavior: Callable[[Any, Context], Awaitable[Any]],
        streaming_requests: bool = False,
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        metrics = spec.metrics

        async def wrapper(request: Any, context: Context) -> Any:
            call = self._start(metrics, context)
            try:
                request = await self._admit(spec, call, context, request, streaming_requests)
                call.response = await behavior(request, context)
                if metrics is not None:
                    metrics.sent.inc()
                return call.response
            except BaseException as error:
                call.error = error
                raise
            finally:
                self._finish(spec.name, call, context)

        return wrapper

    def _streaming(
        self,
        spec: _Method,
        behavior: Callable[[Any, Context], Any],
        streaming_requests: bool,
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        metrics = spec.metrics

        async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
            call = self._start(metrics, context)
            try:
                request = await self._admit(spec, call, context, request, streaming_requests)
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
                self._finish(spec.name, call, context)

        return wrapper

    # -- the checks and the record ------------------------------------------

    def _start(self, metrics: MethodMetrics | None, context: Context) -> _Call:
        # The peer is read now: reading it once the call is torn down (a stream
        # finishing at shutdown) crashes grpc with a segmentation fault.
        return _Call(metrics, context.peer() if self.rpc_log != "off" else "")

    async def _admit(
        self, spec: _Method, call: _Call, context: Context, request: Any, streaming_requests: bool
    ) -> Any:
        """Authenticate, authorize and take a slot, or abort; returns the request to serve."""
        try:
            call.principal = self.authenticator.admit(spec.name, spec.policy, context)
            limit = spec.limit
            if limit is not None:
                if not limit.try_acquire():
                    raise Denied(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"too many {limit.what} in progress ({limit.maximum}, the limit set by "
                        f"{limit.setting}); retry with backoff",
                    )
                call.acquired = limit
        except Denied as denied:
            call.principal = call.principal or denied.principal
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
