"""Prometheus metrics: gRPC server metrics named as Go servers name them, and our own.

Every server gets its own registry, so several servers in one process (the
tests) never share counters. `/metrics` is served by prometheus-client's
HTTP server on its own thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from incident_manager.domain.model import AckStatus, Alert, AlertAck

log = logging.getLogger(__name__)

# `*_created` timestamps double the series for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
RETRY = "RETRY"
"""The `status` of incident_manager_alerts_total for an exact retry of an alert already received."""
MAX_SOURCE_LABELS = 1000
"""Distinct `source` label values at most; later sources are counted as `other`."""


GO_CODE_NAMES = {
    code: "".join(part.capitalize() for part in code.name.split("_")) for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}
"""`grpc_code` values as Go's codes.Code.String() spells them (NotFound, Unavailable),
so dashboards and alerts written for go-grpc-prometheus work unchanged."""


class MethodMetrics:
    """The series of one method, bound once so a call does no label lookups."""

    def __init__(self, metrics: Metrics, grpc_type: str, service: str, method: str) -> None:
        labels = (grpc_type, service, method)
        self.started = metrics.started.labels(*labels)
        self.handling = metrics.handling.labels(*labels)
        self.received = metrics.received.labels(*labels)
        self.sent = metrics.sent.labels(*labels)
        self._handled = metrics.handled
        self._labels = labels
        self._by_code: dict[grpc.StatusCode, Counter] = {}

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._handled.labels(*self._labels, GO_CODE_NAMES[code])
        counter.inc()
        self.handling.observe(seconds)


class Metrics:
    """All series of one server; also the incident manager's Observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        registry = self.registry
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", grpc_labels,
            registry=registry,
        )  # fmt: skip
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            (*grpc_labels, "grpc_code"),
            registry=registry,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (streams: their whole life).",
            grpc_labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received_total", "Request messages received.", grpc_labels,
            registry=registry,
        )  # fmt: skip
        self.sent = Counter(
            "grpc_server_msg_sent_total", "Response messages sent.", grpc_labels,
            registry=registry,
        )  # fmt: skip
        self.alerts = Counter(
            "incident_manager_alerts_total",
            "Alerts received, by source and by the status of the answer (ack) each got; "
            f"exact retries of an alert already received count as {RETRY}, once per retry.",
            ("source", "status"),
            registry=registry,
        )
        self.duplicates = Counter(
            "incident_manager_duplicates_merged_total",
            "Alerts merged into an incident that was already open (answered DUPLICATE).",
            registry=registry,
        )
        self.open_incidents = Gauge(
            "incident_manager_open_incidents",
            "Incidents not yet resolved, by severity and state (refreshed every few seconds).",
            ("severity", "state"),
            registry=registry,
        )
        self.subscribers = Gauge(
            "incident_manager_stream_subscribers",
            "StreamIncidents calls in progress on this server.",
            registry=registry,
        )
        self.storage_write = Histogram(
            "incident_manager_storage_write_seconds",
            "Time for a unit of work to be committed, queueing included.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.storage_available = Gauge(
            "incident_manager_storage_available",
            "1 while the database can be used, 0 while it cannot (health is NOT_SERVING).",
            registry=registry,
        )
        self.storage_available.set(1)
        self.notifications = Counter(
            "incident_manager_notifications_total",
            "Page delivery attempts by channel type and outcome: sent, retry (tried again"
            " later) or failed (given up on).",
            ("channel_type", "outcome"),
            registry=registry,
        )
        self.folded = Counter(
            "incident_manager_notifications_folded_total",
            "Pages folded into a digest because their rate-limited channel had used its"
            " messages for the minute, by channel id.",
            ("channel",),
            registry=registry,
        )
        self.paging_reloads = Counter(
            "incident_manager_paging_reloads_total",
            "Reloads of the paging configuration on SIGHUP: applied, or refused (the old"
            " configuration stays in force).",
            ("result",),
            registry=registry,
        )
        self.channel_disabled_gauge = Gauge(
            "incident_manager_channel_disabled",
            "1 while a paging channel is disabled because its receiver said it wants no more"
            " messages (HTTP 410, an archived Slack channel); a reload sets it back to 0.",
            ("channel",),
            registry=registry,
        )
        self._sources: set[str] = set()
        self._alert_series: dict[tuple[str, str], Counter] = {}
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def for_method(self, grpc_type: str, service: str, method: str) -> MethodMetrics:
        return MethodMetrics(self, grpc_type, service, method)

    def follow_streams(self, subscribers: Callable[[], int], catch_ups: Callable[[], int]) -> None:
        """Read StreamIncidents subscribers and catch-ups from the manager at scrape time."""
        self.subscribers.set_function(subscribers)
        self.registry.register(_CatchUps(catch_ups))

    # The manager's Observer protocol.
    def alerts_acked(self, alerts: Sequence[Alert | AlertAck], acks: Sequence[AlertAck]) -> None:
        series = self._alert_series
        for alert, ack in zip(alerts, acks, strict=False):
            source = alert.source if isinstance(alert, Alert) else "unknown"
            # A retry is the same alert again: counted under its first status, the
            # metric would count calls, not alerts.
            status = RETRY if ack.retry else ack.status.name
            counter = series.get((source, status))
            if counter is None:
                counter = self._alert_counter(source, status)
            counter.inc()
            if ack.status is AckStatus.DUPLICATE and not ack.retry:
                self.duplicates.inc()

    def _alert_counter(self, source: str, status: str) -> Counter:
        """The series of (source, status), kept: `labels()` per alert cost more than `inc()`."""
        label = source
        if source not in self._sources:
            if len(self._sources) >= MAX_SOURCE_LABELS:
                label = "other"
            else:
                self._sources.add(source)
        counter = self.alerts.labels(label, status)
        if len(self._alert_series) < MAX_SOURCE_LABELS * (len(AckStatus) + 1):
            self._alert_series[(source, status)] = counter
        return counter

    def storage_written(self, seconds: float) -> None:
        self.storage_write.observe(seconds)

    # The paging worker's observer.
    def delivery_finished(self, channel_type: str, outcome: str) -> None:
        self.notifications.labels(channel_type or "none", outcome).inc()

    def channel_disabled(self, channel_id: str, disabled: bool) -> None:
        self.channel_disabled_gauge.labels(channel_id).set(1 if disabled else 0)

    def pages_folded(self, channel_id: str, count: int) -> None:
        # Channel ids come from the paging file, so the label's values are bounded.
        self.folded.labels(channel_id).inc(count)

    def serve(self, listen: str) -> int:
        """Serve /metrics on host:port in a thread; returns the bound port."""
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        self._http, self._thread = start_http_server(int(port), host, self.registry)
        bound: int = self._http.server_port
        return bound

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _CatchUps(Collector):
    """A counter kept by the manager, read when Prometheus scrapes."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "incident_manager_stream_catch_ups",
            "Times a StreamIncidents subscriber fell more than --stream-buffer events behind "
            "and caught up from storage.",
            value=self.read(),
        )


def collect(registry: Collector) -> dict[str, float]:
    """Every sample as `name{label="value",...}` -> value; for tests and debugging."""
    samples: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
