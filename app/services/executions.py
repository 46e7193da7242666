"""Executions from the API side: request (governance, idempotency, enqueue after commit), read, cancel, approve."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from app.extensions import db
from app.llm import InvalidOptions, validate_options
from app.models import Agent, Execution, ExecutionStatus
from app.models.execution import TERMINAL_STATUSES
from app.models.types import new_id
from app.services import agents, audit, credentials, governance
from app.services.auth import Principal
from app.services.errors import Conflict, GovernanceDenied, NotFound, Unavailable, ValidationFailed
from app.services.idempotency import request_hash
from app.services.pagination import newest_first
from app.services.streams import EventLog, client
from app.timeutil import as_utc, iso, utcnow

log = logging.getLogger(__name__)

# Sends the chain for (execution_id, task_ids) to the broker; raises if the broker did not confirm it.
Enqueue = Callable[[str, list[str]], None]

NOT_TERMINAL = [status.value for status in ExecutionStatus if status not in TERMINAL_STATUSES]
STEP_NAMES = ("governance", "llm", "persist")


@dataclass(frozen=True)
class ExecutionRequest:
    """A validated POST /agents/{id}/execute body."""

    message: str
    stream: bool
    action: str
    timeout_s: int
    metadata: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "stream": self.stream,
            "action": self.action,
            "timeout_s": self.timeout_s,
            "metadata": self.metadata,
        }


_event_logs: dict[tuple[int, str, int, int], EventLog] = {}


def event_log() -> EventLog:
    """The event log on this app's Redis; one per process and settings (it registers its scripts once)."""
    config = current_app.config
    key = (os.getpid(), config["REDIS_URL"], int(config["STREAM_MAX_EVENTS"]), int(config["STREAM_RETENTION_S"]))
    found = _event_logs.get(key)
    if found is None:
        found = _event_logs[key] = EventLog(client(key[1]), max_events=key[2], retention_s=key[3])
    return found


def is_terminal(status: str) -> bool:
    return ExecutionStatus(status) in TERMINAL_STATUSES


def error_of(execution: Execution) -> dict[str, str] | None:
    if execution.error_code is None:
        return None
    return {"code": execution.error_code, "message": execution.error_message or ""}


def serialize(execution: Execution) -> dict[str, Any]:
    return {
        "execution_id": execution.id,
        "agent_id": execution.agent_id,
        "status": execution.status,
        "action": execution.action,
        "message": execution.message,
        "output": execution.output,
        "error": error_of(execution),
        "usage": {"prompt_tokens": execution.prompt_tokens, "completion_tokens": execution.completion_tokens},
        "attempts": execution.attempts,
        "steps": execution.steps or [],
        "metadata": execution.meta,
        "timeout_s": execution.timeout_s,
        "created_at": iso(execution.created_at),
        "started_at": iso(execution.started_at),
        "finished_at": iso(execution.finished_at),
    }


def accepted(execution: Execution) -> dict[str, Any]:
    """The answer to POST /agents/{id}/execute with stream false."""
    return {
        "execution_id": execution.id,
        "agent_id": execution.agent_id,
        "status": execution.status,
        "stream_url": f"/executions/{execution.id}/events",
        "created_at": iso(execution.created_at),
    }


def terminal_event(execution: Execution) -> tuple[str, dict[str, Any]]:
    """The one terminal SSE event of a finished execution, built from its row (so a re-emit is identical)."""
    data: dict[str, Any] = {"execution_id": execution.id, "status": execution.status}
    if execution.status == ExecutionStatus.COMPLETED:
        data["output"] = execution.output or ""
        data["usage"] = {"prompt_tokens": execution.prompt_tokens, "completion_tokens": execution.completion_tokens}
        data["attempts"] = execution.attempts
    elif execution.status == ExecutionStatus.DENIED:
        data["reason"] = execution.error_message or "denied"
    else:
        data["error"] = error_of(execution)
        data["attempts"] = execution.attempts
    return execution.status, data


def emit_terminal(execution: Execution) -> None:
    """Emit the terminal event; the stream refuses a second one, so calling this again is harmless."""
    event, data = terminal_event(execution)
    event_log().emit(execution.id, event, data)


def get(principal: Principal, execution_id: str) -> Execution:
    """Another workspace's execution is indistinguishable from a missing one."""
    execution = db.session.get(Execution, execution_id)
    if execution is None or execution.workspace_id != principal.workspace_id:
        raise NotFound(f"execution {execution_id} not found", {"execution_id": execution_id})
    return execution


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


