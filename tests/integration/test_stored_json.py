"""Stored JSON: written with orjson, readable whichever encoder wrote it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from incident_manager.adapters.sql.rows import (
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


def test_rows_written_by_the_json_module_read_back_unchanged() -> None:
    alert = _alert()
    stored_then = json.dumps(json.loads(alert_to_json(alert)))  # ASCII escapes, spaces
    assert "\\u00e4" in stored_then
    assert alert_from_json(stored_then) == alert
    assert loads(json.dumps(AWKWARD)) == AWKWARD


def test_text_that_orjson_refuses_is_still_stored() -> None:
    lone_surrogate = {"key": "\ud800"}
    assert json.loads(dumps(lone_surrogate)) == lone_surrogate
    assert json.loads(dumps({"big": 2**70})) == {"big": 2**70}
