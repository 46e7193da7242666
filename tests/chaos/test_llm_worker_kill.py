"""Scenario: SIGKILL the threads-pool LLM worker (Procfile `worker-llm`) with hundreds of streams in flight; every
execution still ends exactly once (one terminal event, one set of audit rows, output equal to the last attempt)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from app.services.streams import stream_key
from tests.chaos.checks import report, wait_for
from tests.chaos.executions import TERMINAL, execute, tally, wait_until_all_ended
from tests.conftest import build_app
from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.redis_node import private_redis
from tests.support.worker import GOVERNANCE_QUEUES, WorkerProcess, llm_worker

CHUNKS = [f"w{i} " for i in range(60)]


def snapshot(redis_url: str, executions: dict[str, tuple[str, str]]) -> dict[str, list[str]]:
    """Every execution's event types in one pipelined round trip (hundreds of them: the kill must land while
    what this saw still holds)."""
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for execution_id in executions:
        pipe.xrange(stream_key(execution_id))
    replies = pipe.execute()
    client.close()
    return {execution_id: [fields[b"event"].decode() for _id, fields in entries]
            for execution_id, entries in zip(executions, replies, strict=True)}


def mid_stream(events: list[str], max_deltas: int) -> bool:
    """The current run has streamed some deltas since its last reset, not all, and nothing ended it."""
    if any(event in TERMINAL for event in events):
        return False
    since = len(events) - events[::-1].index("reset") if "reset" in events else 0
    return 2 <= events[since:].count("delta") <= max_deltas
EXPECTED = "".join(CHUNKS)


@pytest.mark.parametrize(("in_flight", "kills"), [pytest.param(150, 1, id="150-in-flight"),
                                                  pytest.param(600, 3, id="600-in-flight-3-kills",
                                                               marks=pytest.mark.slow)])
def test_llm_worker_sigkill_with_hundreds_in_flight_ends_every_execution_once(
    in_flight: int, kills: int, pg_url: str, tmp_path: Path
) -> None:
    with (services.rabbitmq_vhost(f"chaos_llm_{services.run_token()}") as vhost_url,
          private_redis() as redis_node):
        redis_url = redis_node.url
        app = build_app(pg_url, vhost_url, redis_url)
        api = new_workspace_client(app)
        # 60 chunks 250 ms apart: each stream lasts 15 s (or longer, with hundreds of them on 2 cores).
        agent = api.create_agent(llm={"provider": "scripted", "options": {"chunks": CHUNKS, "chunk_delay_ms": 250}})
        governance = WorkerProcess(database_url=pg_url, broker_url=vhost_url, redis_url=redis_url,
                                   log_path=tmp_path / "worker.log", concurrency=2, queues=GOVERNANCE_QUEUES).start()

        def new_llm_worker() -> WorkerProcess:
            return llm_worker(database_url=pg_url, broker_url=vhost_url, redis_url=redis_url,
                              log_path=tmp_path / "llm-worker.log", concurrency=in_flight + 50).start(timeout=90)

        executions: dict[str, tuple[str, str]] = {}
        streams_killed = 0
        llm: WorkerProcess | None = None
        try:
            for index in range(in_flight):
                message = f"execution {index}"
                executions[execute(api, agent["id"], message)] = (message, EXPECTED)
            # Started once every execution waits on executions.llm, so all of them stream at once, however slowly
            # a busy box took the POSTs (600 took 34 s once: never 300 of 15 s streams at a time).
            llm = new_llm_worker()
            for kill in range(kills):
                baseline = {e: len(events) for e, events in snapshot(redis_url, executions).items()}

                def most_streaming(baseline: dict[str, int] = baseline) -> list[str]:
                    """Streaming right now: events grew since this worker started, not all chunks, no end."""
                    found = [e for e, events in snapshot(redis_url, executions).items()
                             if len(events) > baseline[e] + 1 and mid_stream(events, len(CHUNKS) - 5)]
                    return found if len(found) >= in_flight // 2 else []

                streaming = wait_for(most_streaming, timeout_s=120, interval_s=0.2,
                                     what=f"half of the executions streaming before kill {kill + 1}")
                llm.kill()
                streams_killed += len(streaming)
                llm = new_llm_worker()
            wait_until_all_ended(api, redis_url, executions, timeout_s=180, what="every execution to end")
        finally:
            if llm is not None:
                llm.stop()
            governance.stop()
        result = tally(api, redis_url, executions)
        verify = api.get("/audit/verify").get_json()

    counts = {"in_flight": in_flight, "kills": kills, "streams_killed": streams_killed, **result.as_dict(),
              "lost": result.stuck + (result.started - sum(result.statuses.values())),
              "doubled": result.double_terminal + result.double_audit, "audit_chain_broken": int(not verify["ok"])}
    report(f"llm-worker-kill-{in_flight}", counts,
           ["lost", "doubled", "stuck", "bad_stream", "wrong_output", "wrong_usage", "audit_chain_broken"])
    assert result.ended_once == result.started
    assert result.statuses == {"completed": result.started}
    assert streams_killed >= in_flight // 2 * kills and result.restarted >= in_flight // 2
