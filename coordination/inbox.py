"""Moving an agent's queue into its inbox table: idempotent store, locked drain, FIFO read.

A drain holds the agent's inbox lock (coordination.locks) in one database transaction while it takes
messages with basic_get, stores each one (insert ... on conflict (message_id) do nothing), commits, and only
then acks. A crash before the commit leaves the messages unacked, so RabbitMQ requeues them in their
original position; a crash after the commit but before the ack redelivers messages whose rows exist, and
the insert skips them. So nothing is lost, nothing is duplicated, and seq follows queue order.

Only basic_get is used on inbox queues, never basic.consume: a push consumer holds prefetched deliveries
outside any lock, and a locked drainer would then take later messages first (FIFO broken) and return
without the in-flight ones (a confirmed message not yet readable).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import amqp
from sqlalchemy import Connection, Engine, Insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from coordination import schema
from coordination.broker import BrokerSession
from coordination.envelope import decode_delivery, public_row
from coordination.locks import InboxLock
from coordination.topology import inbox_queue_name

log = logging.getLogger(__name__)

# Failures of the database itself rather than of one message (those are DataError, IntegrityError, ...).
SYSTEMIC_DB_ERRORS = (
    sa_exc.OperationalError,
    sa_exc.ProgrammingError,
    sa_exc.InterfaceError,
    sa_exc.InternalError,
)
StoredHook = Callable[[Connection, dict[str, Any]], None]
DEFAULT_BATCH = 200
MAX_READ_LIMIT = 1000


class AttemptTracker:
    """Failed store attempts per message_id (bounded LRU), so poison can be told from bad luck."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._counts: OrderedDict[str, int] = OrderedDict()

    def record_failure(self, message_id: str, broker_count: int = 0) -> int:
        """Count one more failure; the broker's x-delivery-count (quorum) survives our restarts."""
        count = max(self._counts.pop(message_id, 0), broker_count) + 1
        self._counts[message_id] = count
        while len(self._counts) > self.max_entries:
            self._counts.popitem(last=False)
        return count

    def forget(self, message_id: str) -> None:
        """Drop the count once the message is stored or dead-lettered."""
        self._counts.pop(message_id, None)


def _insert_statement(dialect: str) -> Insert:
    """INSERT ... ON CONFLICT (message_id) DO NOTHING RETURNING seq, built once per dialect (cached SQL)."""
    table = schema.inbox_messages
    stmt: Insert
    if dialect == "postgresql":
        stmt = pg_insert(table).on_conflict_do_nothing(index_elements=["message_id"])
    elif dialect == "sqlite":
        stmt = sqlite_insert(table).on_conflict_do_nothing(index_elements=["message_id"])
    else:
        raise ValueError(f"unsupported dialect {dialect!r}")
    return stmt.returning(table.c.seq)


_INSERTS = {name: _insert_statement(name) for name in ("postgresql", "sqlite")}


def store_delivery(conn: Connection, row: dict[str, Any]) -> int | None:
    """Insert one inbox row unless its message_id is already stored; the new seq, or None if duplicate."""
    stmt = _INSERTS.get(conn.dialect.name)
    if stmt is None:
        stmt = _insert_statement(conn.dialect.name)
    seq = conn.execute(stmt, row).scalar()
    return None if seq is None else int(seq)


@dataclass
class DrainResult:
    """What one drain did; `missing` means the agent has no inbox queue."""

    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    failures: int = 0
    missing: bool = False


def _broker_delivery_count(msg: Any) -> int:
    """Quorum queues count deliveries in x-delivery-count; classic queues have no such header."""
    headers = msg.properties.get("application_headers") or {}
    try:
        return int(headers.get("x-delivery-count") or 0)
    except (TypeError, ValueError):
        return 0


def drain_inbox(
    session: BrokerSession,
    engine: Engine,
    agent_id: str,
    *,
    lock: InboxLock,
    attempts: AttemptTracker,
    max_attempts: int,
    on_stored: StoredHook | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> DrainResult:
    """Store every message that was in the agent's queue when the drain began, in queue order."""
    queue = inbox_queue_name(agent_id)
    result = DrainResult()
    budget: int | None = None  # messages present at the start; later arrivals don't starve the caller
    while True:
        channel = session.channel()
        last_tag: int | None = None
        empty = False
        with engine.connect() as db:
            tx = db.begin()
            try:
                lock.acquire(db, agent_id)
                taken = 0
                while taken < batch_size and (budget is None or budget > 0):
                    msg = channel.basic_get(queue=queue, no_ack=False)
                    if msg is None:
                        empty = True
                        break
                    if budget is None:
                        budget = int(msg.delivery_info.get("message_count") or 0) + 1
                    tag = msg.delivery_info["delivery_tag"]
                    if _store_one(db, agent_id, msg, result, on_stored):
                        last_tag = tag
                        taken += 1
                        budget -= 1
                        continue
                    message_id = str(msg.properties.get("message_id") or f"tag:{tag}")
                    count = attempts.record_failure(message_id, _broker_delivery_count(msg))
                    result.failures += 1
                    if count >= max_attempts:
                        log.error("message %s failed %d times: dead-lettering it", message_id, count)
                        channel.basic_reject(tag, requeue=False)
                        attempts.forget(message_id)
                        result.dead_lettered += 1
                        budget -= 1
                    else:
                        channel.basic_reject(tag, requeue=True)
                tx.commit()
            except amqp.exceptions.NotFound:
                tx.rollback()
                session.reset_channel()
                result.missing = True
                return result
            except BaseException:
                if last_tag is not None and channel.is_open:
                    try:
                        channel.basic_nack(last_tag, multiple=True, requeue=True)
                    except Exception:  # noqa: BLE001 - the channel dying requeues them too
                        session.broken = True
                if tx.is_active:
                    tx.rollback()
                raise
        if last_tag is not None:
            channel.basic_ack(last_tag, multiple=True)
        if empty or (budget is not None and budget <= 0):
            return result


def _store_one(db: Connection, agent_id: str, msg: Any, result: DrainResult, on_stored: StoredHook | None) -> bool:
    """Store one delivery in a savepoint; False if this message (not the transaction) failed."""
    savepoint = db.begin_nested()
    try:
        row = decode_delivery(agent_id, msg)
        seq = store_delivery(db, row)
        if seq is None:
            result.duplicates += 1
        else:
            result.stored += 1
            if on_stored is not None:
                on_stored(db, {"seq": seq, **row})
        savepoint.commit()
        return True
    except SYSTEMIC_DB_ERRORS:
        raise  # missing table, lost connection...: not this message's fault, so nothing is counted
    except Exception as exc:  # noqa: BLE001 - any other failure of this message counts as one attempt
        log.warning("storing message %s failed: %s", msg.properties.get("message_id"), exc)
        savepoint.rollback()  # raises if the transaction itself is gone: then it's not the message
        return False


def read_inbox(engine: Engine, agent_id: str, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """The stored inbox after a seq, FIFO, in the API's shape."""
    if not 1 <= limit <= MAX_READ_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_READ_LIMIT}")
    table = schema.inbox_messages
    query = select(table).where(table.c.to_agent_id == agent_id, table.c.seq > after).order_by(table.c.seq).limit(limit)
    with engine.connect() as db:
        return [public_row(row) for row in db.execute(query)]
