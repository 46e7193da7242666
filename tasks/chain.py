"""The execution chain's task names and its builder: governance -> llm -> persist, sent after the row commits."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery, chain
from celery.canvas import Signature

from app.services import chain_publish
from app.tracing import execution_trace

GOVERNANCE = "executions.governance"
LLM = "executions.llm"
PERSIST = "executions.persist"
TOOLS = "executions.tools"  # a tool-loop turn's calls (app.services.tools.step), sent by name after a commit


def build(celery_app: Celery, execution_id: str, task_ids: list[str]) -> Signature:
    """The chain with ids chosen up front (stored on the execution, so cancel can revoke queued steps)."""
    ids = task_ids if len(task_ids) == 3 else [None, None, None]
    return chain(
        celery_app.signature(GOVERNANCE, args=(execution_id,), immutable=True,
                             options={"task_id": ids[0], **_shown(repr((execution_id,)))}),
        celery_app.signature(LLM, options={"task_id": ids[1], **_shown(_previous_step(execution_id))}),
        celery_app.signature(PERSIST, options={"task_id": ids[2], **_shown(_previous_step(execution_id))}),
        app=celery_app,
    )


def _previous_step(execution_id: str) -> str:
    return "({'execution_id': %r, ...},)" % execution_id  # noqa: UP031 - braces inside the text


def _shown(argsrepr: str) -> dict[str, str]:
    """What Flower and the worker's log show as the step's arguments.

    Celery otherwise builds a saferepr of each step's arguments (the previous step's whole result, up to 1 KB) every
    time it publishes one: 8% of the prefork child's CPU (py-spy, issue 12). The execution id is what an operator
    looks tasks up by; the arguments themselves hold the prompt and the reply, which have no place in a dashboard.
    """
    return {"argsrepr": argsrepr, "kwargsrepr": "{}"}


def enqueuer(celery_app: Celery) -> Callable[[str, list[str]], None]:
    """An Enqueue callable bound to one Celery app (tests run several apps on different vhosts)."""

    def enqueue(execution_id: str, task_ids: list[str]) -> None:
        # confirm_publish: when this returns, the broker has the message; no confirm in time raises.
        with execution_trace(execution_id):  # a chain sent later (sweep, approval) joins the execution's trace
            chain_publish.send(celery_app, build(celery_app, execution_id, task_ids),
                               timeout_s=float(celery_app.flask_app.config["CONFIRM_TIMEOUT_S"]))

    return enqueue
