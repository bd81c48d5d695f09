"""Builders for requests, so tests say only what matters to them."""

from __future__ import annotations

import itertools
from typing import Any

from generated.incident_manager.v1 import alert_pb2, incident_pb2

_ids = itertools.count(1)


def alert(**fields: Any) -> alert_pb2.Alert:
    """A valid alert; any field can be overridden."""
    values: dict[str, Any] = {
        "id": f"alert-{next(_ids)}",
        "source": "llm-sentinel",
        "title": "p99 latency above 2s on gpt-4o",
        "severity": incident_pb2.SEVERITY_P2,
        "type": incident_pb2.INCIDENT_TYPE_PERFORMANCE,
        "affected_resources": ["model/gpt-4o", "endpoint/chat"],
        "labels": {"region": "eu-west-1"},
    }
    values.update(fields)
    return alert_pb2.Alert(**values)


def new_incident(**fields: Any) -> incident_pb2.Incident:
    """A valid incident to create; any field can be overridden."""
    values: dict[str, Any] = {
        "title": "Prompt injection attempts from one tenant",
        "severity": incident_pb2.SEVERITY_P1,
        "type": incident_pb2.INCIDENT_TYPE_SECURITY,
        "source": "llm-shield",
        "affected_resources": ["tenant/acme"],
    }
    values.update(fields)
    return incident_pb2.Incident(**values)
