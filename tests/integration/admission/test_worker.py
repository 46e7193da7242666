"""Admission end to end through the session's real worker (PostgreSQL, RabbitMQ, Redis) and a loopback provider:
slots hold, waiting executions start when a slot frees (none fails), waits end timed_out after wait_timeout_s,
a 429's Retry-After is honoured without using up attempts and pauses the whole credential."""

from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from app.services import admission
from tests.support.api import ApiClient, new_workspace_client
from tests.support.fake_llm_servers import Behaviour, FakeLLMServer
from tests.support.polling import wait_for
from tests.support.worker import WorkerProcess

TERMINAL = {"completed", "failed", "cancelled", "timed_out", "denied"}
KEY = "sk-admission-" + uuid.uuid4().hex[:12]


def run(api: ApiClient, agent_id: str, **body: Any) -> str:
    response = api.post(f"/agents/{agent_id}/execute", json={"message": "hello there", **body})
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["execution_id"])


def ended(api: ApiClient, execution_ids: list[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    def all_ended() -> list[dict[str, Any]] | None:
        rows = [api.get(f"/executions/{i}").get_json() for i in execution_ids]
        return rows if all(r["status"] in TERMINAL for r in rows) else None

    rows: list[dict[str, Any]] = wait_for(all_ended, timeout, f"{len(execution_ids)} executions to end")
    return rows


def most_at_once(rows: list[dict[str, Any]]) -> int:
    """The most executions whose [started_at, finished_at] overlap."""
    edges = sorted([(r["started_at"], 1) for r in rows] + [(r["finished_at"], -1) for r in rows],
                   key=lambda e: (e[0], e[1]))
    best = current = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


@pytest.fixture
def named(pg_app: Flask, worker: WorkerProcess) -> tuple[ApiClient, str]:
    name = f"ws-{uuid.uuid4().hex[:12]}"
    return new_workspace_client(pg_app, name), name


@pytest.fixture
def fake() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(api_key=KEY) as server:
        yield server


def limit_workspace(app: Flask, name: str, *args: str) -> None:
    result = app.test_cli_runner().invoke(args=["workspaces", "limits", name, *args])
    assert result.exit_code == 0, result.output


def live_slots(app: Flask, key: str) -> int:
    with app.app_context():
        return admission.state().live_count(key, now_ms=admission.service.now_ms())


def openai_agent(api: ApiClient, fake: FakeLLMServer, **limits: int) -> dict[str, Any]:
    credential = api.post("/credentials", json={"provider": "openai", "api_key": KEY,
                                                "base_url": fake.openai_base_url, "limits": limits})
    assert credential.status_code == 201, credential.get_json()
    return api.create_agent(llm={"provider": "openai", "credential_id": credential.get_json()["id"]})


def test_workspace_concurrency_holds_and_every_waiting_execution_completes(
        pg_app: Flask, named: tuple[ApiClient, str]) -> None:
    api, name = named
    limit_workspace(pg_app, name, "--max-concurrency", "1")
    agent = api.create_agent(llm={"provider": "scripted",
                                  "options": {"text": "one two three four", "chunk_delay_ms": 80}})
    ids = [run(api, agent["id"]) for _ in range(5)]
    waiting = [api.get(f"/executions/{i}").get_json()["queued"] for i in ids[1:]]
    assert {"reason": "workspace_concurrency"} in waiting
    rows = ended(api, ids)
    assert [r["status"] for r in rows] == ["completed"] * 5
    assert most_at_once(rows) == 1  # the session worker has 2 processes: without the limit, 2 would overlap
    wait_for(lambda: live_slots(pg_app, f"adm:slots:ws:{api.workspace_id}") == 0, 10, "slots freed")


def test_credential_concurrency_is_what_the_provider_sees(
        pg_app: Flask, named: tuple[ApiClient, str], fake: FakeLLMServer) -> None:
    api, _ = named
    other = new_workspace_client(pg_app)
    fake.behave(Behaviour(chunks=["a", "b", "c", "d"], chunk_delay_s=0.1))
    agent = openai_agent(api, fake, max_concurrency=1)
    ids = [run(api, agent["id"]) for _ in range(4)]
    other_agent = other.create_agent()  # another workspace, no credential: not held back by it
    other_id = run(other, other_agent["id"])
    assert ended(other, [other_id], timeout=20)[0]["status"] == "completed"
    rows = ended(api, ids)
    assert [r["status"] for r in rows] == ["completed"] * 4
    assert len(fake.requests) == 4 and fake.max_in_flight == 1


def test_a_wait_past_wait_timeout_s_ends_timed_out(pg_app: Flask, named: tuple[ApiClient, str]) -> None:
    api, name = named
    limit_workspace(pg_app, name, "--max-concurrency", "1")
    hanging = api.create_agent(llm={"provider": "scripted", "options": {"hang_s": 60}})
    first = run(api, hanging["id"])
    pg_app.config["EXECUTION_WAIT_TIMEOUT_S"] = 0.5
    try:
        second = run(api, hanging["id"])
    finally:
        pg_app.config["EXECUTION_WAIT_TIMEOUT_S"] = 3600.0
    row = ended(api, [second], timeout=20)[0]
    assert row["status"] == "timed_out" and row["error"]["code"] == "wait_timeout"
    assert row["started_at"] is None
    api.post(f"/executions/{first}/cancel")
    assert ended(api, [first])[0]["status"] == "cancelled"


@pytest.mark.parametrize("retry_after", ["0.4", "date"])
def test_429s_honour_retry_after_without_using_up_attempts(
        named: tuple[ApiClient, str], fake: FakeLLMServer, retry_after: str) -> None:
    api, _ = named
    header = email.utils.formatdate(time.time() + 4, usegmt=True) if retry_after == "date" else retry_after
    fake.behave(*[Behaviour(status=429, retry_after=header)] * (1 if retry_after == "date" else 5),
                Behaviour(chunks=["fine", " now"]))
    agent = openai_agent(api, fake)
    row = ended(api, [run(api, agent["id"], timeout_s=30)])[0]
    assert row["status"] == "completed" and row["output"] == "fine now"
    assert row["attempts"] == 1  # LLM_MAX_ATTEMPTS is 4; five 429s used none of them
    if retry_after == "date":  # the retry comes no earlier than the date the provider named
        not_before = email.utils.parsedate_to_datetime(header).timestamp()
        assert fake.requests[1].at >= not_before, fake.requests[1].at - not_before
    else:
        gaps = [b.at - a.at for a, b in zip(fake.requests, fake.requests[1:], strict=False)]
        assert all(gap >= 0.4 for gap in gaps), gaps


def test_a_429_slows_every_execution_on_the_credential(named: tuple[ApiClient, str], fake: FakeLLMServer) -> None:
    api, _ = named
    fake.behave(Behaviour(status=429, retry_after="1.5"), Behaviour(chunks=["ok"]))
    agent = openai_agent(api, fake)
    first = run(api, agent["id"])
    wait_for(lambda: fake.requests, 20, "the first request")
    paused_at = fake.requests[0].at
    later = [run(api, agent["id"]) for _ in range(3)]
    rows = ended(api, [first, *later])
    assert [r["status"] for r in rows] == ["completed"] * 4
    assert all(r.at >= paused_at + 1.5 for r in fake.requests[1:]), [r.at - paused_at for r in fake.requests]


def test_max_tokens_reaches_the_provider(named: tuple[ApiClient, str], fake: FakeLLMServer) -> None:
    api, _ = named
    agent = openai_agent(api, fake)
    assert ended(api, [run(api, agent["id"], max_tokens=7)])[0]["status"] == "completed"
    assert fake.requests[-1].body["max_tokens"] == 7
    scripted = api.create_agent(llm={"provider": "scripted", "options": {"text": "a b c d e f"}})
    row = ended(api, [run(api, scripted["id"], max_tokens=2)])[0]
    assert row["output"] == "a b" and row["usage"]["completion_tokens"] == 2


def test_a_paused_tool_loop_holds_no_slot(pg_app: Flask, named: tuple[ApiClient, str]) -> None:
    """max_concurrency 1: a loop paused for its client's answer frees the slot, so the workspace's next execution
    runs meanwhile; the loop's next turn is admitted anew when it resumes, and completes."""
    api, name = named
    limit_workspace(pg_app, name, "--max-concurrency", "1")
    call = f"call_{uuid.uuid4().hex[:12]}"
    looping = api.create_agent(maturity_level="AUTONOMOUS", tools=[{"name": "confirm", "action": "chat",
                                                                     "kind": "client"}],
                               llm={"provider": "scripted", "options": {"turns": [
                                   {"tool_calls": [{"name": "confirm", "arguments": {}, "id": call}]},
                                   {"text": "confirmed"}]}})
    paused = run(api, looping["id"])
    wait_for(lambda: api.get(f"/executions/{paused}").get_json()["status"] == "requires_action", 30, "the pause")
    other = run(api, api.create_agent()["id"])
    assert ended(api, [other])[0]["status"] == "completed"  # it did not wait for the paused one's slot
    answered = api.post(f"/executions/{paused}/tool_outputs",
                        json={"tool_outputs": [{"tool_call_id": call, "output": "yes"}]})
    assert answered.status_code == 200, answered.get_json()
    (row,) = ended(api, [paused])
    assert row["status"] == "completed" and row["output"] == "confirmed"
    wait_for(lambda: live_slots(pg_app, f"adm:slots:ws:{api.workspace_id}") == 0, 10, "slots freed")
