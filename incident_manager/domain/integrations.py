"""LLM monitoring modules' events, and the rules that turn each into an alert.

The rules are the contract documented in docs/INTEGRATIONS.md and pinned by a
table-driven test: change one and both must change with it. Every kind of
event gets a dedup key chosen so that the same trouble on the same thing
merges into one incident (a repeating latency anomaly on one model endpoint,
repeated injections against one application, one agent offline).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

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


@dataclass(frozen=True)
class AnomalyEvent:
    model: str
    metric: AnomalyMetric
    endpoint: str = ""
    observed_value: float = 0.0
    baseline_value: float = 0.0
    threshold: float = 0.0
    anomaly_score: float = 0.0


@dataclass(frozen=True)
class SecurityEvent:
    category: ThreatCategory
    confidence: float = 0.0
    blocked: bool = False
    model: str = ""
    application: str = ""
    sample_ref: str = ""


@dataclass(frozen=True)
class EdgeAgentEvent:
    agent_id: str
    offline_since: datetime | None = None
    queue_depth: int = 0
    cpu_utilization: float = 0.0
    memory_utilization: float = 0.0
    inference_failure_rate: float = 0.0


@dataclass(frozen=True)
class GovernanceEvent:
    policy_id: str
    framework: str = ""
    violation: str = ""
    model: str = ""
    dataset: str = ""


EventKind = AnomalyEvent | SecurityEvent | EdgeAgentEvent | GovernanceEvent


@dataclass(frozen=True)
class ModuleEvent:
    id: str
    source: str
    kind: EventKind | None
    time: datetime | None = None
    status: AlertStatus = AlertStatus.FIRING
    end_time: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


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
    if score >= 0.9:
        return Severity.P1
    if score >= 0.7:
        return Severity.P2
    if score >= 0.4:
        return Severity.P3
    return Severity.P4


def _words(name: str) -> str:
    return name.lower().replace("_", " ")


def validate_module_event(event: ModuleEvent, checker: Checker) -> None:
    checker.required("id", event.id, MAX_NAME)
    checker.required("source", event.source, MAX_NAME)
    signal = event.status is AlertStatus.RESOLVED
    kind = event.kind
    if kind is None:
        if not signal:
            checker.fail(
                "kind", "is required: set one of anomaly, security, edge_agent, governance"
            )
    elif isinstance(kind, AnomalyEvent):
        checker.required("anomaly.model", kind.model, MAX_NAME)
        checker.at_most("anomaly.endpoint", kind.endpoint, MAX_NAME)
        if not 0.0 <= kind.anomaly_score <= 1.0:
            checker.fail("anomaly.anomaly_score", "must be between 0 and 1")
    elif isinstance(kind, SecurityEvent):
        if not kind.model.strip() and not kind.application.strip():
            checker.fail("security.application", "model or application is required")
        checker.at_most("security.model", kind.model, MAX_NAME)
        checker.at_most("security.application", kind.application, MAX_NAME)
        checker.at_most("security.sample_ref", kind.sample_ref, MAX_NAME)
        if not 0.0 <= kind.confidence <= 1.0:
            checker.fail("security.confidence", "must be between 0 and 1")
    elif isinstance(kind, EdgeAgentEvent):
        checker.required("edge_agent.agent_id", kind.agent_id, MAX_NAME)
        if kind.queue_depth < 0:
            checker.fail("edge_agent.queue_depth", "must not be negative")
        for name in ("cpu_utilization", "memory_utilization", "inference_failure_rate"):
            if not 0.0 <= getattr(kind, name) <= 1.0:
                checker.fail(f"edge_agent.{name}", "must be between 0 and 1")
    else:
        checker.required("governance.policy_id", kind.policy_id, MAX_NAME)
        for name in ("framework", "model", "dataset"):
            checker.at_most(f"governance.{name}", getattr(kind, name), MAX_NAME)


def to_alert(event: ModuleEvent) -> Alert:
    """The alert a module event stands for; see docs/INTEGRATIONS.md for the rules."""
    kind = event.kind
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    resources: list[str] = []
    if kind is None:  # a bare resolve signal: it only names the event it clears
        severity, type_, title, dedup_key = Severity.P4, IncidentType.DATA, "", None
    elif isinstance(kind, AnomalyEvent):
        type_ = _METRIC_TYPES[kind.metric]
        severity = anomaly_severity(kind.anomaly_score)
        if kind.metric is AnomalyMetric.ERROR_RATE:
            severity = _MORE_SEVERE[severity]  # failing requests hurt users now
        where = f"{kind.model} {kind.endpoint}".strip()
        title = f"{_METRIC_NAMES[kind.metric]} anomaly on {where}"
        labels |= {"model": kind.model, "metric": kind.metric.name.lower()}
        resources.append(f"model/{kind.model}")
        if kind.endpoint:
            labels["endpoint"] = kind.endpoint
            resources.append(f"endpoint/{kind.endpoint}")
        annotations |= {
            "observed_value": repr(kind.observed_value),
            "baseline_value": repr(kind.baseline_value),
            "threshold": repr(kind.threshold),
            "anomaly_score": repr(kind.anomaly_score),
        }
        dedup_key = f"anomaly/{event.source}/{kind.model}/{kind.endpoint}/{kind.metric.name}"
    elif isinstance(kind, SecurityEvent):
        type_ = IncidentType.SECURITY
        unblocked, blocked = _THREAT_SEVERITY[kind.category]
        severity = blocked if kind.blocked else unblocked
        if kind.confidence < 0.5:
            severity = _LESS_SEVERE[severity]
        target = kind.application or kind.model
        outcome = "blocked" if kind.blocked else "not blocked"
        title = f"{_words(kind.category.name)} on {target} ({outcome})"
        labels |= {
            "threat": kind.category.name.lower(),
            "blocked": "true" if kind.blocked else "false",
        }
        if kind.model:
            labels["model"] = kind.model
            resources.append(f"model/{kind.model}")
        if kind.application:
            labels["application"] = kind.application
            resources.append(f"application/{kind.application}")
        annotations["confidence"] = repr(kind.confidence)
        if kind.sample_ref:
            annotations["sample_ref"] = kind.sample_ref
        dedup_key = f"security/{event.source}/{target}/{kind.category.name}/{outcome}"
    elif isinstance(kind, EdgeAgentEvent):
        if kind.offline_since is not None:
            condition, type_, severity = "offline", IncidentType.AVAILABILITY, Severity.P1
            title = f"edge agent {kind.agent_id} offline"
            annotations["offline_since"] = kind.offline_since.isoformat()
        elif kind.inference_failure_rate >= 0.1:
            condition, type_ = "failing", IncidentType.AVAILABILITY
            severity = Severity.P1 if kind.inference_failure_rate >= 0.5 else Severity.P2
            title = f"edge agent {kind.agent_id} failing inferences"
        else:
            condition, type_ = "pressure", IncidentType.INFRASTRUCTURE
            strained = (
                kind.queue_depth >= 10_000
                or kind.cpu_utilization >= 0.95
                or kind.memory_utilization >= 0.95
            )
            severity = Severity.P3 if strained else Severity.P4
            title = f"edge agent {kind.agent_id} under resource pressure"
        labels |= {"agent_id": kind.agent_id, "condition": condition}
        resources.append(f"agent/{kind.agent_id}")
        annotations |= {
            "queue_depth": str(kind.queue_depth),
            "cpu_utilization": repr(kind.cpu_utilization),
            "memory_utilization": repr(kind.memory_utilization),
            "inference_failure_rate": repr(kind.inference_failure_rate),
        }
        dedup_key = f"edge/{kind.agent_id}/{condition}"
    else:
        type_, severity = IncidentType.COMPLIANCE, Severity.P2
        subject = kind.model or kind.dataset or "the deployment"
        title = f"policy {kind.policy_id} violated by {subject}"
        labels["policy_id"] = kind.policy_id
        if kind.framework:
            labels["framework"] = kind.framework
        if kind.model:
            resources.append(f"model/{kind.model}")
        if kind.dataset:
            resources.append(f"dataset/{kind.dataset}")
        if kind.violation:
            annotations["violation"] = kind.violation
        dedup_key = f"governance/{kind.policy_id}/{subject}"
    if dedup_key is not None and len(dedup_key) > MAX_ID:
        dedup_key = "sha256:" + hashlib.sha256(dedup_key.encode()).hexdigest()
    return Alert(
        id=event.id,
        source=event.source,
        title=title[:MAX_TITLE],
        severity=severity,
        type=type_,
        labels={**event.labels, **labels},
        annotations=annotations,
        affected_resources=tuple(resources),
        fire_time=event.time,
        dedup_key=dedup_key,
        status=event.status,
        end_time=event.end_time,
    )
