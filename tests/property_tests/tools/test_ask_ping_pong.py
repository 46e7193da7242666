"""Property: agents whose tools ask each other in a ring always end, and the chain of asks stops at MAX_HOPS.

Every agent's first turn asks the next agent of the ring; every ask runs that agent, which asks on. The hop
count grows by one per ask, so the ask past MAX_HOPS is answered with a `max_hops` error result, and every
execution of the chain then completes, innermost first. A real worker on PostgreSQL, RabbitMQ and Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import build_app
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client
from tests.support.worker import WorkerProcess

MAX_HOPS = 3
TERMINAL = {"completed", "failed", "cancelled", "timed_out", "denied"}


@pytest.fixture(scope="module")
def hop_app(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """An app and a worker of their own (own vhost) with a small MAX_HOPS, so no other worker takes the tasks."""
    with services.rabbitmq_vhost(f"hops_{services.run_token()}") as vhost_url:
        app = build_app(pg_url, vhost_url, redis_url)
        app.config["MAX_HOPS"] = MAX_HOPS
        process = WorkerProcess(database_url=pg_url, broker_url=vhost_url, redis_url=redis_url,
                                log_path=Path(tmp_path_factory.mktemp("hops")) / "worker.log",
                                extra_env={"MAX_HOPS": str(MAX_HOPS)}).start()
        try:
            yield app
        finally:
            process.stop()


def ring(api: ApiClient, size: int) -> list[str]:
    """`size` agents, agent i's tool asking agent i+1 (mod size)."""
    ids = [api.create_agent(name=f"ring-{index}")["id"] for index in range(size)]
    for index, agent_id in enumerate(ids):
        tool = {"name": "ask_next", "action": "chat", "kind": "agent", "agent_id": ids[(index + 1) % size]}
        turns = [{"tool_calls": [{"name": "ask_next", "arguments": {"question": "and you?"}}]}, {"text": "done"}]
        response = api.patch(f"/agents/{agent_id}", json={
            "tools": [tool], "llm": {"provider": "scripted", "options": {"turns": turns}}})
        assert response.status_code == 200, response.get_json()
    return ids


@settings(max_examples=2, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(size=st.integers(min_value=2, max_value=3))
def test_a_ring_of_asking_agents_ends_at_max_hops(hop_app: Flask, size: int) -> None:
    api = new_workspace_client(hop_app)
    ids = ring(api, size)
    first = api.post(f"/agents/{ids[0]}/execute", json={"message": "start"}).get_json()["execution_id"]
    deadline = time.monotonic() + 90
    while api.get(f"/executions/{first}").get_json()["status"] not in TERMINAL:
        assert time.monotonic() < deadline, "the ring did not end"
        time.sleep(0.1)
    every = [item for agent_id in ids
             for item in api.get(f"/agents/{agent_id}/executions", query_string={"limit": 50}).get_json()["items"]]
    assert len(every) == MAX_HOPS + 1, "one execution per hop, and the first"
    assert {item["status"] for item in every} == {"completed"}
    calls = [api.get(f"/executions/{item['execution_id']}").get_json()["tool_calls"][0] for item in every]
    errors = [call["error"]["code"] for call in calls if call["status"] == "failed"]
    assert errors == ["max_hops"], "only the ask past MAX_HOPS is refused"
    hops = sorted(int((item["metadata"] or {}).get("hop") or 0) for item in every)
    assert hops == list(range(MAX_HOPS + 1))
