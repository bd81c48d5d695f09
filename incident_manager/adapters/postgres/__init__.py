"""PostgreSQL storage: several server replicas share one database.

Chosen by a `postgresql://` (or `postgres://`) database URL. Everything that
must hold across replicas is enforced by the database, never by one
process's memory:

Units of work stay synchronous. The storage contract runs a plain function
over a `UnitOfWork` inside one transaction, and the handlers that use it are
synchronous by design (they are the same for SQLite and the in-memory fake).
So units of work run on a synchronous `psycopg_pool.ConnectionPool`, on
worker threads, and the event loop only awaits them. psycopg's async API is
used where it fits without wrapping the handlers: the LISTEN connection that
follows other replicas' commits is an `AsyncConnection` in a task on the
event loop.

Group commit. Write units of work are queued; a worker thread takes all that
is queued (up to 64, or until 1000 events are staged) and runs them in one
transaction, each in a savepoint, so that one numbering of the events and
one COMMIT serve them all (a lone unit starts at once, without savepoints).
A unit that raises is rolled back to its savepoint alone; one that lost a
race goes back to the front of the queue, and the group that runs it next
takes its locks first. Every unit of the group is answered after the COMMIT
returned; when the COMMIT fails, none is acknowledged.

Exact dedup. Before the reads that decide dedup, a write transaction takes a
transaction-scoped advisory lock on what it is about to decide: the alert's
key (source, alert id) before looking the alert up, the fingerprint before
looking for a mergeable incident, the request id before looking for an
earlier request. Another replica deciding the same thing waits for the
first to commit; under READ COMMITTED its next statement then sees that
commit, so it merges instead of opening a second incident, or answers a
retry instead of counting it twice. (The lock and the read are one
statement: a VOLATILE function whose read takes a new snapshot after the
lock.) Primary keys are the backstop: a unique
violation, a deadlock (40P01) or a serialization failure (40001) rolls the
whole unit of work back and runs it again; so does a lost race on an
incident's version that was read inside the same unit of work. Advisory locks
are taken in ascending key order when a transaction must wait (or with
`pg_try_advisory_xact_lock` otherwise; when that fails, the unit is run again
taking every key it needed up front, in order), so two batches, or two
replicas' groups, that share fingerprints in different orders never
deadlock on them. The rule holds for the whole transaction of a group: it
waits only before its first write, for a key above every key it holds.

Gap-free events. Sequence numbers come from a one-row counter, taken as late
as possible: the unit of work keeps its timeline events in memory, and only
after the work has returned are they numbered (`UPDATE event_counter SET
last = last + n RETURNING last`), inserted, and committed. The counter's row
lock is held until COMMIT, so transactions commit in sequence order: once a
reader has seen sequence N, every smaller sequence is already committed.
Each commit NOTIFYs a channel. Every replica runs one follower task that
LISTENs on it and, when woken (or every `FALLBACK_POLL` seconds, and after
reconnecting), reads the events after the last one it published and hands
them to the listeners in order. A replica's own commits are published at
once when they directly follow what it published last, or else by the
follower (which reads the events in between first); either way each
replica publishes every event exactly once, in sequence order.

Faults. A call that cannot reach the database fails with StorageUnavailable
(gRPC UNAVAILABLE); a unit of work is answered only after its COMMIT
returned. A pooled connection found broken when its transaction begins
(nothing has run on it yet) is dropped and the unit of work takes another,
so connections broken by a restart are replaced without failing calls once
the database is back (cheaper than checking every connection before lending
it: one round trip less per call); the follower reconnects with
backoff and catches up from the last sequence it published, so live streams
resume without a gap. `available` is False from a failed connection until
the follower's next successful query.

- `schema`: the migrations.
- `transaction`: what the units of work of one transaction share: advisory
  locks, staged events and undo, and where each unit began.
- `repositories`: what PostgreSQL's repositories do beyond the shared ones
  (adapters/sql), and numbering the staged events at commit.
- `group`: one group of units of work in one transaction; reruns.
- `engine`: the pool, the queue and its workers, publishing in order, the
  LISTEN follower, `PostgresStorage`.
"""

from incident_manager.adapters.postgres.engine import (
    MAX_ATTEMPTS,
    PostgresStorage,
    Unreachable,
    is_postgres_url,
)
from incident_manager.adapters.postgres.schema import MIGRATIONS, migrate

__all__ = [
    "MAX_ATTEMPTS",
    "MIGRATIONS",
    "PostgresStorage",
    "Unreachable",
    "is_postgres_url",
    "migrate",
]
