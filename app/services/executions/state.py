"""The one state machine of executions: the allowed transitions, and the one function that moves an execution.

`move` is a conditional UPDATE (only from a status the table allows, and only from the ones the caller names),
with the audit rows of the change in the same transaction, then the change's event on the execution's stream.
Every status change in the project goes through it, so a status is changed exactly once and never out of a
terminal state: two racing requests (cancel and persist, approve and reject) get one winner and one `None`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Integer, Row, Update, bindparam, func, literal, update
from sqlalchemy.sql.elements import ClauseElement

from app.extensions import db
from app.models import Execution, ExecutionStatus
from app.services import audit
from app.services.executions.events import emit_status, emit_terminal
from app.timeutil import utcnow

log = logging.getLogger(__name__)

S = ExecutionStatus
EXECUTIONS = Execution.__table__  # Core statements: no ORM flush or identity map on the hot path

# Where an execution may go from each status. Terminal statuses lead nowhere. running -> running is an LLM run
# that starts over (a redelivered step after a lost worker); the pauses of the tool loop (requires_action,
# waiting, awaiting_approval) resume to pending (the next task is queued) or running.
TRANSITIONS: Mapping[ExecutionStatus, frozenset[ExecutionStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.AWAITING_APPROVAL, S.DENIED, S.CANCELLED, S.FAILED, S.TIMED_OUT}),
    S.AWAITING_APPROVAL: frozenset({S.PENDING, S.RUNNING, S.DENIED, S.CANCELLED, S.FAILED, S.TIMED_OUT}),
    S.RUNNING: frozenset({S.RUNNING, S.REQUIRES_ACTION, S.WAITING, S.AWAITING_APPROVAL, S.PENDING, S.COMPLETED,
                          S.FAILED, S.CANCELLED, S.TIMED_OUT}),
    S.REQUIRES_ACTION: frozenset({S.PENDING, S.RUNNING, S.CANCELLED, S.FAILED, S.TIMED_OUT}),
    S.WAITING: frozenset({S.PENDING, S.RUNNING, S.CANCELLED, S.FAILED, S.TIMED_OUT}),
    **{status: frozenset() for status in S if status.terminal},
}
# The statuses a new execution is recorded with (POST /agents/{id}/execute decides which).
INITIAL: frozenset[ExecutionStatus] = frozenset({S.PENDING, S.AWAITING_APPROVAL, S.DENIED})


def can_move(source: ExecutionStatus, target: ExecutionStatus) -> bool:
    return target in TRANSITIONS[source]


def sources_of(target: ExecutionStatus) -> frozenset[ExecutionStatus]:
    """Every status the table allows `target` to be reached from."""
    return frozenset(source for source, targets in TRANSITIONS.items() if target in targets)


@dataclass(frozen=True)
class Audit:
    """An audit row of a transition; workspace, agent and execution come from the moved row."""

    action: str
    result: str = "ok"
    details: dict[str, Any] | None = None


AuditRows = Sequence[Audit] | Callable[[Row[Any]], Sequence[Audit]]


@dataclass(frozen=True)
class Add:
    """A value of `move`: the column plus `amount` (attempts + 1, tokens summed over the turns)."""

    amount: int


@dataclass(frozen=True)
class KeepOr:
    """A value of `move`: the column as it is, or `value` if it is NULL (started_at of a run that starts over)."""

    value: Any


# The UPDATE of each shape of move (its sources and which columns it sets how), built once per process with bound
# parameters: building and cache-keying a statement cost more CPU than executing it (py-spy, issue 12).
_STATEMENTS: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...], tuple[str, ...]], Update] = {}
# What move's RETURNING always holds: what it audits and announces with (the terminal event's fields).
MOVED = ("id", "status", "workspace_id", "agent_id")
FINISHED = ("output", "error_code", "error_message", "prompt_tokens", "completion_tokens", "attempts")


def _kind(value: Any) -> str:
    return "add" if isinstance(value, Add) else "keep_or" if isinstance(value, KeepOr) else "set"


def _set_clause(name: str, kind: str) -> ColumnElement[Any]:
    column = EXECUTIONS.c[name]
    if kind == "add":
        added: ColumnElement[Any] = column + bindparam(f"v_{name}", type_=Integer())
        return added
    param = bindparam(f"v_{name}", type_=column.type)
    return func.coalesce(column, param) if kind == "keep_or" else param


def _conditional_update(sources: tuple[str, ...]) -> Update:
    """UPDATE executions WHERE id = :where_id AND status IN (the sources, as parameters of their own: an
    expanding IN would be rendered again at every execution)."""
    status = EXECUTIONS.c.status
    return update(EXECUTIONS).where(EXECUTIONS.c.id == bindparam("where_id"),
                                    status.in_([literal(source, status.type) for source in sources]))


def _returned(columns: tuple[str, ...]) -> list[Any]:
    return list(EXECUTIONS.c) if not columns else [EXECUTIONS.c[name] for name in columns]


def _update_of(sources: tuple[str, ...], shape: tuple[tuple[str, str], ...], columns: tuple[str, ...]) -> Update:
    statement = _STATEMENTS.get((sources, shape, columns))
    if statement is None:
        statement = (
            _conditional_update(sources)
            .values({name: _set_clause(name, kind) for name, kind in shape})
            .returning(*_returned(columns))
        )
        _STATEMENTS[(sources, shape, columns)] = statement
    return statement


def _param(value: Any) -> Any:
    return value.amount if isinstance(value, Add) else value.value if isinstance(value, KeepOr) else value


def _moved_row(execution_id: str, sources: tuple[str, ...], fields: Mapping[str, Any],
               columns: tuple[str, ...]) -> Row[Any] | None:
    """The conditional UPDATE ... RETURNING of move: a cached statement, or one built here when a value is an
    SQL expression of the caller's."""
    if any(isinstance(value, ClauseElement) for value in fields.values()):
        values = {name: (_set_clause(name, _kind(value)) if isinstance(value, Add | KeepOr) else value)
                  for name, value in fields.items()}
        params = {f"v_{name}": _param(value) for name, value in fields.items() if isinstance(value, Add | KeepOr)}
        statement: Update = _conditional_update(sources).values(values).returning(*_returned(columns))
    else:
        statement = _update_of(sources, tuple((name, _kind(value)) for name, value in sorted(fields.items())),
                               columns)
        params = {f"v_{name}": _param(value) for name, value in fields.items()}
    return db.session.execute(statement, {"where_id": execution_id, **params}).one_or_none()


