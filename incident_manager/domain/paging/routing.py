"""Which escalation policy pages an incident, and which silences hold it.

Routes are tried in file order and the first that matches wins; a route
without `match` matches everything and must be the last one. A configuration
without such a fallback route pages nobody for an incident that matches no
route (the loader warns about it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from incident_manager.domain.model import Incident, IncidentType, Severity
from incident_manager.domain.paging.model import (
    EscalationPolicy,
    Matcher,
    PagingConfig,
    Route,
    Silence,
)


@dataclass(frozen=True)
class PagingSubject:
    """What routes and silences look at: an incident's, or an alert's for a dry run."""

    source: str
    type: IncidentType
    severity: Severity
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, incident: Incident) -> PagingSubject:
        """The incident as it is now (a severity rise can change its route)."""
        return cls(incident.source, incident.type, incident.severity, dict(incident.labels))


def matches(matcher: Matcher, subject: PagingSubject) -> bool:
    """Whether every field the matcher gives matches the subject.

    Lists match if any value does; labels must be present with exactly that
    value; `labels_regex` patterns must match the whole value.
    """
    if matcher.severities and subject.severity not in matcher.severities:
        return False
    if matcher.types and subject.type not in matcher.types:
        return False
    if matcher.sources and subject.source not in matcher.sources:
        return False
    for key, value in matcher.labels.items():
        if subject.labels.get(key) != value:
            return False
    for key, pattern in matcher.labels_regex.items():
        found = subject.labels.get(key)
        if found is None or pattern.fullmatch(found) is None:
            return False
    return True


@dataclass(frozen=True)
class RouteMatch:
    """The route that applies, its position in the file, and the policy it names."""

    index: int
    route: Route
    policy: EscalationPolicy


def choose_route(config: PagingConfig, subject: PagingSubject) -> RouteMatch | None:
    """The first route that matches, or None: then the incident is not paged."""
    for index, route in enumerate(config.routes):
        if route.match is None or matches(route.match, subject):
            policy = config.policy(route.policy)
            # A built PagingConfig has checked every route's policy exists.
            assert policy is not None
            return RouteMatch(index, route, policy)
    return None


def silences_holding(
    silences: Iterable[Silence], subject: PagingSubject, at: datetime
) -> tuple[Silence, ...]:
    """The silences in force at `at` that match the subject, in the order given."""
    return tuple(s for s in silences if s.is_active(at) and matches(s.matcher, subject))


def silenced_until(
    silences: Iterable[Silence], subject: PagingSubject, at: datetime
) -> datetime | None:
    """When paging may start: the first moment from `at` that no matching silence holds.

    None if nothing holds the subject at `at`. Overlapping and back-to-back
    silences count as one: the answer is the end of the chain.
    """
    relevant = [s for s in silences if matches(s.matcher, subject)]
    moment = at
    extended = True
    while extended:  # each pass moves `moment` later, so this ends
        extended = False
        for silence in relevant:
            if silence.is_active(moment):
                moment = silence.end
                extended = True
    return moment if moment != at else None
