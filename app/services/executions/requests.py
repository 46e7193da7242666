"""POST /agents/{id}/execute: governance, idempotency, the row and its audit rows, then the chain after commit."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import Execution, ExecutionStatus
from app.models.types import new_id
from app.services import admission, agents, audit, governance
from app.services.auth import Principal
from app.services.errors import Conflict, GovernanceDenied, Unavailable
from app.services.executions import llm_config, state
from app.services.executions.events import emit_quietly, emit_status, event_log, terminal_event
from app.services.idempotency import request_hash
from app.timeutil import utcnow

log = logging.getLogger(__name__)

# Sends the chain for (execution_id, task_ids) to the broker; raises if the broker did not confirm it.
Enqueue = Callable[[str, list[str]], None]
# Where register_celery binds this app's Enqueue, so services and views never import tasks/.
ENQUEUE_EXTENSION = "enqueue_execution"

STEP_NAMES = ("governance", "llm", "persist")
OUTCOME_STATUS = {
    "denied": ExecutionStatus.DENIED,
    "approval_required": ExecutionStatus.AWAITING_APPROVAL,
    "allowed": ExecutionStatus.PENDING,
}


@dataclass(frozen=True)
class ExecutionRequest:
    """A validated POST /agents/{id}/execute body."""

    message: str
    stream: bool
    action: str
    timeout_s: int
    metadata: dict[str, Any] | None
    max_tokens: int | None = None
    max_turns: int = 8  # the tool loop's LLM turns (DESIGN.md, Tools)
    wait_timeout_s: int | None = None  # each pause's bound (None: EXECUTION_WAIT_TIMEOUT_S)

    def as_dict(self) -> dict[str, Any]:
        body = {
            "message": self.message,
            "stream": self.stream,
            "action": self.action,
            "timeout_s": self.timeout_s,
            "metadata": self.metadata,
            **({"max_turns": self.max_turns} if self.max_turns != 8 else {}),
            **({"wait_timeout_s": self.wait_timeout_s} if self.wait_timeout_s is not None else {}),
        }
        if self.max_tokens is not None:  # only when set: older Idempotency-Keys keep their request hash
            body["max_tokens"] = self.max_tokens
        return body


def bound_enqueue() -> Enqueue:
    """This app's chain sender (its own Celery app and broker URL), bound once at app start."""
    enqueue: Enqueue = current_app.extensions[ENQUEUE_EXTENSION]
    return enqueue


def new_task_ids() -> list[str]:
    """The chain's task ids, chosen up front and stored, so cancel can revoke queued steps."""
    return [str(uuid.uuid4()) for _ in STEP_NAMES]


def _find_by_key(workspace_id: str, key: str) -> Execution | None:
    return db.session.execute(
        select(Execution).where(Execution.workspace_id == workspace_id, Execution.idempotency_key == key)
    ).scalar_one_or_none()


def _replay(existing: Execution, fingerprint: str, key: str) -> Execution:
    """Same key and body: the same execution (a denied one is denied again); another body: 409."""
    if existing.request_hash != fingerprint:
        raise Conflict(
            "Idempotency-Key was already used with a different request",
            {"idempotency_key": key, "execution_id": existing.id},
        )
    if existing.status == ExecutionStatus.DENIED and existing.error_code == "governance_denied":
        raise GovernanceDenied(
            existing.error_message or "denied",
            {"execution_id": existing.id, "reason": existing.error_message},
        )
    return existing


