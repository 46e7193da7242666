"""The chain's three steps as plain functions: governance re-check, LLM streaming, persistence.

Every step is idempotent, because a redelivered task (worker killed, acks late) runs it again:
- governance acts only on a `pending` execution;
- the LLM step holds a short Redis lease, so one run streams at a time; a run that finds the execution
  already `running` restarts it and announces `reset` {attempt};
- persistence is a conditional UPDATE on `running` with its audit rows in the same transaction, and the
  terminal event is refused by the stream once one exists.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from flask import current_app
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, update

from app.extensions import db
from app.llm import (
    Delta,
    FatalProviderError,
    Provider,
    ProviderError,
    Stopped,
    Timeouts,
    TransientProviderError,
    Usage,
    get_provider,
)
from app.llm.stopping import wait_or_stop
from app.metrics import LLM_FIRST_DELTA, LLM_SECONDS, LLM_TOKENS
from app.models import Agent, Execution, ExecutionStatus
from app.services import audit, credentials, governance
from app.services.backoff import retry_delay
from app.services.executions import emit_terminal, event_log, finalize, is_terminal, terminal_event, transition
from app.services.streams import EventLog
from app.timeutil import as_utc, iso, utcnow

log = logging.getLogger(__name__)

ACTOR = "worker"
LEASE_MS = 5000
REFRESH_EVERY_S = 1.0
CLAIM_POLL_S = 0.1
CANCEL_POLL_S = 0.01  # between emits (waits, hangs); every emit reports the flag anyway
# The database or Redis unreachable (or a deadlock): the step did not happen, and running it again is safe.
INFRASTRUCTURE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError, sa_exc.InterfaceError, redis.ConnectionError, redis.TimeoutError,
)
EXECUTIONS = Execution.__table__  # the hot path uses Core statements: no ORM flush or identity map per step
OUTCOME_AUDIT: dict[str, list[tuple[str, str]]] = {
    "completed": [("llm.completed", "ok"), ("execution.completed", "ok")],
    "failed": [("llm.failed", "error"), ("execution.failed", "error")],
    "cancelled": [("execution.cancelled", "ok")],
    "timed_out": [("execution.timed_out", "error")],
}


def is_infrastructure_error(exc: BaseException) -> bool:
    """Also a database error that cost the connection (the server ended the session, say)."""
    return isinstance(exc, INFRASTRUCTURE_ERRORS) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    )


@dataclass(frozen=True)
class LlmSettings:
    """Retry and network limits for the LLM step, from the app config."""

    max_attempts: int
    retry_base_s: float
    retry_cap_s: float
    timeouts: Timeouts

    @classmethod
    def from_config(cls) -> LlmSettings:
        config = current_app.config
        return cls(
            max_attempts=int(config["LLM_MAX_ATTEMPTS"]),
            retry_base_s=float(config["LLM_RETRY_BASE_S"]),
            retry_cap_s=float(config["LLM_RETRY_CAP_S"]),
            timeouts=Timeouts(connect=float(config["LLM_CONNECT_TIMEOUT_S"]),
                              read=float(config["LLM_READ_TIMEOUT_S"])),
        )


def skipped(execution_id: str, reason: str) -> dict[str, Any]:
    """What a step returns when there is nothing (more) to do; later steps pass it on."""
    return {"execution_id": execution_id, "skip": reason}


def _step(name: str, status: str, started: str | None) -> dict[str, Any]:
    return {"name": name, "status": status, "started_at": started, "finished_at": iso(utcnow())}


def _load(execution_id: str) -> Execution | None:
    """Each task runs in its own app context, hence a fresh session: one SELECT, and objects stay usable after
    commits (no expire-on-commit reloads in the hot path)."""
    db.session().expire_on_commit = False
    execution: Execution | None = db.session.get(Execution, execution_id)
    return execution


# --- governance -------------------------------------------------------------------------------------------


def governance_step(execution_id: str) -> dict[str, Any]:
    """Re-check governance in the worker: maturity or status may have changed while the execution was queued."""
    started = iso(utcnow())
    # The execution and its agent in one round trip, as plain columns (no ORM objects on the allowed path).
    found = db.session.execute(
        select(Execution.status, Execution.action, Execution.governance, Agent.id.label("agent_id"),
               Agent.status.label("agent_status"), Agent.deleted_at, Agent.maturity_level, Agent.llm,
               Agent.system_prompt)
        .select_from(Execution).outerjoin(Agent, Agent.id == Execution.agent_id).where(Execution.id == execution_id)
    ).one_or_none()
    db.session.rollback()  # read only: hold no transaction (or connection) from here on
    if found is None or found.status != ExecutionStatus.PENDING:
        return skipped(execution_id, f"status {found.status if found else 'missing'}")
    agent_status = "deleted" if found.agent_id is None or found.deleted_at is not None else found.agent_status
    decision = governance.decide(
        maturity_level=found.maturity_level or "STUDENT", action=found.action, agent_status=agent_status
    )
    approved = bool((found.governance or {}).get("approved_by"))
    if decision.outcome == "denied":
        execution = _load(execution_id)
        ended = execution is not None and finalize(
            execution,
            status=ExecutionStatus.DENIED,
            actor=ACTOR,
            from_statuses=[ExecutionStatus.PENDING.value],
            values={"error_code": "governance_denied", "error_message": decision.reason,
                    "steps": [_step("governance", "denied", started)]},
            audit_rows=[("governance.denied", "denied", {**decision.as_dict(), "checked_by": ACTOR})],
        )
        if ended and execution is not None:
            emit_terminal(execution)
        return skipped(execution_id, "denied")
    if decision.outcome == "approval_required" and not approved:
        execution = _load(execution_id)
        moved = execution is not None and transition(
            execution,
            status=ExecutionStatus.AWAITING_APPROVAL,
            actor=ACTOR,
            from_statuses=[ExecutionStatus.PENDING.value],
            audit_rows=[("governance.approval_required", "ok", {**decision.as_dict(), "checked_by": ACTOR})],
        )
        if moved:
            event_log().emit(execution_id, "status",
                             {"execution_id": execution_id, "status": ExecutionStatus.AWAITING_APPROVAL.value})
        return skipped(execution_id, "awaiting_approval")
    return {
        "execution_id": execution_id,
        "steps": [_step("governance", "completed", started)],
        "agent": {"llm": found.llm or {}, "system_prompt": found.system_prompt},
    }


# --- LLM ----------------------------------------------------------------------------------------------------


class _Lost(Exception):  # noqa: N818 - control flow
    """Another run owns the execution now, or it already ended: stop without writing anything."""


@dataclass(frozen=True)
class Running:
    """What the LLM step needs of its execution, as returned by the UPDATE that marked it running."""

    id: str
    workspace_id: str
    agent_id: str
    message: str
    timeout_s: int
    started_at: datetime
    attempts: int


@dataclass
class _Run:
    """One LLM run's state: its lease token, deadline and why it was told to stop."""

    execution_id: str
    token: str
    events: EventLog
    deadline: float
    stop_reason: str | None = None
    last_refresh: float = 0.0
    last_cancel_check: float = 0.0
    cancel_seen: bool = False

    def should_stop(self) -> bool:
        """Polled between chunks and while waiting: timeout, lost lease, or the cancel flag."""
        now = time.monotonic()
        if now >= self.deadline:
            self.stop_reason = "timed_out"
            return True
        if now - self.last_refresh >= REFRESH_EVERY_S:
            self.last_refresh = now
            if not self.events.refresh_run(self.execution_id, self.token, LEASE_MS):
                self.stop_reason = "lost"
                return True
        if self.cancel_seen or (
            now - self.last_cancel_check >= CANCEL_POLL_S and self._check_cancel(now)
        ):
            self.stop_reason = "cancelled"
            return True
        return False

    def _check_cancel(self, now: float) -> bool:
        self.last_cancel_check = now
        self.cancel_seen = self.events.cancel_requested(self.execution_id)
        return self.cancel_seen

    def emit(self, event: str, data: dict[str, Any]) -> int:
        """Append an event; the same round trip reports the cancel flag, so every chunk checks it for free."""
        event_id, cancelled = self.events.emit_checking_cancel(self.execution_id, event, data, run=self.token)
        if event_id < 0:
            raise _Lost()
        self.last_cancel_check = time.monotonic()
        self.cancel_seen = self.cancel_seen or cancelled
        return event_id


