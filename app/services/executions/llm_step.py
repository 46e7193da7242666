"""The chain's LLM step: stream the provider's reply into the execution's event log, retrying transient errors.

Idempotent: the run's lease (llm_run) lets one run stream at a time; a run that finds the execution already
`running` restarts it and announces `reset` {attempt}. It writes no final state: the persist step does.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import Row, update

from app.extensions import db
from app.llm import (
    Delta,
    FatalProviderError,
    Provider,
    ProviderError,
    Stopped,
    ToolCall,
    TransientProviderError,
    Usage,
)
from app.llm.stopping import wait_or_stop
from app.metrics import LLM_FIRST_DELTA, LLM_SECONDS, LLM_TOKENS
from app.models import Agent, ExecutionStatus
from app.services import admission, audit
from app.services.admission.llm_calls import retry_settings, wait_for, with_max_tokens
from app.services.admission.retry import decide_retry
from app.services.cancel_watch import cancel_watch
from app.services.executions import llm_config, state
from app.services.executions.events import event_log
from app.services.executions.lease_keeper import lease_keeper
from app.services.executions.llm_run import LEASE_MS, LlmSettings, Lost, Run, claim
from app.services.executions.step_support import ACTOR, is_infrastructure_error, skipped, step_record
from app.services.tools import turns
from app.timeutil import as_utc, iso, utcnow

log = logging.getLogger(__name__)

EXECUTIONS = state.EXECUTIONS


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
    max_tokens: int | None = None
    turn: int = 0
    conversation: list[dict[str, Any]] | None = None  # a tool loop's turns so far


def _started_audit(row: Row[Any]) -> list[state.Audit]:
    """llm.started once; llm.retried when a run starts over after a lost worker."""
    if int(row.attempts) == 1:
        return [state.Audit("llm.started", "ok", {"attempt": 1})]
    return [state.Audit("llm.retried", "ok", {"attempt": int(row.attempts), "reason": "restarted after a lost worker"})]


def _mark_running(execution_id: str, steps: list[dict[str, Any]]) -> Running | None:
    """pending|running -> running, attempts + 1; None if the execution is not pending or running any more."""
    row = state.move(
        execution_id, ExecutionStatus.RUNNING, actor=ACTOR,
        from_statuses=[ExecutionStatus.PENDING, ExecutionStatus.RUNNING],
        values={"attempts": state.Add(1), "started_at": state.KeepOr(utcnow()), "steps": steps},
        audit_rows=_started_audit,
        announce=False,  # the run announces it on the stream under its lease
        returning=("message", "timeout_s", "started_at", "attempts", "max_tokens", "turns", "conversation"),
    )
    if row is None:
        return None
    return Running(execution_id, row.workspace_id, row.agent_id, row.message, int(row.timeout_s),
                   row.started_at, int(row.attempts), row.max_tokens, int(row.turns or 0), row.conversation)


def _next_attempt(execution: Running, error: ProviderError, delay_s: float) -> int:
    """Count the retry in the row and audit it, before its `reset` event goes out."""
    attempt = int(db.session.execute(
        update(EXECUTIONS).where(EXECUTIONS.c.id == execution.id)
        .values(attempts=EXECUTIONS.c.attempts + 1).returning(EXECUTIONS.c.attempts)
    ).scalar_one())
    audit.record(workspace_id=execution.workspace_id, actor=ACTOR, agent_id=execution.agent_id,
                 execution_id=execution.id, action="llm.retried",
                 details={"attempt": attempt, "code": error.code, "message": error.message,
                          "delay_s": round(delay_s, 3)})
    db.session.commit()
    return attempt


def run(previous: dict[str, Any]) -> dict[str, Any]:
    """Stream the reply into the execution's event log; hand the outcome on to the persist step."""
    execution_id = str(previous["execution_id"])
    if previous.get("skip"):
        return previous
    events = event_log()
    token = uuid.uuid4().hex
    if not claim(events, execution_id, token):
        return skipped(execution_id, "another run owns it or it ended")
    seen = events.last_event_id(execution_id)  # what a lapsed lease may be taken back against (llm_run.Run)
    steps = list(previous.get("steps") or [])
    execution = _mark_running(execution_id, steps)
    if execution is None:
        events.end_run(execution_id)  # ours: the lease was just claimed
        return skipped(execution_id, "ended")
    started_at = as_utc(execution.started_at)
    remaining = (started_at + timedelta(seconds=execution.timeout_s) - utcnow()).total_seconds()
    llm_run = Run(execution_id, token, events, deadline=time.monotonic() + remaining, last_refresh=time.monotonic(),
                  last_seq=seen, watch=cancel_watch(current_app.config["REDIS_URL"]),
                  keeper=lease_keeper(events, LEASE_MS))
    step_started = iso(utcnow())
    try:
        if execution.attempts == 1:
            llm_run.emit("status", {"execution_id": execution_id, "status": ExecutionStatus.RUNNING.value})
        else:
            llm_run.emit("reset", {"attempt": execution.attempts})
        outcome = _stream_with_retries(execution, _agent_config(execution, previous), llm_run, execution.attempts,
                                       LlmSettings.from_config())
    except Lost:
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
        "turn": execution.turn,  # which turn this run answered: a redelivered hand-off knows it was made
        **outcome,
        "steps": steps,
        "llm_step": step_record("llm", outcome["outcome"], step_started),
    }


