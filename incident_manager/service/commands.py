"""What clients ask the incident manager to do, as plain data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from incident_manager.domain.model import (
    IncidentState,
    IncidentType,
    ResolutionMethod,
    Severity,
)

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class CreateIncident:
    title: str
    severity: Severity
    type: IncidentType
    source: str
    description: str = ""
    affected_resources: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    assignees: Sequence[str] = ()
    actor: str = ANONYMOUS
    request_id: str = ""
    """Makes retries safe: a second request with the same id creates nothing."""


@dataclass(frozen=True)
class IncidentChanges:
    """New values for the fields named in an update mask; None means "not in the mask"."""

    title: str | None = None
    description: str | None = None
    severity: Severity | None = None
    type: IncidentType | None = None
    state: IncidentState | None = None
    affected_resources: Sequence[str] | None = None
    labels: Mapping[str, str] | None = None
    assignees: Sequence[str] | None = None


@dataclass(frozen=True)
class UpdateIncident:
    incident_id: str
    changes: IncidentChanges
    etag: str = ""
    actor: str = ANONYMOUS


@dataclass(frozen=True)
class ResolveIncident:
    incident_id: str
    method: ResolutionMethod
    resolved_by: str
    root_cause: str = ""
    notes: str = ""
    etag: str = ""


@dataclass(frozen=True)
class AddNote:
    incident_id: str
    author: str
    content: str
    request_id: str = ""
    """Makes retries safe: a second request with the same id adds nothing."""
