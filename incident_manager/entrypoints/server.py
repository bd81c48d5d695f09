"""Builds the gRPC server: our services, standard health, reflection, the call
interceptor (authentication, limits, metrics, logs), TLS, and /metrics.

Who may call what is decided in `auth.py`, not here."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from generated.incident_manager.v1 import (
    alert_ingestion_service_pb2_grpc,
    incident_service_pb2_grpc,
    integrations_pb2_grpc,
    paging_service_pb2_grpc,
)
from incident_manager.config import Settings, TokensFileError, env_name, read_tokens_file
from incident_manager.domain.model import IncidentState, Severity
from incident_manager.entrypoints.auth import (
    INCIDENT_SERVICE,
    INGESTION_SERVICE,
    INTEGRATION_SERVICE,
    PAGING_SERVICE,
    SERVED_FILES,
    Authenticator,
    method_policies,
)
from incident_manager.entrypoints.interceptors import CallInterceptor, ConcurrencyLimit
from incident_manager.entrypoints.metrics import Metrics
from incident_manager.entrypoints.reflection import DocumentedReflectionServicer
from incident_manager.entrypoints.servicers import (
    AlertIngestionServicer,
    IncidentServicer,
    IntegrationServicer,
    PagingServicer,
)
from incident_manager.paging import PagingFileError, load_paging_file
from incident_manager.paging.file import config_summary
from incident_manager.service.manager import IncidentManager
from incident_manager.service.scheduler import PagingWorker

log = logging.getLogger(__name__)

SERVICE_NAMES = (INCIDENT_SERVICE, INGESTION_SERVICE, INTEGRATION_SERVICE, PAGING_SERVICE)
LIVENESS = "liveness"
"""A health service name that is SERVING while the process runs, even while the
database is unavailable: for liveness probes, which should not restart a server
that is only waiting for its database."""


HEALTH_POLL_SECONDS = 1.0
"""How often storage availability is checked to drive the health service."""
GAUGE_REFRESH_SECONDS = 15.0
"""How often the open-incident gauges are recounted."""
ACTIVE_STATES = tuple(state for state in IncidentState if state.is_active)


class StartupError(Exception):
    """The server cannot start as configured; the message says what to change."""


class ListenError(StartupError):
    """The server could not listen on the configured address."""


def concurrency_limits(settings: Settings) -> Callable[[str], ConcurrencyLimit | None]:
    """How many calls of each of our methods may run at once; None for the others."""
    table: dict[str, ConcurrencyLimit] = {}
    for file in SERVED_FILES:
        for service in file.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.name == "StreamIncidents":
                    limit = ConcurrencyLimit(
                        "StreamIncidents subscribers", settings.max_subscribers, "--max-subscribers"
                    )
                elif method.name == "StreamAlerts":
                    limit = ConcurrencyLimit(
                        "StreamAlerts streams", settings.max_ingest_streams, "--max-ingest-streams"
                    )
                else:
                    limit = ConcurrencyLimit(
                        f"{method.name} calls",
                        settings.max_concurrent_calls,
                        "--max-concurrent-calls",
                    )
                table[f"/{service.full_name}/{method.name}"] = limit
    return table.get


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise StartupError(f"cannot read the {what} {path}: {error.strerror}") from error


def _tls_problem(settings: Settings) -> str:
    """Why OpenSSL cannot use the TLS files, naming the setting; empty if it can."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # The password callback stops OpenSSL from prompting for an encrypted key.
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=lambda: b"")
    except ssl.SSLError as error:
        return (
            f"cannot use --tls-cert {settings.tls_cert} with --tls-key {settings.tls_key}: "
            f"{error.reason or error}; both must be PEM, the key unencrypted and the "
            "certificate's own"
        )
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(settings.tls_client_ca)
        except ssl.SSLError as error:
            return (
                f"cannot use --tls-client-ca {settings.tls_client_ca}: {error.reason or error}; "
                "it must hold PEM CA certificates"
            )
    return ""


