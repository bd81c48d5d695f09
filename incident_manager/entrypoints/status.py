"""Domain errors become gRPC statuses here, and only here.

Every status carries a `google.rpc.ErrorInfo` (an UPPER_SNAKE reason in our
domain, with metadata such as the incident id) and, for bad input, a
`google.rpc.BadRequest` listing each offending field. Anything unexpected is
logged with its traceback and reaches the client as INTERNAL with an error
id to quote, never with the traceback.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from functools import wraps
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from incident_manager.domain.errors import (
    ActorMismatch,
    ConcurrentModification,
    DomainError,
    EtagMismatch,
    IncidentNotFound,
    InvalidTransition,
    PagingObjectNotFound,
    RateLimited,
    SequenceOutOfRange,
    ShuttingDown,
    SourceNotAllowed,
    StorageUnavailable,
    ValidationError,
)
from incident_manager.entrypoints.auth import explained

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

ERROR_DOMAIN = "incident-manager.llmops"

STATUS_CODES: dict[type[DomainError], grpc.StatusCode] = {
    ValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    IncidentNotFound: grpc.StatusCode.NOT_FOUND,
    PagingObjectNotFound: grpc.StatusCode.NOT_FOUND,
    InvalidTransition: grpc.StatusCode.FAILED_PRECONDITION,
    EtagMismatch: grpc.StatusCode.ABORTED,
    ConcurrentModification: grpc.StatusCode.ABORTED,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    SequenceOutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
    ActorMismatch: grpc.StatusCode.PERMISSION_DENIED,
    SourceNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code_of(error: DomainError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        code = STATUS_CODES.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# The status travels in HTTP/2 trailers: `grpc-message` percent-encoded (a
# 4-byte character becomes 12 bytes) and the details base64-encoded. Clients
# refuse trailers past 8 KiB (grpc's soft limit) and then report
# RESOURCE_EXHAUSTED instead of our error, so sizes are budgeted in bytes.
MAX_MESSAGE_BYTES = 500
MAX_DETAIL_BYTES = 100
MAX_VIOLATIONS = 20
TRAILER_BUDGET = 6000


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, on a character boundary."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "..."


def _trailer_size(status: status_pb2.Status) -> int:
    # Worst case: every byte of the message percent-encoded; details base64.
    return 3 * len(status.message.encode()) + (4 * int(status.ByteSize())) // 3


def to_status(error: DomainError) -> grpc.Status:
    code = status_code_of(error)
    metadata = {key: _cut(value, MAX_DETAIL_BYTES) for key, value in error.metadata.items()}
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    extra = []
    if isinstance(error, RateLimited):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(timedelta(seconds=error.retry_after))
        extra.append(_packed(retry))
    message = _cut(explained(error), MAX_MESSAGE_BYTES)
    violations = (
        [
            error_details_pb2.BadRequest.FieldViolation(
                field=_cut(v.field, MAX_DETAIL_BYTES),
                description=_cut(v.description, MAX_DETAIL_BYTES),
            )
            for v in error.violations[:MAX_VIOLATIONS]
        ]
        if isinstance(error, ValidationError)
        else []
    )
    total = len(error.violations) if isinstance(error, ValidationError) else 0
    while True:
        details = [_packed(info), *extra]
        if isinstance(error, ValidationError):
            listed = list(violations)
            if total > len(violations):
                listed.append(
                    error_details_pb2.BadRequest.FieldViolation(
                        field="...", description=f"and {total - len(violations)} more violations"
                    )
                )
            details.append(_packed(error_details_pb2.BadRequest(field_violations=listed)))
        status = status_pb2.Status(code=code.value[0], message=message, details=details)
        if _trailer_size(status) <= TRAILER_BUDGET or not violations:
            break
        violations.pop()  # list fewer fields rather than lose the whole answer
    result: grpc.Status = rpc_status.to_status(status)
    return result


def internal_status(error_id: str) -> grpc.Status:
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error {error_id}; the server logged the details under this id",
        details=[
            _packed(
                error_details_pb2.ErrorInfo(
                    reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"error_id": error_id}
                )
            )
        ],
    )
    result: grpc.Status = rpc_status.to_status(status)
    return result


F = TypeVar("F", bound=Callable[..., Any])


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> NoReturn:
    if isinstance(error, DomainError):
        code = status_code_of(error)
        # A storage failure is the operator's problem, not the client's.
        level = logging.ERROR if isinstance(error, StorageUnavailable) else logging.INFO
        log.log(
            level,
            "request refused",
            extra={"grpc_code": code.name, "reason": error.reason, "error": error.message},
        )
        await context.abort_with_status(to_status(error))
    else:
        error_id = secrets.token_hex(6)
        log.error("unexpected error", exc_info=error, extra={"error_id": error_id})
        await context.abort_with_status(internal_status(error_id))
    raise AssertionError("abort_with_status returned")  # it always raises AbortError


def unary(method: F) -> F:
    """Wrap a unary servicer method so every error becomes a proper status."""

    @wraps(method)
    async def wrapper(self: object, request: object, context: Context) -> object:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_with(context, error)

    return cast(F, wrapper)


def streaming(method: F) -> F:
    """Wrap a streaming servicer method so every error becomes a proper status."""

    @wraps(method)
    async def wrapper(self: object, request: object, context: Context) -> AsyncIterator[object]:
        try:
            async for response in method(self, request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort_with(context, error)

    return cast(F, wrapper)
