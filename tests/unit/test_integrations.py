"""The mapping from module events to alerts: the table in docs/INTEGRATIONS.md, as a test."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from incident_manager.domain.integrations import (
    AnomalyEvent,
    AnomalyMetric,
    EdgeAgentEvent,
    EventKind,
    GovernanceEvent,
    ModuleEvent,
    SecurityEvent,
    ThreatCategory,
    to_alert,
    validate_module_event,
)
from incident_manager.domain.model import AlertStatus, IncidentType, Severity
from incident_manager.domain.validation import Checker

P0, P1, P2, P3, P4 = Severity.P0, Severity.P1, Severity.P2, Severity.P3, Severity.P4
SEC, AVAIL, PERF, DATA, INFRA, COMPL = (
    IncidentType.SECURITY,
    IncidentType.AVAILABILITY,
    IncidentType.PERFORMANCE,
    IncidentType.DATA,
    IncidentType.INFRASTRUCTURE,
    IncidentType.COMPLIANCE,
)
SINCE = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

MAPPING = [
    # event kind, type, severity, title, dedup key
    (
        AnomalyEvent("gpt-4o", AnomalyMetric.LATENCY_P99, "/chat", anomaly_score=0.95),
        PERF, P1, "p99 latency anomaly on gpt-4o /chat",
        "anomaly/mod/gpt-4o//chat/LATENCY_P99",
    ),
    (
        AnomalyEvent("gpt-4o", AnomalyMetric.ERROR_RATE, "/chat", anomaly_score=0.95),
        AVAIL, P0, "error rate anomaly on gpt-4o /chat", "anomaly/mod/gpt-4o//chat/ERROR_RATE",
    ),
    (
        AnomalyEvent("llama-3", AnomalyMetric.COST, anomaly_score=0.75),
        PERF, P2, "cost anomaly on llama-3", "anomaly/mod/llama-3//COST",
    ),
    (
        AnomalyEvent("embed-2", AnomalyMetric.DRIFT_SCORE, anomaly_score=0.5),
        DATA, P3, "drift anomaly on embed-2", "anomaly/mod/embed-2//DRIFT_SCORE",
    ),
    (
        AnomalyEvent("gpt-4o", AnomalyMetric.QUALITY_SCORE, anomaly_score=0.1),
        DATA, P4, "answer quality anomaly on gpt-4o", "anomaly/mod/gpt-4o//QUALITY_SCORE",
    ),
    (
        SecurityEvent(ThreatCategory.PII_LEAK, confidence=0.9, blocked=False, application="crm"),
        SEC, P0, "pii leak on crm (not blocked)", "security/mod/crm/PII_LEAK/not blocked",
    ),
    (
        SecurityEvent(ThreatCategory.PII_LEAK, confidence=0.9, blocked=True, application="crm"),
        SEC, P2, "pii leak on crm (blocked)", "security/mod/crm/PII_LEAK/blocked",
    ),
    (
        SecurityEvent(
            ThreatCategory.PROMPT_INJECTION, confidence=0.9, blocked=False, application="crm"
        ),
        SEC, P1, "prompt injection on crm (not blocked)",
        "security/mod/crm/PROMPT_INJECTION/not blocked",
    ),
    (
        SecurityEvent(
            ThreatCategory.PROMPT_INJECTION, confidence=0.3, blocked=True, application="crm"
        ),
        SEC, P4, "prompt injection on crm (blocked)", "security/mod/crm/PROMPT_INJECTION/blocked",
    ),
    (
        SecurityEvent(ThreatCategory.JAILBREAK, confidence=0.4, blocked=False, model="gpt-4o"),
        SEC, P2, "jailbreak on gpt-4o (not blocked)", "security/mod/gpt-4o/JAILBREAK/not blocked",
    ),
    (
        SecurityEvent(ThreatCategory.DATA_EXFILTRATION, confidence=0.8, application="rag"),
        SEC, P0, "data exfiltration on rag (not blocked)",
        "security/mod/rag/DATA_EXFILTRATION/not blocked",
    ),
    (
        SecurityEvent(ThreatCategory.TOXIC_OUTPUT, confidence=0.9, blocked=True, model="m"),
        SEC, P4, "toxic output on m (blocked)", "security/mod/m/TOXIC_OUTPUT/blocked",
    ),
    (
        SecurityEvent(ThreatCategory.OTHER, confidence=0.9, application="a"),
        SEC, P2, "other on a (not blocked)", "security/mod/a/OTHER/not blocked",
    ),
    (
        EdgeAgentEvent("edge-17", offline_since=SINCE),
        AVAIL, P1, "edge agent edge-17 offline", "edge/edge-17/offline",
    ),
    (
        EdgeAgentEvent("edge-17", inference_failure_rate=0.6),
        AVAIL, P1, "edge agent edge-17 failing inferences", "edge/edge-17/failing",
    ),
    (
        EdgeAgentEvent("edge-17", inference_failure_rate=0.2),
        AVAIL, P2, "edge agent edge-17 failing inferences", "edge/edge-17/failing",
    ),
    (
        EdgeAgentEvent("edge-17", queue_depth=20_000),
        INFRA, P3, "edge agent edge-17 under resource pressure", "edge/edge-17/pressure",
    ),
    (
        EdgeAgentEvent("edge-17", cpu_utilization=0.5),
        INFRA, P4, "edge agent edge-17 under resource pressure", "edge/edge-17/pressure",
    ),
    (
        GovernanceEvent("pii-retention-30d", framework="GDPR", dataset="support-logs"),
        COMPL, P2, "policy pii-retention-30d violated by support-logs",
        "governance/pii-retention-30d/support-logs",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "type_", "severity", "title", "dedup_key"),
    MAPPING,
    ids=[f"{type(row[0]).__name__}-{i}" for i, row in enumerate(MAPPING)],
)
def test_each_kind_of_module_event_maps_to_the_documented_alert(
    kind: EventKind, type_: IncidentType, severity: Severity, title: str, dedup_key: str
) -> None:
    alert = to_alert(ModuleEvent(id="e-1", source="mod", kind=kind, labels={"team": "ml"}))
    assert (alert.type, alert.severity, alert.title, alert.dedup_key) == (
        type_,
        severity,
        title,
        dedup_key,
    )
    assert alert.id == "e-1" and alert.source == "mod"
    assert alert.labels["team"] == "ml"
    assert alert.affected_resources, "every mapped alert names what it affects"


def test_a_blocked_low_confidence_injection_is_milder_than_an_unblocked_pii_leak() -> None:
    injection = to_alert(
        ModuleEvent(
            "a",
            "s",
            SecurityEvent(ThreatCategory.PROMPT_INJECTION, confidence=0.2, blocked=True, model="m"),
        )
    )
    leak = to_alert(
        ModuleEvent("b", "s", SecurityEvent(ThreatCategory.PII_LEAK, confidence=0.9, model="m"))
    )
    assert leak.severity.is_more_severe_than(injection.severity)


def test_a_repeating_anomaly_on_one_endpoint_shares_a_dedup_key_whatever_its_values() -> None:
    def anomaly(event_id: str, value: float, score: float) -> str | None:
        kind = AnomalyEvent(
            "gpt-4o", AnomalyMetric.LATENCY_P95, "/chat", observed_value=value, anomaly_score=score
        )
        return to_alert(ModuleEvent(event_id, "llm-sentinel", kind)).dedup_key

    assert anomaly("1", 2.5, 0.8) == anomaly("2", 9.0, 0.99)


def test_raw_prompts_never_appear_only_a_sample_reference() -> None:
    alert = to_alert(
        ModuleEvent(
            "a",
            "llm-shield",
            SecurityEvent(ThreatCategory.PII_LEAK, application="crm", sample_ref="trace/abc"),
        )
    )
    assert alert.annotations["sample_ref"] == "trace/abc"


def test_a_resolve_signal_needs_no_kind_and_keeps_its_status() -> None:
    event = ModuleEvent("e-1", "llm-sentinel", None, status=AlertStatus.RESOLVED)
    checker = Checker()
    validate_module_event(event, checker)
    assert checker.violations == []
    assert to_alert(event).status is AlertStatus.RESOLVED


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (ModuleEvent("", "s", GovernanceEvent("p")), "id"),
        (ModuleEvent("e", "s", None), "kind"),
        (ModuleEvent("e", "s", AnomalyEvent("", AnomalyMetric.COST)), "anomaly.model"),
        (ModuleEvent("e", "s", AnomalyEvent("m", AnomalyMetric.COST, anomaly_score=2)),
         "anomaly.anomaly_score"),
        (ModuleEvent("e", "s", SecurityEvent(ThreatCategory.OTHER)), "security.application"),
        (ModuleEvent("e", "s", EdgeAgentEvent("a", queue_depth=-1)), "edge_agent.queue_depth"),
        (ModuleEvent("e", "s", GovernanceEvent("")), "governance.policy_id"),
    ],
)  # fmt: skip
def test_invalid_module_events_name_the_field(event: ModuleEvent, field: str) -> None:
    checker = Checker()
    validate_module_event(event, checker)
    assert field in {v.field for v in checker.violations}
