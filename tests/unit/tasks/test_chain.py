"""The chain builder: three named steps, ids chosen up front, the first step immutable (it takes the id only)."""

from __future__ import annotations

from celery import Celery

from tasks.chain import GOVERNANCE, LLM, PERSIST, build


def test_the_chain_runs_governance_then_llm_then_persist_with_the_stored_ids() -> None:
    app = Celery("unit", set_as_current=False)
    chain = build(app, "exec-1", ["t1", "t2", "t3"])
    steps = chain.tasks
    assert [step.task for step in steps] == [GOVERNANCE, LLM, PERSIST]
    assert [step.options["task_id"] for step in steps] == ["t1", "t2", "t3"]
    assert steps[0].args == ("exec-1",) and steps[0].immutable
    assert not steps[1].immutable and not steps[2].immutable  # each takes the previous step's result


def test_without_stored_ids_celery_chooses_them() -> None:
    app = Celery("unit", set_as_current=False)
    steps = build(app, "exec-1", []).tasks
    assert [step.options["task_id"] for step in steps] == [None, None, None]


def test_the_task_names_are_the_ones_flower_and_operators_see() -> None:
    assert (GOVERNANCE, LLM, PERSIST) == ("executions.governance", "executions.llm", "executions.persist")


def test_flower_shows_each_step_by_its_execution_not_its_payload() -> None:
    """Celery would otherwise saferepr the previous step's whole result (prompt, reply) into every message."""
    app = Celery("unit", set_as_current=False)
    steps = build(app, "exec-1", ["t1", "t2", "t3"]).tasks
    assert [step.options["argsrepr"] for step in steps] == [
        "('exec-1',)", "({'execution_id': 'exec-1', ...},)", "({'execution_id': 'exec-1', ...},)"]
    assert {step.options["kwargsrepr"] for step in steps} == {"{}"}