def request(
    principal: Principal,
    agent_id: str,
    body: ExecutionRequest,
    *,
    idempotency_key: str | None,
    enqueue: Enqueue | None = None,
) -> Execution:
    """Record the execution and its audit rows, commit, then emit its first event and enqueue its chain."""
    agent = agents.run_settings(principal, agent_id)
    fingerprint = request_hash(agent_id=agent_id, body=body.as_dict())
    if idempotency_key is not None:
        existing = _find_by_key(principal.workspace_id, idempotency_key)
        if existing is not None:
            return _replay(existing, fingerprint, idempotency_key)
    llm_config.check(principal.workspace_id, agent)
    admission.check_daily_budget(principal.workspace_id)
    decision = governance.decide(maturity_level=agent.maturity_level, action=body.action, agent_status=agent.status)
    status = OUTCOME_STATUS[decision.outcome]
    assert status in state.INITIAL
    execution_id = new_id()
    now = utcnow()
    execution = Execution(
        id=execution_id,
        workspace_id=principal.workspace_id,
        agent_id=agent.id,
        status=status.value,
        action=body.action,
        message=body.message,
        stream=body.stream,
        timeout_s=body.timeout_s,
        max_tokens=body.max_tokens,
        max_turns=body.max_turns,
        wait_timeout_s=body.wait_timeout_s,
        meta=body.metadata,
        governance=decision.as_dict(),
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        task_ids=new_task_ids() if status is ExecutionStatus.PENDING else None,
        steps=[],
        created_at=now,
    )
    if status is ExecutionStatus.DENIED:
        execution.error_code = "governance_denied"
        execution.error_message = decision.reason
        execution.finished_at = now
    # The row answers the client after commit: keep it loaded instead of a SELECT to refresh it.
    db.session().expire_on_commit = False
    db.session.add(execution)
    try:
        # Insert first (its foreign keys take KEY SHARE locks, which FOR NO KEY UPDATE does not conflict with),
        # then the audit rows, which lock the workspace's chain head until COMMIT: the lock is held for the
        # fewest round trips possible, since every appender of the workspace waits for it.
        db.session.flush()
        entry = audit.Entry
        audit.record_many([
            entry(principal.workspace_id, principal.actor, "execution.requested", "ok", agent.id, execution_id,
                  {"action": body.action, "timeout_s": body.timeout_s, "stream": body.stream,
                   "idempotency_key": idempotency_key}),
            entry(principal.workspace_id, principal.actor, f"governance.{decision.outcome}",
                  "denied" if decision.outcome == "denied" else "ok", agent.id, execution_id, decision.as_dict()),
        ])
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        if idempotency_key is None:
            raise
        raced = _find_by_key(principal.workspace_id, idempotency_key)
        if raced is None:
            raise
        return _replay(raced, fingerprint, idempotency_key)
    if status is ExecutionStatus.DENIED:
        emit_quietly(execution.id, ("status", {"execution_id": execution.id, "status": execution.status}))
        emit_quietly(execution.id, terminal_event(execution))
        raise GovernanceDenied(decision.reason, {"execution_id": execution.id, "reason": decision.reason})
    if status is ExecutionStatus.PENDING:
        start(execution, enqueue or bound_enqueue(), agent)
        return execution
    try:
        emit_status(execution.id, status)
    except Exception as exc:  # noqa: BLE001 - Redis down: nothing was confirmed to the client
        _unavailable(execution, exc)
    return execution


def start(execution: Execution, enqueue: Enqueue, agent: agents.RunSettings | None = None) -> None:
    """After commit: announce `pending`, enqueue the chain, mark it queued. On failure end it `failed`, answer 503."""
    try:
        emit_status(execution.id, ExecutionStatus.PENDING)
        # Over a limit, it waits in the admission queue, whose dispatcher sends the chain later.
        if isinstance(admission.admit(execution, agent), admission.Admitted):
            enqueue(execution.id, list(execution.task_ids or []))
    except Exception as exc:  # noqa: BLE001 - broker or Redis down: nothing was confirmed to the client
        _unavailable(execution, exc)
    _mark_queued(execution.id)


def _mark_queued(execution_id: str) -> None:
    """Best effort: without the mark, the worker's sweep sends the chain a second time, which the steps tolerate."""
    try:
        event_log().mark_queued(execution_id)
    except Exception:  # noqa: BLE001 - the chain is on the broker; the execution must not be failed for this
        log.warning("could not mark execution %s queued", execution_id)


def dependency_of(exc: Exception) -> str:
    return "redis" if type(exc).__module__.startswith("redis") else "broker"


def _unavailable(execution: Execution, exc: Exception) -> NoReturn:
    """The execution could not be started: end it failed (key freed, so a retry starts afresh) and answer 503."""
    log.warning("could not start execution %s: %s", execution.id, type(exc).__name__)
    dependency = dependency_of(exc)
    try:
        db.session.rollback()
        row = state.move(
            execution.id, ExecutionStatus.FAILED, actor="api",
            from_statuses=[ExecutionStatus.PENDING],
            values={"error_code": "unavailable", "error_message": f"could not be queued ({dependency} unavailable)",
                    "idempotency_key": None},
            audit_rows=[state.Audit("execution.failed", "error", {"reason": "enqueue_failed",
                                                                   "dependency": dependency})],
            announce=False,
        )
        if row is not None:
            emit_quietly(execution.id, terminal_event(row))
            db.session.refresh(execution)
    except Exception:  # noqa: BLE001 - the database may be down too; the row then stays pending
        log.exception("could not mark execution %s failed after an enqueue failure", execution.id)
        db.session.rollback()
    raise Unavailable(
        "the execution could not be queued; retry later",
        {"execution_id": execution.id, "dependency": dependency},
    ) from exc
