"""The per-agent inbox lock shared by get_messages and the mailbox, so their drains never interleave.

Whoever holds an agent's lock is the only party taking messages from that agent's queue (basic_get) and
storing them, so rows get seqs in queue order. The lock lives in the database transaction that stores the
messages: it is released by the commit that makes them visible (or by the rollback, or by the database
when the holder dies), so no one can see the queue drained but the rows missing.

- PostgreSQL: ``pg_advisory_xact_lock(key)``, key = a stable 64-bit hash of the agent id. Agents do not
  block each other.
- SQLite: a no-op UPDATE of inbox_messages as the transaction's first statement takes SQLite's RESERVED
  (write) lock, which serializes every writer of the file across processes. Coarser (one lock for all
  agents) but SQLite serializes writers anyway; the busy timeout of the connection bounds the wait.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from sqlalchemy import Connection, Engine, text


class InboxLock(Protocol):
    """Held for the rest of the current transaction once acquire() returns."""

    def acquire(self, conn: Connection, agent_id: str) -> None:
        """Block until this transaction holds agent_id's inbox lock."""
        ...


def lock_key(agent_id: str) -> int:
    """A signed 64-bit advisory lock key, stable across processes and Python versions."""
    digest = hashlib.blake2b(f"coordination.inbox:{agent_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresAdvisoryLock:
    """pg_advisory_xact_lock: per agent, released at commit or rollback."""

    def acquire(self, conn: Connection, agent_id: str) -> None:
        """Wait for the agent's advisory lock inside the current transaction."""
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(agent_id)})


class SQLiteWriteLock:
    """SQLite's database write lock, taken by a no-op write at the start of the transaction."""

    def acquire(self, conn: Connection, agent_id: str) -> None:
        """Take the RESERVED lock now instead of at the first insert."""
        conn.execute(text("UPDATE inbox_messages SET hop = hop WHERE 1 = 0"))


def lock_for(engine: Engine) -> InboxLock:
    """The lock that fits the engine's database."""
    dialect = engine.dialect.name
    if dialect == "postgresql":
        return PostgresAdvisoryLock()
    if dialect == "sqlite":
        return SQLiteWriteLock()
    raise ValueError(f"no inbox lock for dialect {dialect!r}; pass lock= explicitly")