def _claim(events: EventLog, execution_id: str, token: str) -> bool:
    """Take the lease; while a live run holds it, wait (a duplicate delivery), unless the execution ends."""
    give_up: float | None = None
    while not events.claim_run(execution_id, token, LEASE_MS):
        found = db.session.execute(
            select(Execution.status, Execution.timeout_s).where(Execution.id == execution_id)
        ).one_or_none()
        db.session.rollback()
        if found is None or is_terminal(found.status):
            return False
        give_up = give_up or time.monotonic() + found.timeout_s + 60
        if time.monotonic() > give_up:
            return False
        time.sleep(CLAIM_POLL_S)
    return True


def _mark_running(execution_id: str, steps: list[dict[str, Any]]) -> Running | None:
    """pending|running -> running, attempts + 1, in one UPDATE that returns what the step needs; audit
    llm.started once, llm.retried on a restart. None if the execution is not pending or running."""
    row = db.session.execute(
        update(EXECUTIONS)
        .where(EXECUTIONS.c.id == execution_id,
               EXECUTIONS.c.status.in_([ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value]))
        .values(status=ExecutionStatus.RUNNING.value, attempts=EXECUTIONS.c.attempts + 1,
                started_at=func.coalesce(EXECUTIONS.c.started_at, utcnow()), steps=steps)
        .returning(EXECUTIONS.c.workspace_id, EXECUTIONS.c.agent_id, EXECUTIONS.c.message, EXECUTIONS.c.timeout_s,
                   EXECUTIONS.c.started_at, EXECUTIONS.c.attempts)
    ).one_or_none()
    if row is None:
        db.session.rollback()
        return None
    running = Running(execution_id, row.workspace_id, row.agent_id, row.message, int(row.timeout_s),
                      row.started_at, int(row.attempts))
    details: dict[str, Any] = {"attempt": 1} if running.attempts == 1 else {
        "attempt": running.attempts, "reason": "restarted after a lost worker"}
    audit.record_many([{"workspace_id": running.workspace_id, "actor": ACTOR, "agent_id": running.agent_id,
                        "execution_id": execution_id,
                        "action": "llm.started" if running.attempts == 1 else "llm.retried", "details": details}])
    db.session.commit()
    return running


