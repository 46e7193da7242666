"""The Procfile's split, on the real services: governance and persistence on a prefork worker (`executions`), the LLM
step on a threads-pool worker (`executions.llm`). Cancel, timeout_s and task events must work without the prefork
pool's soft time limits and terminate-on-revoke, and a pool full of hanging LLM calls holds up nothing else."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from app.extensions import db
from app.models import Execution
from app.services.streams import stream_key
from tests.conftest import build_app
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client
from tests.support.fake_llm_servers import Behaviour, FakeLLMServer
from tests.support.worker import GOVERNANCE_QUEUES, WorkerProcess, llm_worker

LLM_SLOTS = 24
LLM_APP_NAME = "split-worker-llm"
TERMINAL = {"completed", "failed", "cancelled", "timed_out", "denied"}


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition", interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Split:
    """The app, both workers and a Redis client of one module's stack."""

    def __init__(self, app: Flask, redis_url: str, governance: WorkerProcess, llm: WorkerProcess) -> None:
        self.app = app
        self.redis = redis.Redis.from_url(redis_url)
        self.governance = governance
        self.llm = llm

    def events(self, execution_id: str) -> list[str]:
        return [fields[b"event"].decode() for _id, fields in self.redis.xrange(stream_key(execution_id))]


@pytest.fixture(scope="module")
def split(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    """Its own vhost, so the session's all-queues worker never takes these tasks."""
    logs = tmp_path_factory.mktemp("split")
    with services.rabbitmq_vhost(f"split_{services.run_token()}") as vhost_url:
        app = build_app(pg_url, vhost_url, redis_url)
        urls = {"database_url": pg_url, "broker_url": vhost_url, "redis_url": redis_url}
        governance = WorkerProcess(**urls, log_path=logs / "worker.log", concurrency=2,
                                   queues=GOVERNANCE_QUEUES).start()
        # Named in pg_stat_activity, so a test can look at the LLM worker's own sessions.
        llm = llm_worker(**{**urls, "database_url": f"{pg_url}?application_name={LLM_APP_NAME}"},
                         log_path=logs / "llm-worker.log", concurrency=LLM_SLOTS).start()
        try:
            yield Split(app, redis_url, governance, llm)
        finally:
            llm.stop()
            governance.stop()


@pytest.fixture
def sapi(split: Split) -> ApiClient:
    return new_workspace_client(split.app)


def execute(api: ApiClient, agent_id: str, **body: Any) -> str:
    response = api.post(f"/agents/{agent_id}/execute", json={"message": "hello", **body})
    assert response.status_code == 200, response.get_json()
    execution_id: str = response.get_json()["execution_id"]
    return execution_id


def row(api: ApiClient, execution_id: str) -> dict[str, Any]:
    found: dict[str, Any] = api.get(f"/executions/{execution_id}").get_json()
    return found


def wait_status(api: ApiClient, execution_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
    wanted = set(statuses) or TERMINAL
    found: dict[str, Any] = wait_for(lambda: (r := row(api, execution_id))["status"] in wanted and r, timeout,
                                     f"{execution_id} to reach {sorted(wanted)}")
    return found


def openai_agent(api: ApiClient, fake: FakeLLMServer) -> dict[str, Any]:
    credential = api.post("/credentials", json={"provider": "openai", "api_key": "sk-test-" + uuid.uuid4().hex,
                                                "base_url": fake.openai_base_url}).get_json()
    return api.create_agent(llm={"provider": "openai", "model": "fake-1", "credential_id": credential["id"]})


def test_each_step_runs_on_its_pool_and_sends_task_events(split: Split, sapi: ApiClient) -> None:
    """Flower builds its view from task events: the threads worker must send them too, batched or not."""
    events: list[dict[str, Any]] = []
    celery_app = split.app.extensions["celery"]
    listening, stop = threading.Event(), threading.Event()

    def capture() -> None:
        with celery_app.connection_for_read() as connection:
            receiver = celery_app.events.Receiver(connection, handlers={"*": events.append})
            # Each step of the loop is one event or one idle second; the first comes once the queue is bound.
            for _ in receiver.itercapture(limit=None, timeout=None, wakeup=False):
                listening.set()
                if stop.is_set():
                    return

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    assert listening.wait(15)
    agent = sapi.create_agent(llm={"provider": "scripted", "options": {"text": "split pools"}})
    execution_id = execute(sapi, agent["id"])
    assert wait_status(sapi, execution_id)["output"] == "split pools"
    with split.app.app_context():
        task_ids = list(db.session.get(Execution, execution_id).task_ids or [])
    assert len(task_ids) == 3

    def kinds(task_id: str) -> set[str]:
        return {str(event["type"]) for event in list(events) if event.get("uuid") == task_id}

    wait_for(lambda: all({"task-received", "task-started", "task-succeeded"} <= kinds(task_id) for task_id in task_ids),
             10, "received, started and succeeded events for each of the three steps")
    stop.set()
    thread.join(5)
    by_task = {event["uuid"]: event for event in events if event["type"] == "task-received"}
    governance_host, llm_host = split.governance.name.split("@")[0], split.llm.name.split("@")[0]
    assert [str(by_task[task_id]["hostname"]).split("@")[0] for task_id in task_ids] == [
        governance_host, llm_host, governance_host]
    # Flower lists a step by its execution: the arguments shown name it, and hold no prompt or reply.
    assert by_task[task_ids[0]]["args"] == repr((execution_id,))
    for task_id in task_ids[1:]:
        assert by_task[task_id]["args"] == "({'execution_id': " + repr(execution_id) + ", ...},)"
    assert not any(event["type"] == "task-sent" for event in events)  # Flower shows a task from task-received on
    assert "executions.llm[" in split.llm.log() and "executions.governance[" not in split.llm.log()
    assert "executions.llm[" not in split.governance.log()


def test_cancel_stops_an_http_stream_within_one_chunk(split: Split, sapi: ApiClient) -> None:
    with FakeLLMServer() as fake:
        fake.behave(Behaviour(chunks=[f"c{i} " for i in range(100)], chunk_delay_s=0.2))
        agent = openai_agent(sapi, fake)
        execution_id = execute(sapi, agent["id"])
        wait_for(lambda: split.events(execution_id).count("delta") >= 2, what="two deltas")
        at_cancel = split.events(execution_id).count("delta")
        assert sapi.post(f"/executions/{execution_id}/cancel").status_code == 202
        ended = wait_status(sapi, execution_id, timeout=10)
        assert ended["status"] == "cancelled"
        assert split.events(execution_id).count("delta") - at_cancel <= 1
        assert fake.wait_for_outcome() != "open"  # the upstream connection was closed, not left streaming


def test_cancel_stops_a_hanging_call_within_the_poll_interval(split: Split, sapi: ApiClient) -> None:
    agent = sapi.create_agent(llm={"provider": "scripted", "options": {"text": "never", "hang_s": 60}})
    execution_id = execute(sapi, agent["id"])
    wait_status(sapi, execution_id, "running")
    asked = time.monotonic()
    assert sapi.post(f"/executions/{execution_id}/cancel").status_code == 202
    assert wait_status(sapi, execution_id, timeout=10)["status"] == "cancelled"
    assert time.monotonic() - asked < 3.0  # LLM_STOP_POLL_S=0.25, plus the persist step on the other worker


def test_timeout_ends_a_stalled_http_call_timed_out(split: Split, sapi: ApiClient) -> None:
    with FakeLLMServer() as fake:
        fake.behave(Behaviour(stall_before_headers_s=30))
        agent = openai_agent(sapi, fake)
        started = time.monotonic()
        execution_id = execute(sapi, agent["id"], timeout_s=1)
        ended = wait_status(sapi, execution_id, timeout=15)
        assert ended["status"] == "timed_out" and ended["error"]["code"] == "timeout"
        assert time.monotonic() - started < 6
        assert split.events(execution_id)[-1] == "timed_out"


def test_a_pool_full_of_hanging_calls_holds_up_neither_governance_nor_persistence(
    split: Split, sapi: ApiClient
) -> None:
    short = sapi.create_agent(llm={"provider": "scripted", "options": {"chunks": ["a ", "b ", "c "],
                                                                        "chunk_delay_ms": 700}})
    hanging = sapi.create_agent(llm={"provider": "scripted", "options": {"text": "never", "hang_s": 120}})
    reviewed = sapi.create_agent(maturity_level="INTERN", llm={"provider": "scripted"})
    quick = execute(sapi, short["id"])
    wait_for(lambda: "delta" in split.events(quick), what="the short call streaming")
    # Every other LLM slot hangs, and more hanging calls wait behind them on the LLM queue.
    hung = [execute(sapi, hanging["id"], timeout_s=300) for _ in range(LLM_SLOTS + 6)]
    try:
        wait_for(lambda: sum(row(sapi, e)["status"] == "running" for e in hung) >= LLM_SLOTS - 1, 30,
                 "the LLM pool full of hanging calls", interval=0.2)
        # Persistence: the short call's persist step runs at once, on the prefork worker.
        assert wait_status(sapi, quick, timeout=10)["output"] == "a b c "
        # Governance in the worker: approved, but the agent lost its maturity meanwhile -> denied, promptly.
        pending_review = execute(sapi, reviewed["id"], action="create")
        assert row(sapi, pending_review)["status"] == "awaiting_approval"
        assert sapi.patch(f"/agents/{reviewed['id']}", json={"maturity_level": "STUDENT"}).status_code == 200
        approved_at = time.monotonic()
        assert sapi.post(f"/executions/{pending_review}/approve").status_code in (200, 202)
        assert wait_status(sapi, pending_review, timeout=10)["status"] == "denied"
        assert time.monotonic() - approved_at < 5
        assert all(row(sapi, e)["status"] in ("running", "pending") for e in hung)
    finally:
        for execution_id in hung:
            sapi.post(f"/executions/{execution_id}/cancel")
    # Cancel works for every one of them, running or still queued behind the full pool.
    wait_for(lambda: all(row(sapi, e)["status"] == "cancelled" for e in hung), 60, "every hanging call cancelled",
             interval=0.2)


def test_the_llm_step_holds_no_database_transaction_while_streaming(split: Split, sapi: ApiClient,
                                                                   pg_url: str) -> None:
    """With a call hanging in every slot, the LLM worker does no database work at all: none of its sessions is
    inside a transaction, and it holds no more connections than its pool."""
    import psycopg

    hanging = sapi.create_agent(llm={"provider": "scripted", "options": {"text": "never", "hang_s": 60}})
    hung = [execute(sapi, hanging["id"]) for _ in range(LLM_SLOTS)]
    samples: list[tuple[int, int]] = []
    try:
        wait_for(lambda: all(row(sapi, e)["status"] == "running" for e in hung), 30, "every slot streaming",
                 interval=0.2)
        with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as conn:

            def sample() -> bool:
                found = conn.execute(
                    "SELECT count(*) FILTER (WHERE state = 'idle in transaction'), count(*) FROM pg_stat_activity "
                    "WHERE application_name = %s", (LLM_APP_NAME,)).fetchone()
                assert found is not None
                samples.append((int(found[0]), int(found[1])))
                return len(samples) >= 30

            wait_for(sample, 10, "30 samples of the LLM worker's sessions", interval=0.05)
    finally:
        for execution_id in hung:
            sapi.post(f"/executions/{execution_id}/cancel")
    assert max(in_tx for in_tx, _total in samples) == 0
    assert max(total for _in_tx, total in samples) <= 20  # LLM_WORKER_ENV: DATABASE_POOL_SIZE 10 + overflow 10
    wait_for(lambda: all(row(sapi, e)["status"] == "cancelled" for e in hung), 30, "every hanging call cancelled",
             interval=0.2)
