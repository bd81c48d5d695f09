"""What the SQLite and PostgreSQL backends share: rows, statements, repositories.

- `rows`: how domain objects become rows and back, and the column lists.
- `dialect`: the few ways the two databases' SQL differs.
- `statements`: every shared statement, built once per dialect from the
  column lists (placeholders follow their length, never a count by hand).
- `repositories`: the repositories written once, with hooks where a
  backend genuinely differs (SQLite's writer cache; PostgreSQL's advisory
  locks, staged events and undo).

To add a column: its migration in `sqlite/schema.py` and `postgres/schema.py`,
then its place in a column list and row function in `rows.py`.
"""
