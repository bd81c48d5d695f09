"""Reading the rich details the server attaches to a failed call.

Every error carries a `google.rpc.Status` with an `ErrorInfo`; invalid input
also carries a `BadRequest`. These work on the errors of blocking and of
asyncio stubs alike.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


def status_details(error: grpc.RpcError) -> status_pb2.Status:
    """The google.rpc.Status the server attached to an error."""
    # A failed call's error is also its grpc.Call, which is what from_call reads.
    status: status_pb2.Status | None = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    return status


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo (reason, domain, metadata) the server attached to an error."""
    for detail in status_details(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo on {error.code()}: {error.details()}")


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """field -> description from the BadRequest detail."""
    for detail in status_details(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return {v.field: v.description for v in bad_request.field_violations}
    raise AssertionError("no BadRequest detail")
