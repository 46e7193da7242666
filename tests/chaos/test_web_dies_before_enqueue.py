"""Scenario 6: the web process dies after committing an execution but before the broker confirmed its chain.
The worker's sweep finds the pending execution without the "queued" mark and sends its chain, so it still ends
exactly once; executions whose chain was confirmed are left alone (no second chain)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.services import auth
from app.services.executions import requests as execution_service
from tests.chaos.checks import report
from tests.chaos.executions import execute, tally, wait_until_all_ended
from tests.conftest import build_app
from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.worker import WorkerProcess

CHUNKS = [f"q{i} " for i in range(5)]
EXPECTED = "".join(CHUNKS)


class WebKilled(BaseException):  # noqa: N818 - stands for SIGKILL: not an Exception, so nothing catches it
    """The process vanished between the commit and the broker's confirm."""


def crash_before_confirm(_execution_id: str, _task_ids: list[str]) -> None:
    raise WebKilled()


@pytest.mark.parametrize("stranded", [pytest.param(3, id="quick")])
def test_executions_stranded_by_a_dead_web_process_are_requeued(stranded: int, redis_url: str,
                                                                tmp_path: Path) -> None:
    # A database of its own: the worker's sweep reads every pending execution in it, other tests' included.
    with services.postgres_database(f"chaos_{services.run_token()}") as pg_url, \
            services.rabbitmq_vhost(f"chaos_{services.run_token()}") as vhost_url:
        app = build_app(pg_url, vhost_url, redis_url)
        api = new_workspace_client(app)
        agent = api.create_agent(llm={"provider": "scripted", "options": {"chunks": CHUNKS}})
        executions: dict[str, tuple[str, str]] = {}
        with app.app_context():
            principal = auth.authenticate(api.key)
            assert principal is not None
            for i in range(stranded):
                message = f"the web died {i}"
                body = execution_service.ExecutionRequest(message=message, stream=False, action="chat",
                                                          timeout_s=60, metadata=None)
                with pytest.raises(WebKilled):
                    execution_service.request(principal, agent["id"], body, idempotency_key=None,
                                              enqueue=crash_before_confirm)
        rows = api.get(f"/agents/{agent['id']}/executions").get_json()["items"]
        executions.update({row["execution_id"]: (row["message"], EXPECTED) for row in rows})
        assert {row["status"] for row in rows} == {"pending"}
        for i in range(3):  # confirmed normally: the sweep must not send these a second time
            message = f"queued normally {i}"
            executions[execute(api, agent["id"], message)] = (message, EXPECTED)
        worker = WorkerProcess(database_url=pg_url, broker_url=vhost_url, redis_url=redis_url,
                               log_path=tmp_path / "worker.log", concurrency=2,
                               extra_env={"EXECUTION_SWEEP_INTERVAL_S": "0.2", "EXECUTION_REQUEUE_AFTER_S": "1"})
        worker.start()
        try:
            wait_until_all_ended(api, redis_url, executions, timeout_s=60, what="every execution to end")
            requeued = worker.log().count("re-queued execution")
        finally:
            worker.stop()
        result = tally(api, redis_url, executions)

    counts = {"stranded": stranded, "requeued": requeued, **result.as_dict()}
    report("web-dies-before-enqueue", counts,
           ["stuck", "double_terminal", "double_audit", "bad_stream", "wrong_output", "wrong_usage", "restarts"])
    assert requeued == stranded
    assert result.ended_once == result.started == stranded + 3
    assert result.statuses == {"completed": result.started}
