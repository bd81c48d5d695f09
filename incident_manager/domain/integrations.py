"""LLM monitoring modules' events, and the rules that turn each into an alert.

The rules are the contract documented in docs/INTEGRATIONS.md and pinned by a
table-driven test: change one and both must change with it. Every kind of
event gets a dedup key chosen so that the same trouble on the same thing
merges into one incident (a repeating latency anomaly on one model endpoint,
repeated injections against one application, one agent offline).

Each kind of event is one class below: its fields, the rules they follow
(`validate`) and the alert it stands for (`to_alert`). A new kind is one more
subclass of `EventKind`, plus its message in integrations.proto; the
conversions find it by its `name` and check at import that the two agree.
"""

from __future__ import annotations

import enum
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from incident_manager.domain.model import Alert, AlertStatus, IncidentType, Severity
from incident_manager.domain.validation import MAX_ID, MAX_NAME, MAX_TITLE, Checker


class AnomalyMetric(enum.IntEnum):
    LATENCY_P50 = 1
    LATENCY_P95 = 2
    LATENCY_P99 = 3
    ERROR_RATE = 4
    TOKEN_USAGE = 5
    COST = 6
    DRIFT_SCORE = 7
    QUALITY_SCORE = 8


class ThreatCategory(enum.IntEnum):
    PROMPT_INJECTION = 1
    JAILBREAK = 2
    PII_LEAK = 3
    DATA_EXFILTRATION = 4
    TOXIC_OUTPUT = 5
    OTHER = 6


_MORE_SEVERE = {
    Severity.P4: Severity.P3,
    Severity.P3: Severity.P2,
    Severity.P2: Severity.P1,
    Severity.P1: Severity.P0,
    Severity.P0: Severity.P0,
}
_LESS_SEVERE = {v: k for k, v in _MORE_SEVERE.items() if k is not v} | {Severity.P4: Severity.P4}

_METRIC_TYPES = {
    AnomalyMetric.LATENCY_P50: IncidentType.PERFORMANCE,
    AnomalyMetric.LATENCY_P95: IncidentType.PERFORMANCE,
    AnomalyMetric.LATENCY_P99: IncidentType.PERFORMANCE,
    AnomalyMetric.ERROR_RATE: IncidentType.AVAILABILITY,
    AnomalyMetric.TOKEN_USAGE: IncidentType.PERFORMANCE,
    AnomalyMetric.COST: IncidentType.PERFORMANCE,
    AnomalyMetric.DRIFT_SCORE: IncidentType.DATA,
    AnomalyMetric.QUALITY_SCORE: IncidentType.DATA,
}
_METRIC_NAMES = {
    AnomalyMetric.LATENCY_P50: "p50 latency",
    AnomalyMetric.LATENCY_P95: "p95 latency",
    AnomalyMetric.LATENCY_P99: "p99 latency",
    AnomalyMetric.ERROR_RATE: "error rate",
    AnomalyMetric.TOKEN_USAGE: "token usage",
    AnomalyMetric.COST: "cost",
    AnomalyMetric.DRIFT_SCORE: "drift",
    AnomalyMetric.QUALITY_SCORE: "answer quality",
}
# (not blocked, blocked): data leaving is worst; a blocked attempt is two steps milder.
_THREAT_SEVERITY = {
    ThreatCategory.PII_LEAK: (Severity.P0, Severity.P2),
    ThreatCategory.DATA_EXFILTRATION: (Severity.P0, Severity.P2),
    ThreatCategory.PROMPT_INJECTION: (Severity.P1, Severity.P3),
    ThreatCategory.JAILBREAK: (Severity.P1, Severity.P3),
    ThreatCategory.TOXIC_OUTPUT: (Severity.P2, Severity.P4),
    ThreatCategory.OTHER: (Severity.P2, Severity.P4),
}


def anomaly_severity(score: float) -> Severity:
    """An anomaly's severity before its metric is weighed: the higher the score, the worse."""
    if score >= 0.9:
        return Severity.P1
    if score >= 0.7:
        return Severity.P2
    if score >= 0.4:
        return Severity.P3
    return Severity.P4


def _words(name: str) -> str:
    return name.lower().replace("_", " ")


KINDS: dict[str, type[EventKind]] = {}
"""Every kind of module event by its name, in the order they are declared."""


