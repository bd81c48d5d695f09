"""SQLite storage: the embedded default. Nothing to install, one file on disk.

One connection writes, on one thread, so write transactions never contend;
another connection reads on its own thread (WAL lets it read while a write is
in progress). The write connection runs with `synchronous=FULL`: a commit
returns only after the WAL is on disk, so an acknowledged alert survives
`kill -9` of the server and a power loss alike.

- `schema`: the migrations.
- `repositories`: what SQLite's repositories do beyond the shared ones
  (adapters/sql): the writer's cache.
- `cache`: that cache (dedup index, recent incidents, alert-key filter).
- `writer`: the writer thread with group commit, and `SqliteStorage`.
"""

from incident_manager.adapters.sqlite.cache import WriterCache
from incident_manager.adapters.sqlite.schema import MIGRATIONS, migrate
from incident_manager.adapters.sqlite.writer import SqliteStorage

__all__ = ["MIGRATIONS", "SqliteStorage", "WriterCache", "migrate"]
