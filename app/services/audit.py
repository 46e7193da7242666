"""Append-only, hash-chained audit log: rows join the caller's transaction, so a failed write fails the change."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select
from sqlalchemy.orm import Session

from app.extensions import db
from app.models import AuditLog, Workspace
from app.services.errors import ValidationFailed
from app.services.pagination import decode_cursor, encode_cursor
from app.timeutil import iso, utcnow

GENESIS_HASH = "0" * 64
RESULTS = frozenset({"ok", "denied", "error"})
# Built once per process, on the tables (Core: no ORM compile or loading step): building and cache-keying a
# statement cost more CPU than executing it (issue 12).
_WORKSPACES = Workspace.__table__
_LOCK_CHAIN_HEAD = (
    select(_WORKSPACES.c.audit_head).where(_WORKSPACES.c.id == bindparam("workspace_id"))
    .with_for_update(key_share=True)
)
_INSERT_ROWS = insert(AuditLog.__table__)


def row_digest(
    *,
    prev_hash: str,
    at: datetime,
    workspace_id: str,
    actor: str,
    agent_id: str | None,
    execution_id: str | None,
    action: str,
    result: str,
    details: dict[str, Any],
) -> str:
    """Hash every recorded field with the previous hash, so editing or removing a row breaks the chain."""
    payload = json.dumps(
        [prev_hash, iso(at), workspace_id, actor, agent_id, execution_id, action, result, details],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _lock_chain_head(conn: Session | Connection, workspace_id: str) -> str:
    """Lock the workspace row and read its chain head (the newest audit row's hash) in one statement.

    FOR NO KEY UPDATE serializes appenders per workspace without conflicting with the KEY SHARE locks that
    foreign keys take (FOR UPDATE would deadlock two transactions that each inserted a row first). Under READ
    COMMITTED a row locked after a wait is returned in its newest committed version, so the head read here is
    the one the previous appender committed; a trigger on audit_log (migration 0002) moves it on every insert.
    SQLite ignores the clause; its single writer serializes appenders.
    """
    head = conn.execute(_LOCK_CHAIN_HEAD, {"workspace_id": workspace_id}).one()[0]
    return head or GENESIS_HASH


@dataclass(frozen=True)
class Entry:
    """One audit row to append: who did what to which agent or execution, with what result."""

    workspace_id: str
    actor: str
    action: str
    result: str = "ok"
    agent_id: str | None = None
    execution_id: str | None = None
    details: dict[str, Any] | None = None


def _chained_rows(prev_hash: str, entries: Sequence[Entry]) -> list[dict[str, Any]]:
    """The rows that extend a chain whose head is prev_hash, in order; the one place a row is built."""
    at = utcnow()
    rows = []
    for entry in entries:
        if entry.result not in RESULTS:
            raise ValueError(f"unknown audit result {entry.result!r}")
        fields: dict[str, Any] = {
            "at": at,
            "workspace_id": entry.workspace_id,
            "actor": entry.actor,
            "agent_id": entry.agent_id,
            "execution_id": entry.execution_id,
            "action": entry.action,
            "result": entry.result,
            "details": json.loads(json.dumps(entry.details or {}, default=str)),
        }
        digest = row_digest(prev_hash=prev_hash, **fields)
        rows.append({**fields, "prev_hash": prev_hash, "hash": digest})
        prev_hash = digest
    return rows


def record(
    *,
    workspace_id: str,
    actor: str,
    action: str,
    result: str = "ok",
    agent_id: str | None = None,
    execution_id: str | None = None,
    details: dict[str, Any] | None = None,
    conn: Session | Connection | None = None,
) -> None:
    """Append one row in the current transaction (or conn's); the caller commits it with the change it records."""
    record_many([Entry(workspace_id, actor, action, result, agent_id, execution_id, details)], conn)


def record_many(entries: Sequence[Entry], conn: Session | Connection | None = None) -> None:
    """Append several rows of ONE workspace's chain in the current transaction: the chain head is locked and read
    once and the rows go in as one executemany INSERT (Core, no ORM flush), in list order.

    Call it as the last statement before COMMIT: the workspace lock is held from here to the end of the
    transaction, and every appender of the workspace waits for it.
    """
    if not entries:
        return
    target = conn if conn is not None else db.session()
    workspace_id = entries[0].workspace_id
    if any(entry.workspace_id != workspace_id for entry in entries):
        raise ValueError("record_many appends to one workspace's chain")
    rows = _chained_rows(_lock_chain_head(target, workspace_id), entries)
    # One row as a plain execute: psycopg runs an executemany in pipeline mode, which costs more for a single row.
    target.execute(_INSERT_ROWS, rows[0] if len(rows) == 1 else rows)


def serialize(row: AuditLog) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": iso(row.at),
        "workspace_id": row.workspace_id,
        "actor": row.actor,
        "agent_id": row.agent_id,
        "execution_id": row.execution_id,
        "action": row.action,
        "result": row.result,
        "details": row.details,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def list_rows(
    *,
    workspace_id: str,
    agent_id: str | None = None,
    execution_id: str | None = None,
    action: str | None = None,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, keyset-paginated by id."""
    query = select(AuditLog).where(AuditLog.workspace_id == workspace_id)
    if agent_id:
        query = query.where(AuditLog.agent_id == agent_id)
    if execution_id:
        query = query.where(AuditLog.execution_id == execution_id)
    if action:
        query = query.where(AuditLog.action == action)
    position = decode_cursor(cursor)
    if position is not None:
        last_id = position.get("id")
        if not isinstance(last_id, int) or isinstance(last_id, bool):
            raise ValidationFailed("invalid cursor", {"cursor": cursor})
        query = query.where(AuditLog.id < last_id)
    rows = db.session.execute(query.order_by(AuditLog.id.desc()).limit(limit + 1)).scalars().all()
    next_cursor = encode_cursor({"id": rows[limit - 1].id}) if len(rows) > limit else None
    return [serialize(row) for row in rows[:limit]], next_cursor


def verify_chain(workspace_id: str, batch_size: int = 1000) -> dict[str, Any]:
    """Recompute every hash in order; report the first row whose hash or link does not match."""
    expected_prev = GENESIS_HASH
    checked = 0
    last_id = 0
    while True:
        rows = (
            db.session.execute(
                select(AuditLog)
                .where(AuditLog.workspace_id == workspace_id, AuditLog.id > last_id)
                .order_by(AuditLog.id)
                .limit(batch_size)
            )
            .scalars()
            .all()
        )
        if not rows:
            return {"ok": True, "checked": checked, "first_bad_id": None}
        for row in rows:
            digest = row_digest(
                prev_hash=row.prev_hash,
                at=row.at,
                workspace_id=row.workspace_id,
                actor=row.actor,
                agent_id=row.agent_id,
                execution_id=row.execution_id,
                action=row.action,
                result=row.result,
                details=row.details,
            )
            if row.prev_hash != expected_prev or digest != row.hash:
                return {"ok": False, "checked": checked + 1, "first_bad_id": row.id}
            expected_prev = row.hash
            checked += 1
            last_id = row.id