def _next_attempt(execution: Running, error: ProviderError, delay_s: float) -> int:
    """Count the retry in the row and audit it, before its `reset` event goes out."""
    attempt = int(db.session.execute(
        update(EXECUTIONS).where(EXECUTIONS.c.id == execution.id)
        .values(attempts=EXECUTIONS.c.attempts + 1).returning(EXECUTIONS.c.attempts)
    ).scalar_one())
    audit.record_many([{"workspace_id": execution.workspace_id, "actor": ACTOR, "agent_id": execution.agent_id,
                        "execution_id": execution.id, "action": "llm.retried",
                        "details": {"attempt": attempt, "code": error.code, "message": error.message,
                                    "delay_s": round(delay_s, 3)}}])
    db.session.commit()
    return attempt


def _provider(
    execution: Running, agent: dict[str, Any], settings: LlmSettings
) -> tuple[Provider, dict[str, Any], str | None, str | None]:
    """The agent's provider (with its decrypted credential), options, model and system prompt."""
    llm = agent.get("llm") or {}
    name = str(llm.get("provider") or "scripted")
    api_key = base_url = None
    if llm.get("credential_id"):
        config = current_app.config
        vault = credentials.Vault(credentials_key=config["CREDENTIALS_KEY"], secret_key=config["SECRET_KEY"])
        secret = credentials.reveal(vault, execution.workspace_id, str(llm["credential_id"]))
        api_key, base_url = secret.api_key, secret.base_url
    provider = get_provider(name, api_key=api_key, base_url=base_url, timeouts=settings.timeouts)
    return provider, dict(llm.get("options") or {}), llm.get("model"), agent.get("system_prompt")


