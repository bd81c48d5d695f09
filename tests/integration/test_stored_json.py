"""Stored JSON: written with orjson, readable whichever encoder wrote it."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

from incident_manager.adapters.sql.rows import (
    ALERT_PAYLOAD_FORMAT,
    alert_from_json,
    alert_to_json,
    dumps,
    loads,
)
from incident_manager.domain.model import Alert, AlertStatus, IncidentType, Severity

AWKWARD = {
    "plain": "eu-west-1",
    "accents": "déjà vu",
    "emoji": "🔥 on fire",
    "quotes": 'say "hi" \\ bye',
    "controls": "line\nbreak\ttab\x01\x7f",
    "separators": "\u2028\u2029",
}


def _alert() -> Alert:
    return Alert(
        id="a-1",
        source="llm-sentinel",
        title="Ausfall: Latenz > 5 s",
        severity=Severity.P1,
        type=IncidentType.PERFORMANCE,
        description="more\nlines",
        labels=AWKWARD,
        annotations={"runbook": "https://example.com/ä"},
        affected_resources=("model/b", "model/a"),
        fire_time=datetime(2026, 11, 1, 12, 0, tzinfo=UTC),
        dedup_key=None,
        status=AlertStatus.FIRING,
    )


def test_stored_text_is_the_text_the_json_module_wrote_before() -> None:
    for value in (AWKWARD, ["model/a", "ü"], [], {}, {"n": 12, "none": None, "yes": True}):
        assert dumps(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_alert_rows_in_either_format_read_back_unchanged() -> None:
    alert = _alert()
    assert alert_from_json(alert_to_json(alert)) == alert
    resolved = replace(
        alert,
        status=AlertStatus.RESOLVED,
        end_time=datetime(2026, 11, 1, 13, 0, tzinfo=UTC),
        dedup_key="k",
        fire_time=None,
    )
    assert alert_from_json(alert_to_json(resolved)) == resolved
    # Format 1, as earlier versions stored it: named fields, enum names, and
    # json.dumps's ASCII escapes and spaces.
    written_then = json.dumps(
        {
            "id": "a-1",
            "source": "llm-sentinel",
            "title": "Ausfall: Latenz > 5 s",
            "description": "more\nlines",
            "severity": "P1",
            "type": "PERFORMANCE",
            "labels": AWKWARD,
            "annotations": {"runbook": "https://example.com/ä"},
            "affected_resources": ["model/b", "model/a"],
            "runbook_url": "",
            "fire_time": 1793534400000000,
            "dedup_key": None,
            "status": "FIRING",
            "end_time": None,
        }
    )
    assert "\\u00e4" in written_then
    assert alert_from_json(written_then) == alert
    assert loads(json.dumps(AWKWARD)) == AWKWARD


def test_an_alert_is_stored_as_a_compact_array_led_by_its_format() -> None:
    text = alert_to_json(_alert())
    assert json.loads(text)[:3] == [ALERT_PAYLOAD_FORMAT, "a-1", "llm-sentinel"]


def test_text_that_orjson_refuses_is_still_stored() -> None:
    lone_surrogate = {"key": "\ud800"}
    assert json.loads(dumps(lone_surrogate)) == lone_surrogate
    assert json.loads(dumps({"big": 2**70})) == {"big": 2**70}
