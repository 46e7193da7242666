"""The execution chain's tasks: thin wrappers that unpack, call app.services.pipeline and return JSON-safe dicts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import shared_task
from flask import current_app

from app.logs import log_context
from app.metrics import STEP_SECONDS
from app.services import pipeline, workflows

GOVERNANCE = "executions.governance"
LLM = "executions.llm"
PERSIST = "executions.persist"


@shared_task(name=GOVERNANCE)
def governance(execution_id: str) -> dict[str, Any]:
    """Re-check governance in the worker (the agent may have changed while the execution was queued)."""
    with _step("governance", execution_id):
        return pipeline.governance_step(execution_id)


@shared_task(name=LLM)
def llm(previous: dict[str, Any]) -> dict[str, Any]:
    """Stream the provider's reply into the execution's event log."""
    with _step("llm", previous.get("execution_id")):
        return pipeline.llm_step(previous)


@shared_task(name=PERSIST)
def persist(result: dict[str, Any]) -> dict[str, Any]:
    """Write the final state exactly once and emit the terminal event."""
    with _step("persist", result.get("execution_id")):
        outcome = pipeline.persist_step(result)
        if outcome.get("reply"):  # the execution answers an agent's message: send the reply (workflows)
            workflows.reply_for_execution(outcome["execution_id"], enqueue=_enqueue_chain)
        return outcome


@contextmanager
def _step(name: str, execution_id: str | None) -> Iterator[None]:
    """Every log line of the step names its execution; its duration feeds execution_step_seconds."""
    with log_context(execution_id=execution_id), STEP_SECONDS.labels(name).time():
        yield


def _enqueue_chain(execution_id: str, task_ids: list[str]) -> None:
    """Start another execution's chain from a worker (a reply that reaches an auto-reply agent)."""
    from tasks.chain import enqueuer  # tasks.chain imports this module's task names

    enqueuer(current_app.extensions["celery"])(execution_id, task_ids)