def llm_step(previous: dict[str, Any]) -> dict[str, Any]:
    """Stream the reply into the execution's event log, retrying transient errors; hand the outcome on."""
    execution_id = str(previous["execution_id"])
    if previous.get("skip"):
        return previous
    events = event_log()
    token = uuid.uuid4().hex
    if not _claim(events, execution_id, token):
        return skipped(execution_id, "another run owns it or it ended")
    steps = list(previous.get("steps") or [])
    execution = _mark_running(execution_id, steps)
    if execution is None:
        events.end_run(execution_id)  # ours: the lease was just claimed
        return skipped(execution_id, "ended")
    started_at = as_utc(execution.started_at)
    remaining = (started_at + timedelta(seconds=execution.timeout_s) - utcnow()).total_seconds()
    run = _Run(execution_id, token, events, deadline=time.monotonic() + remaining, last_refresh=time.monotonic())
    step_started = iso(utcnow())
    try:
        if execution.attempts == 1:
            run.emit("status", {"execution_id": execution_id, "status": ExecutionStatus.RUNNING.value})
        else:
            run.emit("reset", {"attempt": execution.attempts})
        outcome = _stream_with_retries(execution, _agent_config(execution, previous), run, execution.attempts,
                                       LlmSettings.from_config())
    except _Lost:
        db.session.rollback()
        return skipped(execution_id, "another run owns it or it ended")
    except Exception as exc:  # noqa: BLE001 - a bug must still end the execution, not leave it running
        if is_infrastructure_error(exc):
            raise  # Redis or the database went away mid-run: the task runs the step again (a new attempt)
        log.exception("LLM step of execution %s crashed", execution_id)
        db.session.rollback()
        outcome = {"outcome": "failed", "output": "", "usage": None,
                   "error": {"code": "internal_error", "message": f"LLM step crashed ({type(exc).__name__})"}}
    db.session.rollback()
    return {
        "execution_id": execution_id,
        "run": token,
        **outcome,
        "steps": steps,
        "llm_step": _step("llm", outcome["outcome"], step_started),
    }


def _agent_config(execution: Running, previous: dict[str, Any]) -> dict[str, Any]:
    """The agent as the governance step just read it (saves a query), or from the database."""
    if isinstance(previous.get("agent"), dict):
        return dict(previous["agent"])
    agent = db.session.get(Agent, execution.agent_id)
    return {"llm": (agent.llm if agent else None) or {}, "system_prompt": agent.system_prompt if agent else None}


def _stream_with_retries(
    execution: Running, agent: dict[str, Any], run: _Run, attempt: int, settings: LlmSettings
) -> dict[str, Any]:
    """Attempts until success, a fatal error, the attempt limit, cancel or timeout."""
    provider, options, model, system_prompt = _provider(execution, agent, settings)
    message = execution.message
    db.session.commit()  # hold no transaction (or connection) while streaming
    while True:
        parts: list[str] = []
        try:
            usage = _stream_once(provider, run, parts, options=options, model=model,
                                 system_prompt=system_prompt, message=message, attempt=attempt)
            return {"outcome": "completed", "output": "".join(parts), "usage": usage, "error": None}
        except Stopped:
            return _stopped(run, parts)
        except TransientProviderError as exc:
            if attempt >= settings.max_attempts:
                return _failed(exc, parts, f" (after {attempt} attempts)")
            delay = retry_delay(attempt, base_s=settings.retry_base_s, cap_s=settings.retry_cap_s,
                                retry_after_s=exc.retry_after)
            log.info("execution %s: transient %s, retrying in %.2fs", execution.id, exc.code, delay)
            try:
                wait_or_stop(delay, run.should_stop)
            except Stopped:
                return _stopped(run, parts)
            attempt = _next_attempt(execution, exc, delay)
            run.emit("reset", {"attempt": attempt})
        except FatalProviderError as exc:
            return _failed(exc, parts, "")


def _stream_once(provider: Provider, run: _Run, parts: list[str], *, options: dict[str, Any], model: str | None,
                 system_prompt: str | None, message: str, attempt: int) -> dict[str, int]:
    """One provider attempt: each delta goes to the event log as it arrives."""
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    started = time.perf_counter()
    outcome = "error"
    try:
        for item in provider.stream(system_prompt=system_prompt, message=message, model=model, options=options,
                                    should_stop=run.should_stop, attempt=attempt):
            if isinstance(item, Delta):
                if not parts:
                    LLM_FIRST_DELTA.labels(provider.name).observe(time.perf_counter() - started)
                run.emit("delta", {"text": item.text})
                parts.append(item.text)
            elif isinstance(item, Usage):
                usage = {"prompt_tokens": item.prompt_tokens, "completion_tokens": item.completion_tokens}
        outcome = "completed"
    except Stopped:
        outcome = "stopped"
        raise
    finally:
        LLM_SECONDS.labels(provider.name, outcome).observe(time.perf_counter() - started)
    for kind, count in usage.items():
        LLM_TOKENS.labels(provider.name, kind.removesuffix("_tokens")).inc(count)
    return usage


def _stopped(run: _Run, parts: list[str]) -> dict[str, Any]:
    if run.stop_reason == "lost":
        raise _Lost()
    if run.stop_reason == "cancelled":
        return {"outcome": "cancelled", "output": "".join(parts), "usage": None,
                "error": {"code": "cancelled", "message": "cancelled on request"}}
    return {"outcome": "timed_out", "output": "".join(parts), "usage": None,
            "error": {"code": "timeout", "message": "the execution exceeded its timeout_s"}}


