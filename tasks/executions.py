"""The execution chain's tasks: thin wrappers that unpack, call a step of app.services.executions, return JSON."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task, shared_task

from app.logs import log_context
from app.metrics import STEP_SECONDS
from app.services import workflows
from app.services.backoff import retry_delay
from app.services.executions import governance_step, llm_step, persist_step
from app.services.executions.step_support import is_infrastructure_error
from app.services.tools import asks, step
from tasks.chain import GOVERNANCE, LLM, PERSIST, TOOLS

log = logging.getLogger(__name__)

# A database or Redis outage in the worker: retry the step after 1, 2, 4, 8, 16, then every 30 s, about 15 min
# in all (steps are idempotent); only then does the execution end `failed`.
MAX_RETRIES = 34
RETRY_BASE_S = 1.0
RETRY_CAP_S = 30.0


@shared_task(name=GOVERNANCE, bind=True, max_retries=MAX_RETRIES)
def governance(self: Task, execution_id: str) -> dict[str, Any]:
    """Re-check governance in the worker (the agent may have changed while the execution was queued)."""
    with _step(self, "governance", execution_id):
        return governance_step.run(execution_id)


@shared_task(name=LLM, bind=True, max_retries=MAX_RETRIES)
def llm(self: Task, previous: dict[str, Any]) -> dict[str, Any]:
    """Stream the provider's reply into the execution's event log."""
    with _step(self, "llm", previous.get("execution_id")):
        return llm_step.run(previous)


@shared_task(name=PERSIST, bind=True, max_retries=MAX_RETRIES)
def persist(self: Task, result: dict[str, Any]) -> dict[str, Any]:
    """Write the final state exactly once and emit the terminal event."""
    with _step(self, "persist", result.get("execution_id")):
        outcome = persist_step.run(result)
        if outcome.get("reply"):  # the execution answers an agent's message: send the reply (workflows)
            workflows.reply_for_execution(outcome["execution_id"])
        if outcome.get("tool_call"):  # it answers another agent's tool call: resume that execution
            asks.answer(outcome["execution_id"])
        return outcome


@shared_task(name=TOOLS, bind=True, max_retries=MAX_RETRIES)
def tools(self: Task, execution_id: str, turn: int) -> dict[str, Any]:
    """Run a tool-loop turn's calls, then pause (holding no slot) or queue the next turn."""
    with _step(self, "tools", execution_id):
        return step.run(execution_id, turn)


@contextmanager
def _step(task: Task, name: str, execution_id: str | None) -> Iterator[None]:
    """Every log line of the step names its execution; its duration feeds execution_step_seconds.

    An unreachable database or Redis retries the step (same message, chain kept) with capped backoff; a step
    that fails for good ends its execution `failed`, so no execution is stranded pending or running.
    """
    with log_context(execution_id=execution_id), STEP_SECONDS.labels(name).time():
        try:
            yield
        except Exception as exc:
            retries = int(task.request.retries or 0)
            if is_infrastructure_error(exc) and retries < MAX_RETRIES:
                delay = retry_delay(retries + 1, base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S)
                log.warning("%s step: %s, retry %d in %.0fs", name, type(exc).__name__, retries + 1, delay)
                raise task.retry(exc=exc, countdown=delay) from exc
            _give_up(name, execution_id, exc)
            raise


def _give_up(name: str, execution_id: str | None, exc: Exception) -> None:
    """The step will not run again: end its execution `failed` rather than leave it pending or running."""
    log.error("%s step failed for good: %s", name, type(exc).__name__, exc_info=exc)
    if execution_id is None:
        return
    try:
        persist_step.abandon(execution_id, name, exc)
    except Exception:  # noqa: BLE001 - the database is still gone: nothing more can be done from here
        log.exception("could not mark execution %s failed", execution_id)
