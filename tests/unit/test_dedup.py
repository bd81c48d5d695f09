"""Fingerprints: which alerts count as the same problem."""

from __future__ import annotations

from incident_manager.domain.dedup import FINGERPRINT_FIELDS, alert_fingerprint
from incident_manager.domain.model import Alert, IncidentType, Severity


def make(**fields: object) -> Alert:
    values: dict[str, object] = {
        "id": "a-1",
        "source": "llm-sentinel",
        "title": "hallucination rate above 5%",
        "severity": Severity.P2,
        "type": IncidentType.APPLICATION,
        "affected_resources": ("model/b", "model/a"),
    }
    values.update(fields)
    return Alert(**values)  # type: ignore[arg-type]


def test_the_order_of_affected_resources_does_not_change_the_fingerprint() -> None:
    assert (
        alert_fingerprint(make()).value
        == alert_fingerprint(make(affected_resources=("model/a", "model/b"))).value
    )


def test_id_severity_labels_and_description_do_not_change_the_fingerprint() -> None:
    other = make(id="a-2", severity=Severity.P0, labels={"x": "y"}, description="more")
    assert alert_fingerprint(make()) == alert_fingerprint(other)
    assert alert_fingerprint(make()).matched_on == FINGERPRINT_FIELDS


def test_source_type_title_and_resources_each_change_the_fingerprint() -> None:
    base = alert_fingerprint(make()).value
    for change in (
        {"source": "llm-shield"},
        {"type": IncidentType.DATA},
        {"title": "hallucination rate above 6%"},
        {"affected_resources": ("model/a",)},
    ):
        assert alert_fingerprint(make(**change)).value != base, change


def test_fields_cannot_be_forged_by_moving_text_between_them() -> None:
    assert (
        alert_fingerprint(make(source="a", title="b c")).value
        != alert_fingerprint(make(source="a b", title="c")).value
    )


def test_a_dedup_key_overrides_every_field_and_says_so() -> None:
    first = alert_fingerprint(make(dedup_key="tenant-42-jailbreak"))
    second = alert_fingerprint(
        make(dedup_key="tenant-42-jailbreak", title="other", source="llm-shield")
    )
    assert first == second
    assert first.matched_on == "dedup_key=tenant-42-jailbreak"
    assert first.value != alert_fingerprint(make()).value
    assert len(first.value) == 64