def _failed(exc: ProviderError, parts: list[str], suffix: str) -> dict[str, Any]:
    return {"outcome": "failed", "output": "".join(parts), "usage": None,
            "error": {"code": exc.code, "message": exc.message + suffix}}


# --- persistence --------------------------------------------------------------------------------------------


def persist_step(result: dict[str, Any]) -> dict[str, Any]:
    """Write output, usage, attempts, steps and the final status once; then emit the one terminal event.

    Returns {execution_id, status, reply}: reply says the execution answers a message (workflows send it back).
    """
    execution_id = str(result["execution_id"])
    if result.get("skip"):
        return result
    started = iso(utcnow())
    events = event_log()
    holder = events.current_run(execution_id)
    if holder is not None and holder != result.get("run"):
        return skipped(execution_id, "a newer LLM run owns it")
    outcome = ExecutionStatus(str(result["outcome"]))
    usage = result.get("usage") or {}
    error = result.get("error")
    values: dict[str, Any] = {
        "status": outcome.value,
        "finished_at": utcnow(),
        "output": result.get("output") or "",
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "completion_tokens": int(usage.get("completion_tokens", 0)),
        "error_code": error["code"] if error else None,
        "error_message": error["message"] if error else None,
        "steps": [*(result.get("steps") or []), result["llm_step"], _step("persist", "completed", started)],
    }
    # One conditional UPDATE (only a running execution ends here) returning what the audit rows and the
    # terminal event need; its audit rows commit with it.
    row = db.session.execute(
        update(EXECUTIONS)
        .where(EXECUTIONS.c.id == execution_id, EXECUTIONS.c.status == ExecutionStatus.RUNNING.value)
        .values(**values)
        .returning(EXECUTIONS.c.workspace_id, EXECUTIONS.c.agent_id, EXECUTIONS.c.attempts,
                   EXECUTIONS.c["metadata"].label("meta"))
    ).one_or_none()
    if row is None:
        db.session.rollback()
        return _already_final(execution_id)
    details = {"usage": usage} if outcome == ExecutionStatus.COMPLETED else {"error": error}
    audit.record_many([
        {"workspace_id": row.workspace_id, "actor": ACTOR, "agent_id": row.agent_id, "execution_id": execution_id,
         "action": action, "result": res, "details": details}
        for action, res in OUTCOME_AUDIT[outcome.value]
    ])
    db.session.commit()
    final = Execution(id=execution_id, attempts=row.attempts, **values)  # not added to the session: a value
    event, data = terminal_event(final)
    events.emit(execution_id, event, data)  # the terminal event also drops the LLM run's lease
    return {"execution_id": execution_id, "status": outcome.value, "reply": _answers_a_message(row.meta)}


def _already_final(execution_id: str) -> dict[str, Any]:
    """A redelivery after the commit: make sure the terminal event went out (the stream keeps only one)."""
    execution = _load(execution_id)
    if execution is None:
        db.session.rollback()
        return skipped(execution_id, "missing")
    status, meta = execution.status, execution.meta
    if is_terminal(status):
        emit_terminal(execution)
    db.session.rollback()
    if not is_terminal(status):
        return skipped(execution_id, f"status {status}")
    return {"execution_id": execution_id, "status": status, "reply": _answers_a_message(meta)}


def _answers_a_message(meta: dict[str, Any] | None) -> bool:
    return bool((meta or {}).get("reply_to"))


# --- giving up ----------------------------------------------------------------------------------------------


def abandon(execution_id: str, step: str, error: BaseException) -> bool:
    """A step failed for good (a bug, or an outage that outlasted its retries): end the execution `failed`
    instead of leaving it pending or running for ever. False if it had already ended (or cannot be reached)."""
    execution = _load(execution_id)
    if execution is None or is_terminal(execution.status):
        db.session.rollback()
        return False
    ended = finalize(
        execution,
        status=ExecutionStatus.FAILED,
        actor=ACTOR,
        values={"error_code": "internal_error",
                "error_message": f"the {step} step failed ({type(error).__name__})"},
        audit_rows=[("execution.failed", "error", {"reason": "step_failed", "step": step,
                                                   "error": type(error).__name__})],
    )
    if ended:
        emit_terminal(execution)  # if Redis is down, SSE readers emit it from the row once it is back
    return ended
