"""Workers on two hosts (network namespaces with veth pairs); one host's link is cut mid-LLM.

The services the workers need listen on the host ends of the veth pairs: a private RabbitMQ node and a
private Redis bound there, and PostgreSQL through a TCP proxy bound there. The web runs in the test on
loopback. Executions stream long enough that both workers hold some mid-stream; then host 0's link goes
down (no RST: its connections just hang). RabbitMQ notices the silent worker by AMQP heartbeats and
requeues its unacked tasks; the LLM lease in Redis expires; host 1 runs them again and ends each exactly
once. Measured: the time from the cut until the last of the cut host's executions ended.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.chaos.checks import report, wait_for
from tests.chaos.executions import raw_events, streaming_now, tally, wait_until_all_ended
from tests.conftest import build_app
from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.netns import worker_hosts
from tests.support.rabbit_node import private_rabbitmq
from tests.support.redis_node import private_redis
from tests.support.tcp_proxy import CuttableProxy, through
from tests.support.worker import WorkerProcess

CHUNKS = [f"w{i} " for i in range(50)]
EXPECTED = "".join(CHUNKS)
HEARTBEAT_S = 5  # the workers' AMQP heartbeat: RabbitMQ drops a silent worker after about two of them


def llm_task_ids(database_url: str, execution_ids: list[str]) -> dict[str, str]:
    """execution id -> the task id of its LLM step (chosen up front, stored on the row)."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("select id, task_ids from executions where id = any(:ids)"),
                                {"ids": execution_ids}).all()
    finally:
        engine.dispose()
    return {row.id: row.task_ids[1] for row in rows}


@pytest.mark.parametrize("executions", [pytest.param(6, id="quick"),
                                        pytest.param(24, id="24-executions", marks=pytest.mark.slow)])
def test_cut_host_has_its_executions_finished_by_the_other(executions: int, tmp_path: Path) -> None:
    with worker_hosts(2) as hosts, \
            private_rabbitmq(also_on=tuple(h.outer_ip for h in hosts)) as rabbit, \
            private_redis(also_on=tuple(h.outer_ip for h in hosts)) as redis_node, \
            services.postgres_database(f"chaos_{services.run_token()}") as database_url:
        proxies = [CuttableProxy(("127.0.0.1", 5432), host=h.outer_ip) for h in hosts]
        app = build_app(database_url, rabbit.url, redis_node.url)
        api = new_workspace_client(app)
        agent = api.create_agent(llm={"provider": "scripted", "options": {"chunks": CHUNKS, "chunk_delay_ms": 100}})
        workers = [
            WorkerProcess(database_url=through(database_url, proxy.port, host.outer_ip),
                          broker_url=f"amqp://guest:guest@{host.outer_ip}:{rabbit.port}//",
                          redis_url=f"redis://{host.outer_ip}:{redis_node.port}/0",
                          log_path=tmp_path / f"worker-{i}.log", concurrency=executions // 2, netns=host.netns,
                          extra_env={"BROKER_HEARTBEAT_S": str(HEARTBEAT_S)}).start()
            for i, (host, proxy) in enumerate(zip(hosts, proxies, strict=True))
        ]
        started: dict[str, tuple[str, str]] = {}
        try:
            for i in range(executions):
                response = api.post(f"/agents/{agent['id']}/execute", json={"message": f"two hosts {i}"})
                assert response.status_code == 200, response.get_json()
                started[response.get_json()["execution_id"]] = (f"two hosts {i}", EXPECTED)
            tasks = llm_task_ids(database_url, list(started))

            def on_host(index: int) -> list[str]:
                log = workers[index].log()
                return [e for e, task_id in tasks.items() if f"executions.llm[{task_id}] received" in log]

            cut_host = wait_for(lambda: (ids := on_host(0)) and on_host(1)
                                and all(streaming_now(redis_node.url, e, len(CHUNKS) - 10) for e in ids) and ids,
                                timeout_s=90, what="both hosts streaming")
            cut_at, cut_wall = time.monotonic(), time.time()
            hosts[0].cut()
            wait_until_all_ended(api, redis_node.url, started, timeout_s=240, what="every execution to end")
            waited_s = time.monotonic() - cut_at
            rows = {e: api.get(f"/executions/{e}").get_json() for e in started}
            result = tally(api, redis_node.url, started)
            restarted_events = sum(1 for e in cut_host for _id, event in raw_events(redis_node.url, e)
                                   if event == "reset")
        finally:
            workers[0].kill()  # its host is gone: a warm shutdown would wait on dead sockets
            workers[1].stop()
            for proxy in proxies:
                proxy.close()

    def ended_after_cut(execution_id: str) -> float:
        finished = datetime.fromisoformat(rows[execution_id]["finished_at"].replace("Z", "+00:00"))
        return finished.timestamp() - cut_wall

    cut_results = [rows[e] for e in cut_host]
    counts: dict[str, Any] = {
        "executions": executions,
        "on_cut_host": len(cut_host),
        "cut_host_completed": sum(1 for row in cut_results if row["status"] == "completed"),
        "cut_host_restarted": sum(1 for row in cut_results if row["attempts"] > 1),
        "cut_host_resets": restarted_events,
        **{k: v for k, v in result.as_dict().items() if k != "statuses"},
        "statuses": dict(result.statuses),
        "cut_host_last_end_s": round(max(ended_after_cut(e) for e in cut_host), 1),
        "cut_host_first_end_s": round(min(ended_after_cut(e) for e in cut_host), 1),
        "all_ended_s": round(waited_s, 1),
        "heartbeat_s": HEARTBEAT_S,
    }
    report(f"two-hosts-{executions}", counts,
           ["stuck", "double_terminal", "double_audit", "bad_stream", "wrong_output", "wrong_usage"])
    assert result.ended_once == executions and result.statuses == {"completed": executions}
    assert counts["cut_host_completed"] == len(cut_host) > 0