class EventKind(ABC):
    """One kind of module event: its fields, the rules they follow, the alert it stands for.

    A subclass declares its `name` (`class X(EventKind, name="x")`): the field
    of a module event that carries it, and the start of its fields' paths in
    error messages.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, *, name: str, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name
        KINDS[name] = cls

    @abstractmethod
    def validate(self, checker: Checker) -> None:
        """Add a violation to `checker` for each rule a field breaks; paths are the field names."""

    @abstractmethod
    def to_alert(self, event: ModuleEvent) -> Alert:
        """The alert `event`, which carries this, stands for (build it with `event.alert`)."""


@dataclass(frozen=True)
class AnomalyEvent(EventKind, name="anomaly"):
    """A metric of a model (endpoint) left its baseline, e.g. from `llm-sentinel`."""

    model: str
    metric: AnomalyMetric
    endpoint: str = ""
    observed_value: float = 0.0
    baseline_value: float = 0.0
    threshold: float = 0.0
    anomaly_score: float = 0.0

    def validate(self, checker: Checker) -> None:
        checker.required("model", self.model, MAX_NAME)
        checker.at_most("endpoint", self.endpoint, MAX_NAME)
        if not 0.0 <= self.anomaly_score <= 1.0:
            checker.fail("anomaly_score", "must be between 0 and 1")

    def to_alert(self, event: ModuleEvent) -> Alert:
        severity = anomaly_severity(self.anomaly_score)
        if self.metric is AnomalyMetric.ERROR_RATE:
            severity = _MORE_SEVERE[severity]  # failing requests hurt users now
        labels = {"model": self.model, "metric": self.metric.name.lower()}
        resources = [f"model/{self.model}"]
        if self.endpoint:
            labels["endpoint"] = self.endpoint
            resources.append(f"endpoint/{self.endpoint}")
        where = f"{self.model} {self.endpoint}".strip()
        return event.alert(
            type=_METRIC_TYPES[self.metric],
            severity=severity,
            title=f"{_METRIC_NAMES[self.metric]} anomaly on {where}",
            labels=labels,
            resources=resources,
            annotations={
                "observed_value": repr(self.observed_value),
                "baseline_value": repr(self.baseline_value),
                "threshold": repr(self.threshold),
                "anomaly_score": repr(self.anomaly_score),
            },
            dedup_key=f"anomaly/{event.source}/{self.model}/{self.endpoint}/{self.metric.name}",
        )


@dataclass(frozen=True)
class SecurityEvent(EventKind, name="security"):
    """A security filter saw a threat against a model or application, e.g. `llm-shield`."""

    category: ThreatCategory
    confidence: float = 0.0
    blocked: bool = False
    model: str = ""
    application: str = ""
    sample_ref: str = ""

    def validate(self, checker: Checker) -> None:
        if not self.model.strip() and not self.application.strip():
            checker.fail("application", "model or application is required")
        checker.at_most("model", self.model, MAX_NAME)
        checker.at_most("application", self.application, MAX_NAME)
        checker.at_most("sample_ref", self.sample_ref, MAX_NAME)
        if not 0.0 <= self.confidence <= 1.0:
            checker.fail("confidence", "must be between 0 and 1")

    def to_alert(self, event: ModuleEvent) -> Alert:
        unblocked, blocked = _THREAT_SEVERITY[self.category]
        severity = blocked if self.blocked else unblocked
        if self.confidence < 0.5:
            severity = _LESS_SEVERE[severity]
        target = self.application or self.model
        outcome = "blocked" if self.blocked else "not blocked"
        labels = {"threat": self.category.name.lower(), "blocked": str(self.blocked).lower()}
        resources = []
        if self.model:
            labels["model"] = self.model
            resources.append(f"model/{self.model}")
        if self.application:
            labels["application"] = self.application
            resources.append(f"application/{self.application}")
        # Only the reference to the sample travels, never the raw prompt.
        annotations = {"confidence": repr(self.confidence)}
        if self.sample_ref:
            annotations["sample_ref"] = self.sample_ref
        return event.alert(
            type=IncidentType.SECURITY,
            severity=severity,
            title=f"{_words(self.category.name)} on {target} ({outcome})",
            labels=labels,
            resources=resources,
            annotations=annotations,
            dedup_key=f"security/{event.source}/{target}/{self.category.name}/{outcome}",
        )


@dataclass(frozen=True)
class EdgeAgentEvent(EventKind, name="edge_agent"):
    """An edge inference agent's health: offline, failing inferences, or its load."""

    agent_id: str
    offline_since: datetime | None = None
    queue_depth: int = 0
    cpu_utilization: float = 0.0
    memory_utilization: float = 0.0
    inference_failure_rate: float = 0.0

    def validate(self, checker: Checker) -> None:
        checker.required("agent_id", self.agent_id, MAX_NAME)
        if self.queue_depth < 0:
            checker.fail("queue_depth", "must not be negative")
        for name in ("cpu_utilization", "memory_utilization", "inference_failure_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                checker.fail(name, "must be between 0 and 1")

    def to_alert(self, event: ModuleEvent) -> Alert:
        annotations = {}
        # The first condition that applies wins.
        if self.offline_since is not None:
            condition, type_, severity = "offline", IncidentType.AVAILABILITY, Severity.P1
            title = f"edge agent {self.agent_id} offline"
            annotations["offline_since"] = self.offline_since.isoformat()
        elif self.inference_failure_rate >= 0.1:
            condition, type_ = "failing", IncidentType.AVAILABILITY
            severity = Severity.P1 if self.inference_failure_rate >= 0.5 else Severity.P2
            title = f"edge agent {self.agent_id} failing inferences"
        else:
            condition, type_ = "pressure", IncidentType.INFRASTRUCTURE
            strained = (
                self.queue_depth >= 10_000
                or self.cpu_utilization >= 0.95
                or self.memory_utilization >= 0.95
            )
            severity = Severity.P3 if strained else Severity.P4
            title = f"edge agent {self.agent_id} under resource pressure"
        annotations |= {
            "queue_depth": str(self.queue_depth),
            "cpu_utilization": repr(self.cpu_utilization),
            "memory_utilization": repr(self.memory_utilization),
            "inference_failure_rate": repr(self.inference_failure_rate),
        }
        return event.alert(
            type=type_,
            severity=severity,
            title=title,
            labels={"agent_id": self.agent_id, "condition": condition},
            resources=[f"agent/{self.agent_id}"],
            annotations=annotations,
            dedup_key=f"edge/{self.agent_id}/{condition}",
        )


@dataclass(frozen=True)
class GovernanceEvent(EventKind, name="governance"):
    """A governance check found a policy violated by a model or dataset."""

    policy_id: str
    framework: str = ""
    violation: str = ""
    model: str = ""
    dataset: str = ""

    def validate(self, checker: Checker) -> None:
        checker.required("policy_id", self.policy_id, MAX_NAME)
        for name in ("framework", "model", "dataset"):
            checker.at_most(name, getattr(self, name), MAX_NAME)
        checker.text("violation", self.violation)

    def to_alert(self, event: ModuleEvent) -> Alert:
        # A person judges the rest, and can change the severity with UpdateIncident.
        subject = self.model or self.dataset or "the deployment"
        labels = {"policy_id": self.policy_id}
        if self.framework:
            labels["framework"] = self.framework
        resources = []
        if self.model:
            resources.append(f"model/{self.model}")
        if self.dataset:
            resources.append(f"dataset/{self.dataset}")
        return event.alert(
            type=IncidentType.COMPLIANCE,
            severity=Severity.P2,
            title=f"policy {self.policy_id} violated by {subject}",
            labels=labels,
            resources=resources,
            annotations={"violation": self.violation} if self.violation else {},
            dedup_key=f"governance/{self.policy_id}/{subject}",
        )


@dataclass(frozen=True)
class ModuleEvent:
    """What a monitoring module reports: who and when, and one kind of event (or a resolve)."""

    id: str
    source: str
    kind: EventKind | None
    """None only in a resolve signal, which just names the event it clears."""
    time: datetime | None = None
    status: AlertStatus = AlertStatus.FIRING
    end_time: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def validate(self, checker: Checker) -> None:
        """Add a violation to `checker` for each rule the event breaks."""
        checker.required("id", self.id, MAX_NAME)
        checker.required("source", self.source, MAX_NAME)
        if self.kind is not None:
            self.kind.validate(checker.within(self.kind.name))
        elif self.status is not AlertStatus.RESOLVED:
            checker.fail("kind", f"is required: set one of {', '.join(KINDS)}")

    def to_alert(self) -> Alert:
        """The alert this event stands for; see docs/INTEGRATIONS.md for the rules."""
        if self.kind is None:  # a bare resolve signal: it only names the event it clears
            return self.alert(type=IncidentType.DATA, severity=Severity.P4, title="")
        return self.kind.to_alert(self)

    def alert(
        self,
        *,
        type: IncidentType,
        severity: Severity,
        title: str,
        labels: Mapping[str, str] | None = None,
        resources: Sequence[str] = (),
        annotations: Mapping[str, str] | None = None,
        dedup_key: str | None = None,
    ) -> Alert:
        """The alert with what this event's kind decided, and the rules every kind shares."""
        if dedup_key is not None and len(dedup_key) > MAX_ID:
            dedup_key = "sha256:" + hashlib.sha256(dedup_key.encode()).hexdigest()
        return Alert(
            id=self.id,
            source=self.source,
            title=title[:MAX_TITLE],
            severity=severity,
            type=type,
            labels={**self.labels, **(labels or {})},
            annotations=dict(annotations or {}),
            affected_resources=tuple(resources),
            fire_time=self.time,
            dedup_key=dedup_key,
            status=self.status,
            end_time=self.end_time,
        )


def validate_module_event(event: ModuleEvent, checker: Checker) -> None:
    """Add a violation to `checker` for each rule the event breaks."""
    event.validate(checker)


def to_alert(event: ModuleEvent) -> Alert:
    """The alert a module event stands for; see docs/INTEGRATIONS.md for the rules."""
    return event.to_alert()
