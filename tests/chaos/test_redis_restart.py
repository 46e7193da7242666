"""Scenario 3: Redis restarts mid-stream (a private redis-server, killed and started again): executions still
complete and persist; an SSE reader resumes with Last-Event-ID and sees no lost or repeated event, or gets a
503 while Redis is down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.checks import report, wait_for
from tests.chaos.executions import (
    TERMINAL,
    execute,
    streaming_now,
    tally,
    wait_until_all_ended,
)
from tests.conftest import build_app
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client
from tests.support.redis_node import RedisNode, private_redis
from tests.support.sse import SseEvent, iter_events, text_of
from tests.support.worker import WorkerProcess

CHUNKS = [f"r{i} " for i in range(60)]
EXPECTED = "".join(CHUNKS)
RECONNECT_PAUSE_S = 0.05  # the reader's retry policy, not synchronisation


def read_resuming(api: ApiClient, execution_id: str, node: RedisNode, restarts: int,
                  deadline_s: float = 60.0) -> dict[str, Any]:
    """Read the stream like an EventSource: reconnect with Last-Event-ID after any break; restart Redis
    `restarts` times while deltas are flowing."""
    got: list[SseEvent] = []
    outcome = {"responses_503": 0, "responses_other": 0, "reconnects": 0, "restarts_done": 0}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and not (got and got[-1].event in TERMINAL):
        headers = {"Last-Event-ID": str(got[-1].id)} if got else None
        try:
            response = api.get(f"/executions/{execution_id}/events", headers=headers, buffered=False)
        except Exception:  # noqa: BLE001 - a connection the app could not even open counts as a reconnect
            outcome["reconnects"] += 1
            time.sleep(RECONNECT_PAUSE_S)
            continue
        if response.status_code != 200:
            key = "responses_503" if response.status_code == 503 else "responses_other"
            outcome[key] += 1
            response.close()
            time.sleep(RECONNECT_PAUSE_S)
            continue
        chunks: Iterator[bytes] = iter(response.response)  # type: ignore[arg-type]
        try:
            for event in iter_events(chunks):
                got.append(event)
                deltas = sum(1 for e in got if e.event == "delta")
                if outcome["restarts_done"] < restarts and deltas >= 8 * (outcome["restarts_done"] + 1):
                    node.restart()  # kill -9 and start: every client connection drops mid-stream
                    outcome["restarts_done"] += 1
                if event.event in TERMINAL:
                    break
        except Exception:  # noqa: BLE001 - the stream broke when Redis went away: resume
            pass
        finally:
            response.close()
        if not (got and got[-1].event in TERMINAL):
            outcome["reconnects"] += 1
    ids = [event.id for event in got]
    outcome.update(
        events=len(got),
        lost_events=len(set(range(1, max(ids, default=0) + 1)) - set(ids)),
        repeated_events=len(ids) - len(set(ids)),
        out_of_order_events=sum(1 for a, b in zip(ids, ids[1:], strict=False) if b <= a),
        terminal_events=sum(1 for event in got if event.event in TERMINAL),
        wrong_text=int(text_of(got) != EXPECTED),
    )
    return outcome


@contextmanager
def three_executions_on_a_private_redis(
    pg_url: str, tmp_path: Path, what: str
) -> Iterator[tuple[ApiClient, RedisNode, WorkerProcess, dict[str, tuple[str, str]]]]:
    """A worker and an app on a private Redis (the test restarts it), with three executions streaming."""
    with services.rabbitmq_vhost(f"chaos_{services.run_token()}") as vhost_url, private_redis() as node:
        app = build_app(pg_url, vhost_url, node.url)
        api = new_workspace_client(app)
        agent = api.create_agent(llm={"provider": "scripted", "options": {"chunks": CHUNKS, "chunk_delay_ms": 50}})
        worker = WorkerProcess(database_url=pg_url, broker_url=vhost_url, redis_url=node.url,
                               log_path=tmp_path / "worker.log", concurrency=4).start()
        try:
            executions = {}
            for i in range(3):
                message = f"through a redis {what} {i}"
                executions[execute(api, agent["id"], message)] = (message, EXPECTED)
            yield api, node, worker, executions
        finally:
            worker.stop()


@pytest.mark.parametrize("restarts", [pytest.param(1, id="quick"), pytest.param(4, id="4-restarts",
                                                                                  marks=pytest.mark.slow)])
def test_redis_restart_mid_stream(restarts: int, pg_url: str, tmp_path: Path) -> None:
    with three_executions_on_a_private_redis(pg_url, tmp_path, "restart") as (api, node, _worker, executions):
        reader = read_resuming(api, next(iter(executions)), node, restarts)
        wait_until_all_ended(api, node.url, executions, timeout_s=90, what="every execution to end")
        result = tally(api, node.url, executions)

    counts = {"redis_restarts": reader.pop("restarts_done"), **reader, **result.as_dict()}
    report(f"redis-restart-{restarts}", counts,
           ["responses_other", "lost_events", "repeated_events", "out_of_order_events", "wrong_text", "stuck",
            "double_terminal", "double_audit", "bad_stream", "wrong_output", "wrong_usage"])
    assert counts["redis_restarts"] == restarts and counts["terminal_events"] == 1
    assert result.statuses == {"completed": result.started}


@pytest.mark.parametrize("down_s", [pytest.param(6.0, id="quick"), pytest.param(30.0, id="30s",
                                                                               marks=pytest.mark.slow)])
def test_redis_down_longer_than_the_client_retries(down_s: float, pg_url: str, tmp_path: Path) -> None:
    """Redis gone for longer than the client rides out (~2.75 s): the worker's steps retry once it is back, an
    LLM run it cut off starts over (a `reset`), and every execution still completes exactly once."""
    with three_executions_on_a_private_redis(pg_url, tmp_path, "outage") as (api, node, worker, executions):
        cut_off = wait_for(lambda: [e for e in executions if streaming_now(node.url, e, len(CHUNKS) - 20)],
                           timeout_s=60, what="an execution streaming when Redis goes")
        node.kill()
        down_at = time.monotonic()
        wait_for(lambda: "ConnectionError" in worker.log(), timeout_s=down_s + 30,
                 what="a step to give up on Redis and retry")
        time.sleep(max(0.0, down_s - (time.monotonic() - down_at)))  # the outage lasts down_s
        node.start()
        wait_until_all_ended(api, node.url, executions, timeout_s=120, what="every execution to end")
        result = tally(api, node.url, executions)

    counts = {"down_s": down_s, "streaming_when_cut": len(cut_off), **result.as_dict()}
    report(f"redis-down-{int(down_s)}s", counts,
           ["stuck", "double_terminal", "double_audit", "bad_stream", "wrong_output", "wrong_usage"])
    assert result.ended_once == result.started
    assert result.statuses == {"completed": result.started}
    assert result.restarts >= 1  # the run Redis cut off started over
