"""Builders of page content for the channel tests, so each test says only what matters to it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from incident_manager.adapters.channels.base import Link, PageContent, PageTarget

OPENED = datetime(2026, 3, 2, 8, 59, 58, 120000, tzinfo=UTC)


def page(**fields: Any) -> PageContent:
    """A page of a P1 incident at level 1; any field can be overridden."""
    values: dict[str, Any] = {
        "incident_id": "inc-4711",
        "title": "p99 latency above 2s on gpt-4o",
        "severity": "P1",
        "state": "DETECTED",
        "source": "llm-sentinel",
        "incident_type": "PERFORMANCE",
        "opened_at": OPENED,
        "occurred_at": OPENED + timedelta(seconds=2),
        "alert_count": 3,
        "targets": (
            PageTarget("user", "alice", "Alice Ng", via="primary"),
            PageTarget("channel", "ops-hook"),
        ),
        "labels": {"region": "eu-west-1"},
        "runbook_url": "https://runbooks.example.com/latency",
        "links": (Link("dashboard", "https://grafana.example.com/d/llm"),),
    }
    values.update(fields)
    return PageContent(**values)