def _agent_config(execution: Running, previous: dict[str, Any]) -> dict[str, Any]:
    """The agent as the governance step just read it (saves a query), or from the database (a chain sent before
    the governance step passed the agent's tools on)."""
    if isinstance(previous.get("agent"), dict) and "tools" in previous["agent"]:
        return dict(previous["agent"])
    agent = db.session.get(Agent, execution.agent_id)
    return {"llm": (agent.llm if agent else None) or {}, "system_prompt": agent.system_prompt if agent else None,
            "tools": agent.tools if agent else None}


def _stream_with_retries(
    execution: Running, agent: dict[str, Any], llm_run: Run, attempt: int, settings: LlmSettings
) -> dict[str, Any]:
    """Attempts until success, a fatal error, the attempt limit, cancel or timeout."""
    resolved = llm_config.resolve(execution.workspace_id, agent, settings.timeouts)
    resolved = replace(resolved, options=with_max_tokens(resolved.provider.name, resolved.options,
                                                         execution.max_tokens))
    # a tool loop's conversation so far and the agent's tools
    extras = turns.stream_extras(execution.id, conversation=execution.conversation, tools=agent.get("tools"))
    db.session.commit()  # hold no transaction (or connection) while streaming
    credential_id = (agent.get("llm") or {}).get("credential_id")
    estimate = admission.estimate_tokens(system_prompt=resolved.system_prompt, message=execution.message,
                                         max_tokens=execution.max_tokens, options=resolved.options)
    rate_limited_waits = 0
    while True:
        parts: list[str] = []
        calls: list[ToolCall] = []
        try:
            reservation = admission.acquire_for_llm(execution.id, est_tokens=estimate,
                                                    remaining_s=llm_run.deadline - time.monotonic(),
                                                    should_stop=llm_run.should_stop)
            usage = _stream_once(resolved, llm_run, parts, message=execution.message, attempt=attempt,
                                 extras=extras, calls=calls)
            admission.release(reservation, workspace_id=execution.workspace_id, **usage)
            return {"outcome": "completed", "output": "".join(parts), "usage": usage, "error": None,
                    **({"tool_calls": turns.calls_of(calls)} if calls else {}),
                    **({"tool_loop": True} if extras else {})}
        except Stopped:
            return _stopped(llm_run, parts)
        except TransientProviderError as exc:
            plan = decide_retry(exc, attempt=attempt, rate_limited_waits=rate_limited_waits,
                                remaining_s=llm_run.deadline - time.monotonic(), settings=retry_settings())
            if not plan.retry:
                return _failed(exc, parts, f" ({plan.reason})")
            delay = wait_for(plan, credential_id)
            log.info("execution %s: transient %s, retrying in %.2fs", execution.id, exc.code, delay)
            try:
                wait_or_stop(delay, llm_run.should_stop)
            except Stopped:
                return _stopped(llm_run, parts)
            if plan.counts_attempt:
                attempt = _next_attempt(execution, exc, delay)
                llm_run.emit("reset", {"attempt": attempt})
            else:  # a 429: the provider asked to wait, which uses up no attempt
                rate_limited_waits += 1
                if parts:
                    llm_run.emit("reset", {"attempt": attempt})
        except FatalProviderError as exc:
            return _failed(exc, parts, "")


def _stream_once(resolved: llm_config.Resolved, llm_run: Run, parts: list[str], *, message: str,
                 attempt: int, extras: dict[str, Any], calls: list[ToolCall]) -> dict[str, int]:
    """One provider attempt: each delta goes to the event log as it arrives."""
    provider: Provider = resolved.provider
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    started = time.perf_counter()
    outcome = "error"
    try:
        for item in provider.stream(system_prompt=resolved.system_prompt, message=message, model=resolved.model,
                                    options=resolved.options, should_stop=llm_run.should_stop, attempt=attempt,
                                    **extras):
            if isinstance(item, Delta):
                if not parts:
                    LLM_FIRST_DELTA.labels(provider.name).observe(time.perf_counter() - started)
                llm_run.emit("delta", {"text": item.text})
                parts.append(item.text)
            elif isinstance(item, ToolCall):
                calls.append(item)
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


def _stopped(llm_run: Run, parts: list[str]) -> dict[str, Any]:
    if llm_run.stop_reason == "lost":
        raise Lost()
    if llm_run.stop_reason == "cancelled":
        return {"outcome": "cancelled", "output": "".join(parts), "usage": None,
                "error": {"code": "cancelled", "message": "cancelled on request"}}
    return {"outcome": "timed_out", "output": "".join(parts), "usage": None,
            "error": {"code": "timeout", "message": "the execution exceeded its timeout_s"}}


def _failed(exc: ProviderError, parts: list[str], suffix: str) -> dict[str, Any]:
    return {"outcome": "failed", "output": "".join(parts), "usage": None,
            "error": {"code": exc.code, "message": exc.message + suffix}}