def move(
    execution_id: str,
    target: ExecutionStatus,
    *,
    actor: str,
    from_statuses: Iterable[ExecutionStatus] | None = None,
    values: Mapping[str, Any] | None = None,
    audit_rows: AuditRows = (),
    announce: bool = True,
    returning: Iterable[str] | None = None,
) -> Row[Any] | None:
    """Move the execution to `target` if it is in one of `from_statuses` (default: every status the table allows);
    commit with its audit rows, then announce it (a `status` event, or the one terminal event).

    Returns the updated row (every column, or `returning`'s and the ones it needs itself: fewer columns cost less
    CPU to read), or None if the execution was not in an allowed status: something
    else moved it first. A terminal target stamps finished_at. `audit_rows` may be a callable of the updated row
    (when the rows depend on what the UPDATE returned, such as the attempt number). A value may be `Add` or
    `KeepOr` instead of an SQL expression: the statement is then built once per process.
    """
    allowed = sources_of(target)
    sources = allowed if from_statuses is None else frozenset(from_statuses)
    if not sources <= allowed:
        raise ValueError(f"{target.value} cannot be reached from {sorted(s.value for s in sources - allowed)}")
    fields: dict[str, Any] = {"status": target.value, **(values or {})}
    if target.terminal:
        fields.setdefault("finished_at", utcnow())
    if returning is None:
        columns: tuple[str, ...] = ()
    else:
        wanted = [*MOVED, *(FINISHED if target.terminal else ()), *returning]
        columns = tuple(dict.fromkeys(wanted))
    row = _moved_row(execution_id, tuple(sorted(s.value for s in sources)), fields, columns)
    if row is None:
        db.session.rollback()
        return None
    entries = audit_rows(row) if callable(audit_rows) else audit_rows
    audit.record_many([
        audit.Entry(workspace_id=row.workspace_id, actor=actor, action=entry.action, result=entry.result,
                    agent_id=row.agent_id, execution_id=execution_id, details=entry.details)
        for entry in entries
    ])
    db.session.commit()
    if announce:
        if target.terminal:
            emit_terminal(row)
        else:
            emit_status(execution_id, target)
    return row


def flag_cancel(execution_id: str) -> bool:
    """Record that a cancel was asked for a running execution (the LLM step also reads the Redis flag)."""
    result = db.session.execute(
        update(EXECUTIONS)
        .where(EXECUTIONS.c.id == execution_id, EXECUTIONS.c.cancel_requested_at.is_(None),
               EXECUTIONS.c.status.not_in(sorted(s.value for s in S if s.terminal)))
        .values(cancel_requested_at=utcnow())
    )
    db.session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]
