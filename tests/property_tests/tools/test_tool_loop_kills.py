"""Property: for random tool scripts and random worker kills, every webhook call is asked for at most once after
its ledger row completed (retries before that carry the same Idempotency-Key), and every execution ends exactly
once, completed. A real worker, RabbitMQ vhost, private Redis and PostgreSQL; a webhook receiver on loopback."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.chaos.checks import wait_for
from tests.chaos.executions import TERMINAL, raw_events
from tests.conftest import build_app
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client
from tests.support.redis_node import RedisNode, private_redis
from tests.support.webhook_receiver import Reply, WebhookReceiver
from tests.support.worker import WorkerProcess

# The workers' sweeps run every second, so a turn whose chain a kill stranded is re-sent within seconds.
SWEEP_OFTEN = {"EXECUTION_SWEEP_INTERVAL_S": "1", "EXECUTION_REQUEUE_AFTER_S": "3"}

TOOLS = ("lookup", "confirm")
CALL = st.sampled_from(TOOLS)
SCRIPT = st.lists(st.lists(CALL, max_size=2), min_size=0, max_size=3)  # turns of calls, then a text turn


@pytest.fixture(scope="module")
def stack(pg_url: str) -> Iterator[tuple[ApiClient, str, str, RedisNode, WebhookReceiver]]:
    with (services.rabbitmq_vhost(f"prop_{services.run_token()}") as vhost_url, private_redis() as redis_node,
          WebhookReceiver() as receiver):
        app = build_app(pg_url, vhost_url, redis_node.url)
        app.config["WEBHOOK_ALLOWED_HOSTS"] = "127.0.0.1"
        yield new_workspace_client(app), vhost_url, pg_url, redis_node, receiver


def agent_for(api: ApiClient, receiver: WebhookReceiver, script: list[list[str]]) -> str:
    tools = [{"name": "lookup", "action": "read", "kind": "webhook", "url": receiver.url, "timeout_s": 5},
             {"name": "confirm", "action": "chat", "kind": "client"}]
    turns: list[dict[str, Any]] = [
        {"tool_calls": [{"name": name, "arguments": {"n": index}} for index, name in enumerate(calls)]}
        for calls in script]
    turns.append({"text": "done"})
    return str(api.create_agent(tools=tools, llm={"provider": "scripted", "options": {"turns": turns}})["id"])


def answer_clients(api: ApiClient, ids: list[str]) -> None:
    for execution_id in ids:
        view = api.get(f"/executions/{execution_id}").get_json()
        if view["status"] == "requires_action" and view["required_action"]:
            outputs = [{"tool_call_id": call["id"], "output": "ok"} for call in view["required_action"]["tool_calls"]]
            api.post(f"/executions/{execution_id}/tool_outputs", json={"tool_outputs": outputs})


# Each example starts real workers and kills them: a few examples, no shrinking (a failure prints its example).
def _examples(count: int) -> Any:
    return settings(max_examples=count, deadline=None, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


SCRIPTS = st.lists(SCRIPT, min_size=1, max_size=3)
KILLS = st.lists(st.floats(0.2, 1.5), max_size=2)


@_examples(1)
@given(scripts=SCRIPTS, kill_after_s=KILLS)
def test_random_scripts_and_kills_quick(stack: tuple[ApiClient, str, str, RedisNode, WebhookReceiver],
                                        tmp_path_factory: pytest.TempPathFactory, scripts: list[list[list[str]]],
                                        kill_after_s: list[float]) -> None:
    """make test: one random example (about half a minute)."""
    _scripts_and_kills(stack, tmp_path_factory, scripts, kill_after_s)


@pytest.mark.slow
@_examples(6)
@given(scripts=SCRIPTS, kill_after_s=KILLS)
def test_random_scripts_and_kills(stack: tuple[ApiClient, str, str, RedisNode, WebhookReceiver], tmp_path_factory:
                                  pytest.TempPathFactory, scripts: list[list[list[str]]],
                                  kill_after_s: list[float]) -> None:
    """make chaos: six more."""
    _scripts_and_kills(stack, tmp_path_factory, scripts, kill_after_s)


def _scripts_and_kills(stack: tuple[ApiClient, str, str, RedisNode, WebhookReceiver],
                       tmp_path_factory: pytest.TempPathFactory, scripts: list[list[list[str]]],
                       kill_after_s: list[float]) -> None:
    api, vhost_url, pg_url, redis_node, receiver = stack
    receiver.behave(Reply(delay_s=0.2))
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"

    def new_worker() -> WorkerProcess:
        return WorkerProcess(database_url=pg_url, broker_url=vhost_url, redis_url=redis_node.url,
                             log_path=log_path, concurrency=3, extra_env=SWEEP_OFTEN).start()

    worker = new_worker()
    ids = [api.post(f"/agents/{agent_for(api, receiver, script)}/execute",
                    json={"message": uuid.uuid4().hex}).get_json()["execution_id"] for script in scripts]
    try:
        for delay in kill_after_s:
            time.sleep(delay)  # a random point of the loops: in an LLM turn, a webhook call, a pause or between
            worker.kill()
            answer_clients(api, ids)
            worker = new_worker()

        def ended() -> bool:
            answer_clients(api, ids)
            return all(api.get(f"/executions/{e}").get_json()["status"] in TERMINAL for e in ids)

        try:
            wait_for(ended, timeout_s=180, what="every execution to end", interval_s=0.2)
        except AssertionError as exc:
            views = {e: api.get(f"/executions/{e}").get_json() for e in ids}
            raise AssertionError(f"{exc}: " + "; ".join(
                f"{e[:8]} {view['status']} turns={view['turns']} "
                f"calls={[(row['name'], row['status']) for row in view['tool_calls']]}"
                for e, view in views.items())) from None
    finally:
        worker.stop()
    views = {e: api.get(f"/executions/{e}").get_json() for e in ids}
    assert {view["status"] for view in views.values()} == {"completed"}, {
        e: (view["status"], view["error"], [(row["status"], row["error"]) for row in view["tool_calls"]])
        for e, view in views.items()}
    for execution_id in ids:
        terminal = [event for _id, event in raw_events(redis_node.url, execution_id) if event in TERMINAL]
        assert terminal == ["completed"], (execution_id, terminal)
    completed_at = {row["tool_call_id"]: datetime.fromisoformat(row["finished_at"].replace("Z", "+00:00"))
                    for view in views.values() for row in view["tool_calls"] if row["status"] == "completed"}
    for request in receiver.received:
        finished = completed_at.get(request.headers.get("idempotency-key", ""))
        assert finished is None or request.at <= finished.timestamp() + 0.001, "a completed call was asked again"
    for view, script in zip(views.values(), scripts, strict=True):
        played = script[:next((index for index, calls in enumerate(script) if not calls), len(script))]
        assert view["turns"] == len(played) + 1, "a turn without calls ends the loop"
        assert len(view["tool_calls"]) == sum(len(calls) for calls in played)
