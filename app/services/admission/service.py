"""Admission control as the rest of the code sees it: admit at execute, reserve around each provider call,
free and dispatch when an execution ends, slow a credential after a 429, and the dispatcher's upkeep."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app

from app.extensions import db
from app.llm.base import ShouldStop
from app.llm.stopping import wait_or_stop
from app.llm.tokens import count_tokens
from app.metrics import ADMISSION_QUEUED, PROVIDER_RATE_LIMITED, WORKSPACE_TOKENS
from app.models import Agent, Execution, ExecutionStatus
from app.services.admission import limits as limits_
from app.services.admission.state import AdmissionState, CallReservation, Item
from app.services.agents import RunSettings
from app.services.process_local import per_process
from app.services.streams import client

log = logging.getLogger(__name__)

Enqueue = Callable[[str, list[str]], None]
LEASE_GRACE_S = 300  # a slot outlives its execution's timeout_s by this much if nobody frees it
STALE_DISPATCH_MS = 30_000  # dispatched but not confirmed sent by then: the dispatcher died, send it again
PAUSE_JITTER = 0.2  # after a 429, the credential's executions come back spread over 20% of the Retry-After
MAX_WAIT_SLICE_S = 1.0


@dataclass(frozen=True)
class Admitted:
    """Send the chain now."""


@dataclass(frozen=True)
class Queued:
    """The execution waits (pending) in its workspace's queue; the dispatcher sends it when capacity frees."""

    reason: str


def state() -> AdmissionState:
    """One per process and Redis URL (it registers its scripts once)."""
    url = current_app.config["REDIS_URL"]
    return per_process("admission", (url,), lambda: AdmissionState(client(url)))


def now_ms() -> int:
    return int(time.time() * 1000)


def estimate_tokens(*, system_prompt: str | None, message: str, max_tokens: int | None,
                    options: dict[str, Any] | None = None) -> int:
    """What a call may cost: the prompt plus the reply's cap (max_tokens, or the configured guess)."""
    opts = options or {}
    cap = max_tokens or opts.get("max_tokens") or opts.get("max_completion_tokens")
    reply = int(cap) if cap else int(current_app.config["ADMISSION_DEFAULT_COMPLETION_TOKENS"])
    return count_tokens(system_prompt, message) + reply


def admit(execution: Execution, agent: Agent | RunSettings | None = None) -> Admitted | Queued:
    """After commit: take every slot and reservation it needs, or join its workspace's fair queue (`agent`: its
    agent as the caller read it, else read here)."""
    if agent is None:
        agent = db.session.get(Agent, execution.agent_id)
    llm = (agent.llm if agent else None) or {}
    credential_id = str(llm.get("credential_id") or "")
    limits = limits_.for_execution(execution.workspace_id, credential_id or None)
    config = current_app.config
    now = now_ms()
    wait_timeout_s = getattr(execution, "wait_timeout_s", None) or config["EXECUTION_WAIT_TIMEOUT_S"]
    item = Item(
        id=execution.id, ws=execution.workspace_id, cred=credential_id,
        wscap=limits.workspace_concurrency, credcap=limits.credential_concurrency,
        rpm=limits.requests_per_minute, tpm=limits.tokens_per_minute,
        est=estimate_tokens(system_prompt=agent.system_prompt if agent else None, message=execution.message,
                            max_tokens=execution.max_tokens, options=llm.get("options")),
        lease=(int(execution.timeout_s) + LEASE_GRACE_S) * 1000,
        deadline=now + int(float(wait_timeout_s) * 1000),
        task_ids=list(execution.task_ids or []),
    )
    reason = state().admit(item, now_ms=now, capacity=int(config["EXECUTION_MAX_IN_FLIGHT"]))
    if reason is None:
        return Admitted()
    ADMISSION_QUEUED.labels(reason).inc()
    log.info("execution %s waits: %s", execution.id, reason, extra={"execution_id": execution.id})
    return Queued(reason)


def queued_of(execution: Execution) -> dict[str, str] | None:
    """{reason} while a pending execution waits for capacity; None otherwise (or if Redis cannot say)."""
    if execution.status != ExecutionStatus.PENDING:
        return None
    try:
        reason = state().queued_reason(execution.id)
    except Exception:  # noqa: BLE001 - a read must not fail for this
        return None
    return {"reason": reason} if reason else None