def check_llm_config(workspace_id: str, agent: Agent) -> None:
    """Refuse (422) an agent whose provider, options or credential cannot work, before anything is recorded."""
    llm = agent.llm or {}
    provider = str(llm.get("provider") or "scripted")
    try:
        validate_options(provider, llm.get("options") or {})
    except InvalidOptions as exc:
        raise ValidationFailed(f"agent llm options are invalid: {exc.message}",
                               {"field": exc.field, "agent_id": agent.id}) from exc
    credential_id = llm.get("credential_id")
    if credential_id:
        try:
            credential = credentials.get(workspace_id, str(credential_id))
        except NotFound as exc:
            raise ValidationFailed("agent llm.credential_id names no credential of this workspace",
                                   {"credential_id": credential_id, "agent_id": agent.id}) from exc
        if credential.provider != provider:
            raise ValidationFailed(
                f"credential is for provider {credential.provider!r}, agent uses {provider!r}",
                {"credential_id": credential_id, "agent_id": agent.id},
            )
    elif provider != "scripted":
        raise ValidationFailed(f"provider {provider!r} needs llm.credential_id (POST /credentials)",
                               {"agent_id": agent.id})


def request(
    principal: Principal,
    agent_id: str,
    body: ExecutionRequest,
    *,
    idempotency_key: str | None,
    enqueue: Enqueue,
) -> Execution:
    """Record the execution and its audit rows, commit, then emit its first event and enqueue its chain."""
    agent = agents.get(principal, agent_id)
    fingerprint = request_hash(agent_id=agent_id, body=body.as_dict())
    if idempotency_key is not None:
        existing = _find_by_key(principal.workspace_id, idempotency_key)
        if existing is not None:
            return _replay(existing, fingerprint, idempotency_key)
    check_llm_config(principal.workspace_id, agent)
    decision = governance.decide(maturity_level=agent.maturity_level, action=body.action, agent_status=agent.status)
    status = {
        "denied": ExecutionStatus.DENIED,
        "approval_required": ExecutionStatus.AWAITING_APPROVAL,
        "allowed": ExecutionStatus.PENDING,
    }[decision.outcome]
    execution_id = new_id()
    task_ids = [str(uuid.uuid4()) for _ in STEP_NAMES] if status is ExecutionStatus.PENDING else None
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
        meta=body.metadata,
        governance=decision.as_dict(),
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        task_ids=task_ids,
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
        audit.record_many([
            {"workspace_id": principal.workspace_id, "actor": principal.actor, "agent_id": agent.id,
             "execution_id": execution_id, "action": "execution.requested",
             "details": {"action": body.action, "timeout_s": body.timeout_s, "stream": body.stream,
                         "idempotency_key": idempotency_key}},
            {"workspace_id": principal.workspace_id, "actor": principal.actor, "agent_id": agent.id,
             "execution_id": execution_id, "action": f"governance.{decision.outcome}",
             "result": "denied" if decision.outcome == "denied" else "ok", "details": decision.as_dict()},
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
        _emit_quietly(execution, ("status", {"execution_id": execution.id, "status": execution.status}))
        _emit_quietly(execution, terminal_event(execution))
        raise GovernanceDenied(decision.reason, {"execution_id": execution.id, "reason": decision.reason})
    _start(execution, enqueue)
    return execution


def _emit_quietly(execution: Execution, event: tuple[str, dict[str, Any]]) -> None:
    """Best effort for events the database can replay anyway (the execution already ended)."""
    try:
        event_log().emit(execution.id, event[0], event[1])
    except Exception:  # noqa: BLE001 - the row is the record; the stream falls back to it
        log.warning("could not emit %s for execution %s", event[0], execution.id)


def _start(execution: Execution, enqueue: Enqueue) -> None:
    """After commit: announce the status, then enqueue and mark it queued. On failure end it `failed`, answer 503."""
    try:
        event_log().emit(execution.id, "status", {"execution_id": execution.id, "status": execution.status})
        if execution.status == ExecutionStatus.PENDING:
            enqueue(execution.id, list(execution.task_ids or []))
            _mark_queued(execution.id)
    except Exception as exc:  # noqa: BLE001 - broker or Redis down: nothing was confirmed to the client
        log.warning("could not start execution %s: %s", execution.id, type(exc).__name__)
        _fail_unstarted(execution, exc)
        raise Unavailable(
            "the execution could not be queued; retry later",
            {"execution_id": execution.id, "dependency": _dependency(exc)},
        ) from exc


def _mark_queued(execution_id: str) -> None:
    """Best effort: without the mark, the worker's sweep sends the chain a second time, which the steps tolerate."""
    try:
        event_log().mark_queued(execution_id)
    except Exception:  # noqa: BLE001 - the chain is on the broker; the execution must not be failed for this
        log.warning("could not mark execution %s queued", execution_id)


def requeue_stranded(enqueue: Enqueue, *, older_than_s: float, limit: int = 100) -> list[str]:
    """Send the chain of pending executions that no broker ever confirmed: a web process died between the commit
    and the confirm. The mark is set after the confirm, so one older than older_than_s without it was never
    queued (or Redis lost the mark: then the chain runs twice, and the steps' status checks and LLM lease make
    the second one a no-op or a restart, never a second end)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stranded = db.session.execute(
        select(Execution.id, Execution.task_ids)
        .where(Execution.status == ExecutionStatus.PENDING.value, Execution.created_at < cutoff)
        .order_by(Execution.created_at)
        .limit(limit)
    ).all()
    db.session.rollback()
    events = event_log()
    requeued: list[str] = []
    for execution_id, task_ids in stranded:
        if not events.claim_requeue(execution_id):
            continue
        try:
            enqueue(execution_id, list(task_ids or []))
        except Exception:
            events.unmark_queued(execution_id)  # the next sweep tries again (or the claim expires)
            raise
        events.mark_queued(execution_id)
        log.warning("re-queued execution %s: no broker had confirmed its chain", execution_id,
                    extra={"execution_id": execution_id})
        requeued.append(execution_id)
    return requeued


def end_abandoned(*, grace_s: float, limit: int = 100) -> list[str]:
    """End `failed` the running executions that no task will end any more: past their deadline by more than
    grace_s (longer than a step's retries) with no LLM run holding the lease. That happens when a worker lost
    them, or when their last step could not even record its failure because the database was still down."""
    now = utcnow()
    candidates = db.session.execute(
        select(Execution)
        .where(Execution.status == ExecutionStatus.RUNNING.value,
               Execution.created_at < now - timedelta(seconds=grace_s))
        .order_by(Execution.created_at)
        .limit(limit)
    ).scalars().all()
    db.session.rollback()
    events = event_log()
    ended: list[str] = []
    for execution in candidates:
        started = as_utc(execution.started_at or execution.created_at)
        if started + timedelta(seconds=execution.timeout_s + grace_s) > now:
            continue
        if events.current_run(execution.id) is not None:
            continue
        if finalize(execution, status=ExecutionStatus.FAILED, actor="sweeper",
                    from_statuses=[ExecutionStatus.RUNNING.value],
                    values={"error_code": "internal_error",
                            "error_message": "abandoned: no worker finished it before its deadline"},
                    audit_rows=[("execution.failed", "error", {"reason": "abandoned"})]):
            emit_terminal(execution)
            log.warning("ended abandoned execution %s", execution.id, extra={"execution_id": execution.id})
            ended.append(execution.id)
    return ended


def _dependency(exc: Exception) -> str:
    return "redis" if type(exc).__module__.startswith("redis") else "broker"


def _fail_unstarted(execution: Execution, exc: Exception) -> None:
    """Mark it failed and free its Idempotency-Key, so the client's retry (same key) starts a fresh one."""
    try:
        db.session.rollback()
        changed = finalize(
            execution,
            status=ExecutionStatus.FAILED,
            actor="api",
            from_statuses=[ExecutionStatus.PENDING.value],
            values={"error_code": "unavailable",
                    "error_message": f"could not be queued ({_dependency(exc)} unavailable)",
                    "idempotency_key": None},
            audit_rows=[("execution.failed", "error", {"reason": "enqueue_failed", "dependency": _dependency(exc)})],
        )
        if changed:
            _emit_quietly(execution, terminal_event(execution))
    except Exception:  # noqa: BLE001 - the database may be down too; the row then stays pending
        log.exception("could not mark execution %s failed after an enqueue failure", execution.id)
        db.session.rollback()


def transition(
    execution: Execution,
    *,
    status: ExecutionStatus,
    actor: str,
    from_statuses: list[str] | None = None,
    values: dict[str, Any] | None = None,
    audit_rows: Sequence[tuple[str, str, dict[str, Any]]] = (),
) -> bool:
    """Change status exactly once (conditional UPDATE) with its audit rows in the same transaction."""
    fields: dict[str, Any] = {"status": status.value, **(values or {})}
    result = db.session.execute(
        update(Execution)
        .where(Execution.id == execution.id, Execution.status.in_(from_statuses or NOT_TERMINAL))
        .values(**fields)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        db.session.rollback()
        db.session.refresh(execution)
        return False
    audit.record_many([
        {"workspace_id": execution.workspace_id, "actor": actor, "agent_id": execution.agent_id,
         "execution_id": execution.id, "action": action, "result": outcome, "details": details}
        for action, outcome, details in audit_rows
    ])
    db.session.commit()
    if db.session().expire_on_commit:
        db.session.refresh(execution)
    else:  # worker steps keep their objects across commits: no SELECT to read back what was just written
        for name, value in fields.items():
            set_committed_value(execution, name, value)
    return True


def finalize(
    execution: Execution,
    *,
    status: ExecutionStatus,
    actor: str,
    from_statuses: list[str] | None = None,
    values: dict[str, Any] | None = None,
    audit_rows: Sequence[tuple[str, str, dict[str, Any]]] = (),
) -> bool:
    """Move to a final status exactly once, stamping finished_at; False if something else ended it first."""
    return transition(
        execution,
        status=status,
        actor=actor,
        from_statuses=from_statuses,
        values={"finished_at": utcnow(), **(values or {})},
        audit_rows=audit_rows,
    )


def cancel(principal: Principal, execution_id: str) -> Execution:
    """Raise the cancel flag (the LLM step stops within one chunk); a not-yet-running one ends here and now."""
    execution = get(principal, execution_id)
    if is_terminal(execution.status):
        raise Conflict(f"execution is already {execution.status}",
                       {"execution_id": execution.id, "status": execution.status})
    event_log().request_cancel(execution.id)
    ended = finalize(
        execution,
        status=ExecutionStatus.CANCELLED,
        actor=principal.actor,
        from_statuses=[ExecutionStatus.PENDING.value, ExecutionStatus.AWAITING_APPROVAL.value],
        values={"cancel_requested_at": utcnow(), "error_code": "cancelled",
                "error_message": f"cancelled by {principal.actor}"},
        audit_rows=[("execution.cancelled", "ok", {"while": "queued"})],
    )
    if ended:
        emit_terminal(execution)
        _revoke(execution.task_ids or [])
        return execution
    if not is_terminal(execution.status):
        db.session.execute(
            update(Execution)
            .where(Execution.id == execution.id, Execution.cancel_requested_at.is_(None))
            .values(cancel_requested_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        db.session.refresh(execution)
    return execution


def _revoke(task_ids: list[str]) -> None:
    """Queued steps are dropped by workers; every step also re-checks the status, so this is an optimisation."""
    if not task_ids:
        return
    try:
        current_app.extensions["celery"].control.revoke(task_ids)
    except Exception:  # noqa: BLE001 - best effort
        log.warning("could not broadcast revoke for %s", task_ids)


def approve(principal: Principal, execution_id: str, *, enqueue: Enqueue) -> Execution:
    """awaiting_approval -> pending, then the chain is enqueued (after commit); a second approve is 409."""
    execution = get(principal, execution_id)
    task_ids = [str(uuid.uuid4()) for _ in STEP_NAMES]
    result = db.session.execute(
        update(Execution)
        .where(Execution.id == execution.id, Execution.status == ExecutionStatus.AWAITING_APPROVAL.value)
        .values(
            status=ExecutionStatus.PENDING.value,
            task_ids=task_ids,
            governance={**(execution.governance or {}), "approved_by": principal.actor, "approved_at": iso(utcnow())},
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        db.session.rollback()
        db.session.refresh(execution)
        raise Conflict(f"execution is {execution.status}, not awaiting_approval",
                       {"execution_id": execution.id, "status": execution.status})
    audit.record(workspace_id=execution.workspace_id, actor=principal.actor, agent_id=execution.agent_id,
                 execution_id=execution.id, action="execution.approved")
    db.session.commit()
    db.session.refresh(execution)
    _start(execution, enqueue)
    return execution


def reject(principal: Principal, execution_id: str) -> Execution:
    """awaiting_approval -> denied (terminal)."""
    execution = get(principal, execution_id)
    ended = finalize(
        execution,
        status=ExecutionStatus.DENIED,
        actor=principal.actor,
        from_statuses=[ExecutionStatus.AWAITING_APPROVAL.value],
        values={"error_code": "rejected", "error_message": f"rejected by {principal.actor}"},
        audit_rows=[("execution.rejected", "denied", {})],
    )
    if not ended:
        raise Conflict(f"execution is {execution.status}, not awaiting_approval",
                       {"execution_id": execution.id, "status": execution.status})
    emit_terminal(execution)
    return execution


def list_for_agent(
    principal: Principal, agent_id: str, *, status: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, keyset-paginated by (created_at, id)."""
    agents.get(principal, agent_id)
    if status is not None and status not in {s.value for s in ExecutionStatus}:
        raise ValidationFailed("unknown status", {"status": status,
                                                  "allowed": [s.value for s in ExecutionStatus]})
    query = select(Execution).where(Execution.workspace_id == principal.workspace_id,
                                    Execution.agent_id == agent_id)
    if status:
        query = query.where(Execution.status == status)
    rows, next_cursor = newest_first(query, Execution, limit=limit, cursor=cursor)
    return [serialize(row) for row in rows], next_cursor
