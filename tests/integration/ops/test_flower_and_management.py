"""What operators watch: Flower sees the chain's tasks; the management console sees the broker topology."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.support import services
from tests.support.api import ApiClient
from tests.support.flower import FlowerProcess
from tests.support.polling import wait_for
from tests.support.worker import WorkerProcess


@pytest.fixture(scope="module")
def flower(pg_url: str, broker_url: str, redis_url: str, worker: WorkerProcess,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowerProcess]:
    process = FlowerProcess(broker_url=broker_url, database_url=pg_url, redis_url=redis_url,
                            management_url=services.MANAGEMENT_URL,
                            log_path=tmp_path_factory.mktemp("flower") / "flower.log")
    process.start()
    yield process
    process.stop()


def finished(api: ApiClient, execution_id: str) -> dict[str, Any]:
    return wait_for(
        lambda: (body := api.get(f"/executions/{execution_id}").get_json())["status"] == "completed" and body,
        60, "the execution to complete",
    )


def test_flower_lists_the_chain_tasks(flower: FlowerProcess, wapi: ApiClient) -> None:
    agent = wapi.create_agent(llm={"provider": "scripted", "options": {"text": "watched by flower"}})
    started = wapi.post(f"/agents/{agent['id']}/execute", json={"message": "hello flower"}).get_json()
    finished(wapi, started["execution_id"])

    def llm_tasks() -> dict[str, Any]:
        response = httpx.get(f"{flower.url}/api/tasks", params={"taskname": "executions.llm"}, timeout=5)
        response.raise_for_status()
        tasks: dict[str, Any] = response.json()
        return {tid: t for tid, t in tasks.items() if started["execution_id"] in str(t.get("args", ""))
                and t.get("state") == "SUCCESS"}

    tasks = wait_for(llm_tasks, 30, "Flower to report the executions.llm task")
    assert len(tasks) == 1
    for name in ("executions.governance", "executions.persist"):
        found = httpx.get(f"{flower.url}/api/tasks", params={"taskname": name}, timeout=5).json()
        assert found, f"Flower has no {name} task"
    workers = httpx.get(f"{flower.url}/api/workers", params={"refresh": "true"}, timeout=10).json()
    assert any(name.startswith("test-") for name in workers)


def test_management_console_shows_the_topology(broker_url: str, api: ApiClient) -> None:
    sender, agent = api.create_agent(), api.create_agent()
    sent = api.post(f"/agents/{sender['id']}/messages", json={"to_agent_id": agent["id"], "message": "hi"})
    assert sent.status_code == 201  # the first send declares the receiver's inbox
    vhost = quote(urlsplit(broker_url).path.lstrip("/"), safe="")
    with services._management() as management:
        inbox = management.get(f"/api/queues/{vhost}/{quote('agent.' + agent['id'] + '.inbox', safe='')}").json()
        assert inbox["durable"] is True
        assert inbox["arguments"]["x-dead-letter-exchange"] == "agents.dlx"
        dead = management.get(f"/api/queues/{vhost}/agents.dead").json()
        assert dead["durable"] is True
        exchanges = {e["name"]: e["type"] for e in management.get(f"/api/exchanges/{vhost}").json()}
        assert exchanges["agents.direct"] == "direct"
        assert exchanges["events"] == "topic"
        assert "agents.dlx" in exchanges
        bindings = management.get(f"/api/exchanges/{vhost}/agents.direct/bindings/source").json()
        assert any(b["destination"] == f"agent.{agent['id']}.inbox" and b["routing_key"] == agent["id"]
                   for b in bindings)
