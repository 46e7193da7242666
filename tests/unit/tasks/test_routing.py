"""The LLM step goes to its own queue (a threads-pool worker), governance and persistence to `executions`."""

from __future__ import annotations

from celery import Celery

from tasks.chain import GOVERNANCE, LLM, PERSIST, build


def configured() -> Celery:
    app = Celery("unit", set_as_current=False)
    app.config_from_object("celeryconfig")
    return app


def test_each_step_is_routed_to_the_queue_of_its_pool() -> None:
    app = configured()
    router = app.amqp.router
    queues = {name: router.route({}, name)["queue"].name for name in (GOVERNANCE, LLM, PERSIST)}
    assert queues == {GOVERNANCE: "executions", LLM: "executions.llm", PERSIST: "executions"}


def test_the_chain_builder_needs_no_change_for_it() -> None:
    """Routing is by task name, so each signature of the unchanged chain lands on its queue when published."""
    app = configured()
    steps = build(app, "exec-1", ["t1", "t2", "t3"]).tasks
    assert [app.amqp.router.route(step.options, step.task)["queue"].name for step in steps] == [
        "executions", "executions.llm", "executions"]


def test_a_worker_reserves_only_what_it_runs() -> None:
    """Acks late with prefetch = concurrency x 1: nothing waits unacked behind a busy pool (consumer_timeout)."""
    app = configured()
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1
