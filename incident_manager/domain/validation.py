"""Input rules, with messages a person can act on. Field paths are the API's.

The rules hold whatever stores the data: a rule only one storage backend
would enforce (PostgreSQL cannot hold a NUL character in text; SQLite can)
belongs here, so every backend gives the same request the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from incident_manager.domain.errors import FieldViolation, ValidationError
from incident_manager.domain.model import Alert
from incident_manager.domain.query import IncidentFilter

MAX_ID = 256
MAX_NAME = 256
MAX_TITLE = 256
MAX_TEXT = 8192
MAX_URL = 2048
MAX_ITEMS = 64
MAX_LABEL_KEY = 128
MAX_LABEL_VALUE = 1024
MAX_ASSIGNEES = 32
MAX_ETAG = 64
MAX_FILTER_VALUES = 100

NUL = "\x00"
NUL_FREE = "must not contain NUL (U+0000) characters"


class Checker:
    """Collects every violation of a request, so the client can fix them all at once."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.violations: list[FieldViolation] = []

    def fail(self, field: str, description: str) -> None:
        self.violations.append(FieldViolation(self.prefix + field, description))

    def within(self, field: str) -> Checker:
        """A checker for the fields inside `field`; what it finds is reported here too."""
        nested = Checker(f"{self.prefix}{field}.")
        nested.violations = self.violations
        return nested

    def text(self, field: str, value: str) -> bool:
        """Whether `value` is text every backend can store: no NUL characters."""
        if NUL in value:
            self.fail(field, NUL_FREE)
            return False
        return True

    def required(self, field: str, value: str, max_length: int) -> None:
        if not value.strip():
            self.fail(field, "is required")
        else:
            self.at_most(field, value, max_length)

    def at_most(self, field: str, value: str, max_length: int) -> None:
        if self.text(field, value) and len(value) > max_length:
            self.fail(field, f"must be at most {max_length} characters (got {len(value)})")

    def string_list(
        self, field: str, values: Sequence[str], max_items: int, max_length: int
    ) -> None:
        if len(values) > max_items:
            self.fail(field, f"must have at most {max_items} entries (got {len(values)})")
            return
        for i, value in enumerate(values):
            if not value.strip():
                self.fail(f"{field}[{i}]", "must not be empty")
            else:
                self.at_most(f"{field}[{i}]", value, max_length)

    def string_map(self, field: str, values: Mapping[str, str]) -> None:
        if len(values) > MAX_ITEMS:
            self.fail(field, f"must have at most {MAX_ITEMS} entries (got {len(values)})")
            return
        for key, value in values.items():
            if not key.strip():
                self.fail(field, "keys must not be empty")
            elif NUL in key:
                self.fail(field, f"keys {NUL_FREE}")
            elif len(key) > MAX_LABEL_KEY:
                self.fail(
                    f"{field}[{key[:32]}...]", f"keys must be at most {MAX_LABEL_KEY} characters"
                )
            elif NUL in value:
                self.fail(f"{field}[{key}]", f"values {NUL_FREE}")
            elif len(value) > MAX_LABEL_VALUE:
                self.fail(f"{field}[{key}]", f"values must be at most {MAX_LABEL_VALUE} characters")

    def raise_if_any(self) -> None:
        if self.violations:
            raise ValidationError(self.violations)


def validate_alert(alert: Alert, checker: Checker, *, resolve_signal: bool = False) -> None:
    """A resolve signal needs only its id and source; a firing alert needs a title too."""
    checker.required("id", alert.id, MAX_ID)
    checker.required("source", alert.source, MAX_NAME)
    if resolve_signal:
        checker.at_most("title", alert.title, MAX_TITLE)
    else:
        checker.required("title", alert.title, MAX_TITLE)
    checker.at_most("description", alert.description, MAX_TEXT)
    checker.string_map("labels", alert.labels)
    checker.string_map("annotations", alert.annotations)
    checker.string_list("affected_resources", alert.affected_resources, MAX_ITEMS, MAX_NAME)
    checker.at_most("runbook_url", alert.runbook_url, MAX_URL)
    if alert.dedup_key is not None:
        if not alert.dedup_key.strip():
            checker.fail(
                "dedup_key",
                "must not be empty when set; leave it out to use the computed fingerprint",
            )
        else:
            checker.at_most("dedup_key", alert.dedup_key, MAX_ID)


def validate_assignees(assignees: Sequence[str], checker: Checker, field: str) -> None:
    checker.string_list(field, assignees, MAX_ASSIGNEES, MAX_NAME)
    if len(set(assignees)) != len(assignees):
        checker.fail(field, "must not contain the same assignee twice")


def validate_filter(incident_filter: IncidentFilter, checker: Checker) -> None:
    """A filter's text is matched against stored text, so it follows the same rule."""
    if any(NUL in source for source in incident_filter.sources):
        checker.fail("sources", NUL_FREE)
    checker.text("assignee", incident_filter.assignee)
    checker.text("incident_id", incident_filter.incident_id)
