"""One connection to the server: the channel, the credentials, and every call made through it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2_grpc,
    incident_service_pb2_grpc,
    paging_service_pb2_grpc,
)
from incident_manager.cli.contexts import Settings
from incident_manager.cli.failures import from_rpc_error, usage

CALL_TIMEOUT = 15.0
"""Seconds a unary call may take before imctl says the server did not answer."""

Response = TypeVar("Response")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise usage(f"cannot read the {what} file {path}: {error}") from None


def open_channel(settings: Settings) -> grpc.Channel:
    """A plaintext or TLS channel to `settings.server` (no connection is made yet)."""
    if not settings.tls:
        return grpc.insecure_channel(settings.server)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(settings.ca, "--ca") if settings.ca else None,
        private_key=_read(settings.key, "--key") if settings.key else None,
        certificate_chain=_read(settings.cert, "--cert") if settings.cert else None,
    )
    return grpc.secure_channel(settings.server, credentials)


class Server:
    """The server's three services on one channel, each call turning failures into `Failure`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.channel = open_channel(settings)
        self.incidents = incident_service_pb2_grpc.IncidentServiceStub(self.channel)
        self.ingestion = alert_ingestion_service_pb2_grpc.AlertIngestionServiceStub(self.channel)
        self.paging = paging_service_pb2_grpc.PagingServiceStub(self.channel)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        """The call metadata: the bearer token, if there is one."""
        return [("authorization", f"Bearer {self.settings.token}")] if self.settings.token else []

    def call(self, method: Callable[..., Response], request: Any) -> Response:
        """Call a unary `method` of one of the stubs with `request`."""
        try:
            return method(request, metadata=self.metadata, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.settings.server) from None

    def stream(self, method: Callable[..., Iterator[Response]], request: Any) -> Iterator[Response]:
        """Call a server-streaming `method`; the caller handles `grpc.RpcError` itself."""
        return method(request, metadata=self.metadata)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()
