"""Per-source policies for resolving incidents by themselves when their alerts clear."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from incident_manager.domain.model import AutoResolve


@dataclass(frozen=True)
class AutoResolvePolicies:
    default: AutoResolve = AutoResolve.ALL
    by_source: Mapping[str, AutoResolve] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [f"{source}={policy.value}" for source, policy in sorted(self.by_source.items())]
        return ",".join([*parts, f"*={self.default.value}"]) if parts else self.default.value

    def for_source(self, source: str) -> AutoResolve:
        return self.by_source.get(source, self.default)

    @classmethod
    def parse(cls, text: str) -> AutoResolvePolicies:
        """`all`, or `llm-sentinel=first,edge-agent=never,*=all` (`*` sets the default)."""
        default = AutoResolve.ALL
        by_source: dict[str, AutoResolve] = {}
        choices = ", ".join(p.value for p in AutoResolve)
        for part in filter(None, (p.strip() for p in text.split(","))):
            source, sep, name = part.rpartition("=")
            try:
                policy = AutoResolve(name.strip().lower())
            except ValueError:
                raise ValueError(f"{name!r} is not a policy; use one of {choices}") from None
            if not sep or source.strip() == "*":
                default = policy
            else:
                by_source[source.strip()] = policy
        return cls(default, by_source)