def _is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class IncidentServer:
    """A running gRPC server around one IncidentManager.

    `metrics` should be the manager's observer (bootstrap wires them so), or
    the alert and storage-write metrics stay at zero.
    """

    def __init__(
        self,
        manager: IncidentManager,
        settings: Settings,
        metrics: Metrics,
        worker: PagingWorker | None = None,
    ) -> None:
        self.manager = manager
        self.pager = manager.pager
        self.worker = worker
        """Runs due paging steps and deliveries; None when paging is off."""
        self.settings = settings
        self.listen = settings.listen
        try:
            credentials = read_tokens_file(settings.tokens_file) if settings.tokens_file else None
        except TokensFileError as error:
            raise StartupError(str(error)) from error
        self.authenticator = Authenticator(credentials, mutual_tls=bool(settings.tls_client_ca))
        self.metrics = metrics
        self.metrics.follow_streams(lambda: manager.hub.subscriber_count, lambda: manager.catch_ups)
        self.metrics_port = 0
        keepalive_ms = int(settings.keepalive_time.total_seconds() * 1000)
        self.server = grpc.aio.server(
            interceptors=[
                CallInterceptor(
                    method_policies(settings),
                    concurrency_limits(settings),
                    self.authenticator,
                    self.metrics,
                    settings.rpc_log,
                )
            ],
            options=[
                # Without this, Linux lets a second server bind the same port and
                # silently share the traffic with the first.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.keepalive_time_ms", keepalive_ms),
                (
                    "grpc.keepalive_timeout_ms",
                    int(settings.keepalive_timeout.total_seconds() * 1000),
                ),
                ("grpc.keepalive_permit_without_calls", 1),
                (
                    "grpc.http2.min_ping_interval_without_data_ms",
                    int(settings.min_client_ping_interval.total_seconds() * 1000),
                ),
                ("grpc.http2.max_ping_strikes", 2),
            ],
            compression=COMPRESSION[settings.compression],
        )
        self.health = health.aio.HealthServicer()
        self._serving = False
        self._storage_ok = True
        self._tasks: list[asyncio.Task[None]] = []
        incident_service_pb2_grpc.add_IncidentServiceServicer_to_server(
            IncidentServicer(manager), self.server
        )
        alert_ingestion_service_pb2_grpc.add_AlertIngestionServiceServicer_to_server(
            AlertIngestionServicer(manager, lambda: self._serving), self.server
        )
        integrations_pb2_grpc.add_IntegrationServiceServicer_to_server(
            IntegrationServicer(manager), self.server
        )
        paging_service_pb2_grpc.add_PagingServiceServicer_to_server(
            PagingServicer(self.pager), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.reflection != "off":
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                DocumentedReflectionServicer(
                    (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
                ),
                self.server,
            )
        self.health_server: grpc.aio.Server | None = None
        if settings.health_listen:
            self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        self.port = 0

    def _credentials(self) -> grpc.ServerCredentials | None:
        settings = self.settings
        if not settings.tls:
            return None
        return grpc.ssl_server_credentials(
            [(_read(settings.tls_key, "TLS key"), _read(settings.tls_cert, "TLS certificate"))],
            root_certificates=(
                _read(settings.tls_client_ca, "client CA bundle")
                if settings.tls_client_ca
                else None
            ),
            require_client_auth=bool(settings.tls_client_ca),
        )

    async def start(self) -> int:
        """Listen and serve; returns the bound port (useful with port 0)."""
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        credentials = self._credentials()
        try:
            self.port = _bind(self.server, self.listen, credentials)
        except ListenError:
            # grpc reports unusable TLS files as a failure to bind: say which file.
            problem = _tls_problem(self.settings) if credentials is not None else ""
            if problem:
                raise StartupError(problem) from None
            raise
        if self.health_server is not None:
            _bind(self.health_server, self.settings.health_listen, None, "health_listen")
        if self.settings.metrics_listen != "off":
            # Before serving, like the gRPC port: a server that quietly ran
            # without metrics would be invisible to the alerts meant to watch it.
            self.metrics_port = _serve_metrics(self.metrics, self.settings.metrics_listen)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        await self._set_health(True)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        self._warn_if_exposed()
        self._tasks = [
            asyncio.create_task(self._watch_storage()),
            asyncio.create_task(self._count_open_incidents()),
        ]
        self._start_paging()
        log.info(
            "serving",
            extra={
                "listen": self.listen,
                "port": self.port,
                "tls": "mutual" if self.settings.tls_client_ca else bool(credentials),
                "authentication": self.authenticator.enabled,
                "metrics_port": self.metrics_port,
            },
        )
        return self.port

    def _warn_if_exposed(self) -> None:
        credentials = self.authenticator.credentials
        if credentials is not None and not credentials.tokens and not credentials.subjects:
            log.warning(
                "the tokens file %s lists no credentials: every call but health (and open "
                "reflection) will be refused as UNAUTHENTICATED",
                self.settings.tokens_file,
            )
        if credentials is not None and credentials.subjects and not self.settings.tls_client_ca:
            log.warning(
                "the tokens file's subject: lines are ignored: they apply to client "
                "certificates, which only --tls-client-ca (mutual TLS) asks for"
            )
        if self.authenticator.enabled or _is_loopback(self.listen):
            return
        if self.settings.tls:
            log.warning(
                "INSECURE: serving %s with TLS but without authentication; anyone who can "
                "reach this address can read and change incidents. Set --tokens-file or "
                "--tls-client-ca (see docs/OPERATIONS.md).",
                self.listen,
            )
            return
        log.warning(
            "INSECURE: serving %s without TLS and without authentication; anyone who can "
            "reach this address can read and change incidents. Set --tls-cert/--tls-key and "
            "--tokens-file (see docs/OPERATIONS.md), or listen on 127.0.0.1 only.",
            self.listen,
        )

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def _watch_storage(self) -> None:
        """Health follows the database: NOT_SERVING while it cannot be used."""
        while self._serving:
            available = self.manager.storage_available
            if available != self._storage_ok and self._serving:
                self._storage_ok = available
                self.metrics.storage_available.set(1 if available else 0)
                await self._set_health(available)
                if available:
                    log.warning("storage is available again; health is SERVING")
                else:
                    log.error("storage is unavailable; health is NOT_SERVING until it returns")
            await asyncio.sleep(HEALTH_POLL_SECONDS)

    async def _count_open_incidents(self) -> None:
        while self._serving:
            with contextlib.suppress(Exception):  # storage down: keep the last counts
                await self.refresh_gauges()
            await asyncio.sleep(GAUGE_REFRESH_SECONDS)

    def _start_paging(self) -> None:
        config = self.pager.rules.current
        if self.worker is None or config is None:
            log.warning(
                "paging is off: no --paging-config (INCIDENT_MANAGER_PAGING_CONFIG) was given,"
                " so incidents are stored and streamed but nobody will be paged"
            )
            return
        self.worker.start()
        log.info(
            "paging is on",
            extra={"paging_config": self.settings.paging_config, "summary": config_summary(config)},
        )

    def reload_paging(self) -> bool:
        """Read the paging file again (SIGHUP); a bad file is refused and the old one stays."""
        path = self.settings.paging_config
        if not path or self.worker is None:
            log.warning("SIGHUP: there is no paging configuration file to reload")
            return False
        try:
            loaded = load_paging_file(path)
        except PagingFileError as error:
            self.metrics.paging_reloads.labels("refused").inc()
            log.error(
                "SIGHUP: the paging configuration was NOT reloaded; the previous one stays in"
                " force:\n%s",
                "\n".join(error.messages),
            )
            return False
        problem = loaded.config.lease_problem(self.settings.paging_lease)
        if problem:
            self.metrics.paging_reloads.labels("refused").inc()
            log.error(
                "SIGHUP: the paging configuration was NOT reloaded; the previous one stays in"
                " force: %s",
                problem,
            )
            return False
        for warning in loaded.warnings:
            log.warning("paging configuration: %s", warning)
        self.pager.rules.replace(loaded.config)
        self.worker.wake()
        self.metrics.paging_reloads.labels("applied").inc()
        log.info(
            "SIGHUP: paging configuration reloaded",
            extra={"paging_config": path, "summary": config_summary(loaded.config)},
        )
        return True

    async def refresh_gauges(self) -> None:
        """Recount open incidents by severity and state (also done every 15 s)."""
        counts = await self.manager.count_open_incidents()
        for severity in Severity:
            for state in ACTIVE_STATES:
                count = counts.get((severity, state), 0)
                self.metrics.open_incidents.labels(severity.name, state.name).set(count)

    async def stop(self, grace: float, drain_delay: float = 0) -> None:
        """Turn health NOT_SERVING, end event streams, let calls finish, close storage.

        During `drain_delay` the server still accepts calls while reporting
        NOT_SERVING, so probes and load balancers can move traffic away
        before the listener closes.
        """
        self._serving = False
        for task in self._tasks:
            task.cancel()
        await self.health.enter_graceful_shutdown()
        log.info(
            "shutting down", extra={"grace_seconds": grace, "drain_delay_seconds": drain_delay}
        )
        if drain_delay > 0:
            await asyncio.sleep(drain_delay)
        self.manager.close_streams()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.worker is not None:
            await self.worker.stop()
        self.metrics.stop()
        await self.manager.close()
        log.info("stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()


COMPRESSION = {
    "none": grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
}


def _serve_metrics(metrics: Metrics, listen: str) -> int:
    """Serve /metrics on `listen`; ListenError, as for a taken gRPC port, if it cannot."""
    try:
        return metrics.serve(listen)
    except OSError as error:
        raise ListenError(
            f"cannot listen on {listen} for metrics: {error.strerror or error}. Is another "
            "server already using this port? Choose another with --metrics-listen or "
            f"{env_name('metrics_listen')}, or turn metrics off with --metrics-listen off."
        ) from error


def _bind(
    server: grpc.aio.Server,
    listen: str,
    credentials: grpc.ServerCredentials | None,
    setting: str = "listen",
) -> int:
    flag = "--" + setting.replace("_", "-")
    try:
        port = (
            server.add_secure_port(listen, credentials)
            if credentials is not None
            else server.add_insecure_port(listen)
        )
    except RuntimeError as error:
        raise ListenError(
            f"cannot listen on {listen}: {str(error).rstrip('.')}. Is another server already "
            f"using this port? Choose another with {flag} or {env_name(setting)}."
        ) from error
    if port == 0:
        raise ListenError(f"cannot listen on {listen} ({flag}); is the port already in use?")
    return port