def acquire_for_llm(execution_id: str, *, est_tokens: int, remaining_s: float,
                    should_stop: ShouldStop) -> CallReservation:
    """Before each provider call: wait (polling should_stop) until the credential's windows and any 429 pause
    allow it. Raises Stopped (cancel, timeout) from the wait. Also extends the execution's slot leases."""
    st = state()
    while True:
        now = now_ms()
        expiry = now + int((max(remaining_s, 0) + LEASE_GRACE_S) * 1000)
        reservation = st.reserve_call(execution_id, est=est_tokens, now_ms=now, expiry_ms=expiry)
        if reservation.reason is None:
            return reservation
        wait_or_stop(min(MAX_WAIT_SLICE_S, reservation.wait_ms / 1000), should_stop)


def release(reservation: CallReservation, *, prompt_tokens: int, completion_tokens: int,
            workspace_id: str | None = None) -> None:
    """After a provider call: the window counts the tokens really used, and so does the daily budget."""
    from app.services.admission import budget

    used = int(prompt_tokens) + int(completion_tokens)
    st = state()
    if reservation.member and reservation.credential_id:
        st.correct(reservation.credential_id, reservation.member, used)
    workspace = reservation.workspace_id or workspace_id
    if workspace and used:
        budget.add_tokens(st.redis, workspace, used)
        WORKSPACE_TOKENS.labels(workspace).inc(used)


def on_rate_limited(credential_id: str | None, retry_after_s: float) -> float:
    """A provider 429: nothing on this credential starts before now + retry_after (plus jitter per caller, so the
    executions it paused come back spread out, not in lockstep). Returns the seconds this caller should wait."""
    PROVIDER_RATE_LIMITED.labels("credential" if credential_id else "none").inc()
    wait_s = max(0.0, retry_after_s) * (1.0 + PAUSE_JITTER * random.random())
    if credential_id:
        now = now_ms()
        until = state().pause(credential_id, until_ms=now + int(retry_after_s * 1000), now_ms=now)
        wait_s = max(wait_s, (until - now) / 1000)
    return wait_s


def finished(execution_id: str) -> bool:
    """Free an ended execution's slots (a no-op unless its terminal event exists)."""
    return state().finish(execution_id, only_if_ended=True)


def paused(execution_id: str) -> bool:
    """A tool-loop pause holds no capacity (a person may take an hour; an asked agent of the same workspace needs
    a slot to answer): free the slots; the next turn is admitted anew when the loop resumes."""
    return state().finish(execution_id, only_if_ended=False)


def dispatch(enqueue: Enqueue, *, most: int = 100) -> int:
    """Send the waiting executions that fit now, in fair order; each stays marked until its send confirmed."""
    st = state()
    capacity = int(current_app.config["EXECUTION_MAX_IN_FLIGHT"])
    sent = 0
    while True:
        batch = st.dispatch(now_ms=now_ms(), capacity=capacity, most=most)
        for execution_id, task_ids in batch:
            enqueue(execution_id, task_ids)  # on failure: still 'dispatching'; upkeep sends it again
            st.sent(execution_id)
            sent += 1
        if len(batch) < most:
            return sent


def upkeep(enqueue: Enqueue) -> dict[str, int]:
    """The dispatcher's pass: free slots of ended executions, end waits past wait_timeout_s, resend dispatches
    a dead dispatcher left, then dispatch."""
    st = state()
    freed = sum(st.finish(i, only_if_ended=True) for i in st.ended_held_ids())
    timed_out = _end_waits(st.expire_waits(now_ms=now_ms()))
    resent = 0
    for execution_id, task_ids in st.stale_dispatches(older_than_ms=STALE_DISPATCH_MS, now_ms=now_ms()):
        enqueue(execution_id, task_ids)
        st.sent(execution_id)
        resent += 1
    return {"freed": freed, "timed_out": timed_out, "resent": resent, "dispatched": dispatch(enqueue)}


def _end_waits(execution_ids: list[str]) -> int:
    """Executions that waited past wait_timeout_s end timed_out (never failed)."""
    from app.services.executions import state as machine

    ended = 0
    for execution_id in execution_ids:
        row = machine.move(
            execution_id, ExecutionStatus.TIMED_OUT, actor="admission", from_statuses=[ExecutionStatus.PENDING],
            values={"error_code": "wait_timeout", "error_message": "waited longer than wait_timeout_s for capacity"},
            audit_rows=[machine.Audit("execution.timed_out", "error", {"reason": "wait_timeout"})],
        )
        ended += row is not None
    return ended
