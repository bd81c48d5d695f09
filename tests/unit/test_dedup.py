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


def test_fingerprints_stay_those_stored_by_earlier_versions() -> None:
    # Computed by the json.dumps version of fingerprint_of: incidents stored
    # then must still take their duplicates.
    title = 'taux d\'erreur > 5% "é" \n😀'
    resources = ("model/b", "model/a")
    assert (
        alert_fingerprint(make(title=title, affected_resources=resources)).value
        == "b718a116e8878f96db1a87b8783f67a3e7034a140713d3933f0dd2cf93687d0d"
    )
    assert (
        alert_fingerprint(
            make(source="s", type=IncidentType.DATA, title="t", affected_resources=())
        ).value
        == "1151f9004a9cfd8b746f80c11dc488fdfab23e70b0b881b2bac3faec4b7f4e5d"
    )
