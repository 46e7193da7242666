"""Scenario 1: SIGKILL the Celery worker mid-LLM again and again; every execution still ends exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.checks import report, wait_for
from tests.chaos.executions import execute, raw_events, streaming_now, tally, wait_until_all_ended
from tests.conftest import build_app
from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.redis_node import private_redis
from tests.support.worker import WorkerProcess

CHUNKS = [f"w{i} " for i in range(30)]
EXPECTED = "".join(CHUNKS)
NEW_PER_ROUND = 3  # fresh executions per round, so every kill finds streams in flight


@pytest.mark.parametrize("kills", [pytest.param(3, id="quick"),
                                   pytest.param(20, id="20-kills", marks=pytest.mark.slow)])
def test_worker_sigkill_mid_llm_ends_every_execution_once(
    kills: int, pg_url: str, tmp_path: Path
) -> None:
    # A private Redis: the shared DB 9 is flushed whenever any other test session starts or ends.
    with services.rabbitmq_vhost(f"chaos_{services.run_token()}") as vhost_url, private_redis() as redis_node:
        redis_url = redis_node.url
        app = build_app(pg_url, vhost_url, redis_url)
        api = new_workspace_client(app)
        agent = api.create_agent(llm={"provider": "scripted", "options": {"chunks": CHUNKS, "chunk_delay_ms": 40}})

        def new_worker() -> WorkerProcess:
            # 4 slots on 2 cores: tasks mostly sleep between chunks; redelivered ones wait out the 5 s lease
            # while fresh ones stream, so the next kill always lands mid-stream.
            return WorkerProcess(database_url=pg_url, broker_url=vhost_url, redis_url=redis_url,
                                 log_path=tmp_path / "worker.log", concurrency=4).start()

        executions: dict[str, tuple[str, str]] = {}
        killed_mid_stream = 0
        worker = new_worker()
        try:
            for round_no in range(kills):
                for i in range(NEW_PER_ROUND):
                    message = f"round {round_no} execution {i}"
                    executions[execute(api, agent["id"], message)] = (message, EXPECTED)
                # Live streams only: events must grow after this worker started (a killed run's deltas stay).
                baseline = {e: len(raw_events(redis_url, e)) for e in executions}
                streaming = wait_for(
                    lambda baseline=baseline: [e for e in executions
                                               if len(raw_events(redis_url, e)) > baseline[e] + 1
                                               and streaming_now(redis_url, e, len(CHUNKS) - 5)],
                    timeout_s=60, what=f"an execution streaming before kill {round_no + 1}",
                )
                worker.kill()
                killed_mid_stream += len(streaming)
                worker = new_worker()
            wait_until_all_ended(api, redis_url, executions, timeout_s=60 + 5 * kills, what="every execution to end")
        finally:
            worker.stop()
        result = tally(api, redis_url, executions)
        verify = api.get("/audit/verify").get_json()

    counts = {"kills": kills, "streams_killed": killed_mid_stream, **result.as_dict(),
              "audit_chain_broken": int(not verify["ok"])}
    report(f"worker-kill-{kills}", counts,
           ["stuck", "double_terminal", "double_audit", "bad_stream", "wrong_output", "wrong_usage",
            "audit_chain_broken"])
    assert result.ended_once == result.started
    assert result.statuses == {"completed": result.started}
    assert killed_mid_stream >= kills and result.restarts >= kills
