"""The few ways SQLite's and PostgreSQL's SQL differ, as one small object per database.

Statements are written with the dialect's placeholder from the start; they
are never rewritten at run time (PostgreSQL's jsonb `?` operator would be
taken for a placeholder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    """What a backend's SQL says differently; everything else is shared."""

    name: str
    mark: str
    """The parameter placeholder: `?` for sqlite3, `%s` for psycopg."""
    expands_lists: bool
    """True: a list of values takes one placeholder each (`IN (?, ?)`); False: the list
    is one array parameter (`= ANY(%s)`)."""
    assignee_test: str
    """A test that the row's JSON list `assignees` holds one name, the parameter."""
    note_order: str
    """ORDER BY for an incident's notes, newest first; ties in the order they were written."""
    page_hint: str = ""
    """Put before each filter column of a page query (not the count): a planner hint."""

    def marks(self, count: int) -> str:
        """`count` placeholders, comma-separated."""
        return ", ".join([self.mark] * count)

    def one_of(self, column: str, values: list[Any]) -> tuple[str, list[Any]]:
        """A test that `column` holds one of `values`, and the parameters it takes."""
        if self.expands_lists:
            return f"{column} IN ({self.marks(len(values))})", values
        return f"{column} = ANY({self.mark})", [values]
