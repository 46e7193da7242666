"""Executions end to end: API -> RabbitMQ -> a real prefork Celery worker -> Redis Stream -> SSE, on PostgreSQL.

Nothing here runs eagerly: every execution goes through the session's worker subprocess (conftest.py), and
tests wait by polling the API or Redis against a deadline.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from app.services.streams import stream_key
from tests.conftest import build_app
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client
from tests.support.fake_llm_servers import Behaviour, FakeLLMServer
from tests.support.sse import SseEvent, heartbeats, iter_events, parse, text_of
from tests.support.tools import call_id, client_tool, tool_agent, webhook_tool
from tests.support.webhook_receiver import WebhookReceiver
from tests.support.worker import WorkerProcess

TERMINAL = {"completed", "failed", "cancelled", "timed_out", "denied"}
SECRET = "sk-test-" + uuid.uuid4().hex


# --- helpers --------------------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def execute(api: ApiClient, agent_id: str, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    response = api.post(f"/agents/{agent_id}/execute", json={"message": "hello", **body}, headers=headers)
    assert response.status_code == 200, response.get_json()
    data: dict[str, Any] = response.get_json()
    return data


def get(api: ApiClient, execution_id: str) -> dict[str, Any]:
    response = api.get(f"/executions/{execution_id}")
    assert response.status_code == 200, response.get_json()
    data: dict[str, Any] = response.get_json()
    return data


def wait_status(api: ApiClient, execution_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
    wanted = set(statuses) or TERMINAL
    found: dict[str, Any] = wait_for(
        lambda: (row := get(api, execution_id)) and row["status"] in wanted and row,
        timeout, f"execution {execution_id} to reach {sorted(wanted)}",
    )
    return found


def events(api: ApiClient, execution_id: str, **kwargs: Any) -> list[SseEvent]:
    """The whole event stream (returns once the server closed it after the terminal event)."""
    response = api.get(f"/executions/{execution_id}/events", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    return parse(response.get_data(as_text=True))


def audit_actions(api: ApiClient, execution_id: str) -> list[str]:
    rows = api.get("/audit", query_string={"execution_id": execution_id, "limit": 200}).get_json()["items"]
    return [row["action"] for row in sorted(rows, key=lambda row: row["id"])]


def assert_well_formed(stream: list[SseEvent]) -> None:
    """Ids 1, 2, 3 ... with no gap or repeat, exactly one terminal event, and it is last."""
    assert [event.id for event in stream] == list(range(1, len(stream) + 1))
    assert [event.event for event in stream if event.event in TERMINAL] == [stream[-1].event]


def scripted(api: ApiClient, maturity: str = "AUTONOMOUS", **options: Any) -> dict[str, Any]:
    return api.create_agent(maturity_level=maturity, llm={"provider": "scripted", "options": options})


# --- the seed's tests ---------------------------------------------------------------------------------------


def test_agent_execution_end_to_end(wapi: ApiClient) -> None:
    agent = scripted(wapi, text="The quick brown fox jumps.")
    accepted = execute(wapi, agent["id"], message="tell me", metadata={"ticket": 7})
    assert accepted["status"] == "pending"
    assert accepted["agent_id"] == agent["id"]
    assert accepted["stream_url"] == f"/executions/{accepted['execution_id']}/events"
    assert accepted["created_at"].endswith("Z")

    execution = wait_status(wapi, accepted["execution_id"], "completed")
    assert execution["output"] == "The quick brown fox jumps."
    assert execution["message"] == "tell me"
    assert execution["metadata"] == {"ticket": 7}
    assert execution["error"] is None
    assert execution["attempts"] == 1
    assert execution["usage"] == {"prompt_tokens": 2, "completion_tokens": 5}
    assert [step["name"] for step in execution["steps"]] == ["governance", "llm", "persist"]
    assert all(step["status"] == "completed" and step["started_at"] <= step["finished_at"]
               for step in execution["steps"])
    assert execution["created_at"] <= execution["started_at"] <= execution["finished_at"]

    stream = events(wapi, accepted["execution_id"])
    assert_well_formed(stream)
    assert [event.event for event in stream[:2]] == ["status", "status"]
    assert [event.data["status"] for event in stream[:2]] == ["pending", "running"]
    assert text_of(stream) == "The quick brown fox jumps."
    assert stream[-1].data["output"] == "The quick brown fox jumps."

    listed = wapi.get(f"/agents/{agent['id']}/executions").get_json()
    assert [item["execution_id"] for item in listed["items"]] == [accepted["execution_id"]]
    assert wapi.get(f"/agents/{agent['id']}/executions", query_string={"status": "failed"}).get_json()["items"] == []


def test_execution_list_pages_and_filters(wapi: ApiClient) -> None:
    agent = scripted(wapi)
    ids = [execute(wapi, agent["id"], message=f"m{i}")["execution_id"] for i in range(5)]
    for execution_id in ids:
        wait_status(wapi, execution_id, "completed")
    seen: list[str] = []
    cursor = None
    while True:
        page = wapi.get(f"/agents/{agent['id']}/executions",
                        query_string={"limit": 2, "status": "completed", **({"cursor": cursor} if cursor else {})})
        body = page.get_json()
        seen += [item["execution_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    bad = wapi.get(f"/agents/{agent['id']}/executions", query_string={"status": "bogus"})
    assert bad.status_code == 422


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "x" * 32769}, "message"),
        ({"message": "hi", "timeout_s": 0}, "timeout_s"),
        ({"message": "hi", "timeout_s": 100000}, "timeout_s"),
        ({"message": "hi", "stream": "yes"}, "stream"),
        ({"message": "hi", "metadata": ["not", "an", "object"]}, "metadata"),
        ({"message": "hi", "action": ""}, "action"),
        ({"message": "hi", "surprise": 1}, "surprise"),
        ({}, "message"),
    ],
)
def test_execute_rejects_bad_input(wapi: ApiClient, body: dict[str, Any], field: str) -> None:
    agent = scripted(wapi)
    response = wapi.post(f"/agents/{agent['id']}/execute", json=body)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "validation_error"
    assert field in {loc for err in error["details"]["errors"] for loc in err["loc"]}
    assert wapi.get(f"/agents/{agent['id']}/executions").get_json()["items"] == []


def test_execution_error_handling(wapi: ApiClient) -> None:
    agent = scripted(wapi)
    path = f"/agents/{agent['id']}/execute"
    # Malformed requests change nothing.
    assert wapi.post(path, data="{nope", headers={"Content-Type": "application/json"}).status_code == 400
    assert wapi.post(path, data="message=hi", headers={"Content-Type": "text/plain"}).status_code == 415
    assert wapi.post("/agents/does-not-exist/execute", json={"message": "hi"}).status_code == 404
    assert wapi.get(f"/executions/{uuid.uuid4()}").get_json()["error"]["code"] == "not_found"
    assert wapi.get(f"/agents/{agent['id']}/executions").get_json()["items"] == []

    # Options the provider cannot take are a 422 before anything is recorded.
    broken = wapi.create_agent(llm={"provider": "scripted", "options": {"temperature_typo": 1}})
    response = wapi.post(f"/agents/{broken['id']}/execute", json={"message": "hi"})
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["details"]["field"] == "temperature_typo"

    # A fatal provider error fails the execution with its code; the partial output is kept.
    fatal = scripted(wapi, chunks=["one ", "two ", "three"], fail_at_chunk=2, fail_mode="fatal")
    failed = wait_status(wapi, execute(wapi, fatal["id"])["execution_id"], "failed")
    assert failed["error"]["code"] == "scripted_failure"
    assert failed["output"] == "one two "
    assert failed["attempts"] == 1
    assert [step["status"] for step in failed["steps"]] == ["completed", "failed", "completed"]
    stream = events(wapi, failed["execution_id"])
    assert_well_formed(stream)
    assert stream[-1].event == "failed"
    assert stream[-1].data["error"]["code"] == "scripted_failure"

    # A transient error is retried (reset event, attempts 2) and then succeeds.
    flaky = scripted(wapi, chunks=["a", "b", "c"], fail_at_chunk=1, fail_mode="transient")
    retried = wait_status(wapi, execute(wapi, flaky["id"])["execution_id"], "completed")
    assert retried["output"] == "abc"
    assert retried["attempts"] == 2
    stream = events(wapi, retried["execution_id"])
    assert_well_formed(stream)
    assert [event.data for event in stream if event.event == "reset"] == [{"attempt": 2}]
    assert text_of(stream) == "abc"
    assert audit_actions(wapi, retried["execution_id"]).count("llm.retried") == 1

    # Transient on every attempt: gives up after LLM_MAX_ATTEMPTS (4).
    hopeless = scripted(wapi, text="never", fail_mode="transient", fail_attempts=99)
    exhausted = wait_status(wapi, execute(wapi, hopeless["id"])["execution_id"], "failed")
    assert exhausted["attempts"] == 4
    assert "after 4 attempts" in exhausted["error"]["message"]
    actions = audit_actions(wapi, exhausted["execution_id"])
    assert actions.count("llm.retried") == 3
    assert actions[-2:] == ["llm.failed", "execution.failed"]


def test_audit_logging(wapi: ApiClient) -> None:
    agent = scripted(wapi, text="logged")
    execution_id = execute(wapi, agent["id"])["execution_id"]
    wait_status(wapi, execution_id, "completed")
    assert audit_actions(wapi, execution_id) == [
        "execution.requested", "governance.allowed", "llm.started", "llm.completed", "execution.completed",
    ]
    rows = wapi.get("/audit", query_string={"execution_id": execution_id}).get_json()["items"]
    assert {row["agent_id"] for row in rows} == {agent["id"]}
    assert {row["result"] for row in rows} == {"ok"}
    completed = next(row for row in rows if row["action"] == "llm.completed")
    assert completed["details"]["usage"] == {"prompt_tokens": 1, "completion_tokens": 1}
    assert {row["actor"] for row in rows if row["action"].startswith(("llm.", "execution.completed"))} == {"worker"}
    verify = wapi.get("/audit/verify").get_json()
    assert verify["ok"] is True and verify["first_bad_id"] is None


def test_streaming_response(wapi: ApiClient) -> None:
    agent = scripted(wapi, chunks=["Hel", "lo", ", ", "world"])
    response = wapi.post(f"/agents/{agent['id']}/execute", json={"message": "hi", "stream": True})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    execution_id = response.headers["X-Execution-Id"]
    stream = parse(response.get_data(as_text=True))
    assert_well_formed(stream)
    assert stream[0].event == "status"
    assert stream[0].data == {"execution_id": execution_id, "status": "pending"}
    assert [event.data["text"] for event in stream if event.event == "delta"] == ["Hel", "lo", ", ", "world"]
    assert stream[-1].event == "completed"
    assert get(wapi, execution_id)["status"] == "completed"
    # A finished execution replays the same events and closes.
    assert events(wapi, execution_id) == stream


# --- resume, heartbeats, replay from the database ------------------------------------------------------------


def read_some(api: ApiClient, path: str, count: int, headers: dict[str, str] | None = None) -> list[SseEvent]:
    """Read `count` events of a live stream, then disconnect like a client whose network dropped."""
    response = api.get(path, headers=headers, buffered=False)
    assert response.status_code == 200
    chunks: Iterator[bytes] = iter(response.response)  # type: ignore[arg-type]
    got: list[SseEvent] = []
    for event in iter_events(chunks):
        got.append(event)
        if len(got) == count:
            break
    response.close()
    return got


def test_resume_with_last_event_id_and_after(wapi: ApiClient) -> None:
    words = [f"w{i} " for i in range(12)]
    agent = scripted(wapi, chunks=words, chunk_delay_ms=40)
    execution_id = execute(wapi, agent["id"])["execution_id"]
    path = f"/executions/{execution_id}/events"

    first = read_some(wapi, path, 4)
    assert [event.id for event in first] == [1, 2, 3, 4]
    rest = events(wapi, execution_id, headers={"Last-Event-ID": str(first[-1].id)})
    whole = first + rest
    assert_well_formed(whole)
    assert text_of(whole) == "".join(words)

    # ?after= does the same (and wins over the header); a replay of a finished execution too.
    assert events(wapi, execution_id, query_string={"after": 6}, headers={"Last-Event-ID": "2"}) == whole[6:]
    assert events(wapi, execution_id, query_string={"after": whole[-1].id}) == []
    for bad in ("abc", "-1", "1.5"):
        response = wapi.get(path, query_string={"after": bad})
        assert response.status_code == 422
        assert response.get_json()["error"]["code"] == "validation_error"


def test_heartbeats_while_waiting(wapi: ApiClient, pg_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pg_app.config, "SSE_HEARTBEAT_S", 0.2)
    agent = scripted(wapi, text="late", hang_s=1.0)
    execution_id = execute(wapi, agent["id"])["execution_id"]
    response = wapi.get(f"/executions/{execution_id}/events")
    text = response.get_data(as_text=True)
    assert heartbeats(text) >= 2
    assert parse(text)[-1].event == "completed"


def test_replay_from_database_when_stream_expired(wapi: ApiClient, redis_url: str) -> None:
    agent = scripted(wapi, text="kept in the row")
    execution_id = execute(wapi, agent["id"])["execution_id"]
    wait_status(wapi, execution_id, "completed")
    client = redis.Redis.from_url(redis_url)
    client.delete(*client.keys(f"exec:{execution_id}:*"))
    assert not client.exists(stream_key(execution_id))
    stream = events(wapi, execution_id)
    assert [event.event for event in stream] == ["status", "delta", "completed"]
    assert_well_formed(stream)
    assert text_of(stream) == "kept in the row"
    assert [event.event for event in events(wapi, execution_id, query_string={"after": 1})] == ["delta", "completed"]


# --- cancel and timeout -------------------------------------------------------------------------------------


def stored_events(redis_url: str, execution_id: str) -> list[str]:
    """Event types in the execution's Redis Stream, read directly (no API)."""
    entries = redis.Redis.from_url(redis_url).xrange(stream_key(execution_id))
    return [fields[b"event"].decode() for _id, fields in entries]


def test_cancel_running_execution_stops_within_a_chunk(wapi: ApiClient, redis_url: str) -> None:
    agent = scripted(wapi, chunks=[f"c{i} " for i in range(100)], chunk_delay_ms=100)
    execution_id = execute(wapi, agent["id"])["execution_id"]
    wait_for(lambda: "delta" in stored_events(redis_url, execution_id), what="the first delta")
    asked = time.monotonic()
    response = wapi.post(f"/executions/{execution_id}/cancel")
    assert response.status_code == 202
    assert response.get_json()["cancel_requested"] is True
    cancelled = wait_status(wapi, execution_id, "cancelled", "completed", timeout=10)
    assert cancelled["status"] == "cancelled"
    assert time.monotonic() - asked < 2.0
    assert len(cancelled["output"]) < len("".join(f"c{i} " for i in range(100)))
    stream = events(wapi, execution_id)
    assert_well_formed(stream)
    assert stream[-1].event == "cancelled"
    assert text_of(stream) == cancelled["output"]
    assert audit_actions(wapi, execution_id).count("execution.cancelled") == 1
    again = wapi.post(f"/executions/{execution_id}/cancel")
    assert again.status_code == 409


def test_cancel_before_it_runs(wapi: ApiClient) -> None:
    agent = scripted(wapi, maturity="INTERN")
    execution_id = execute(wapi, agent["id"], action="create")["execution_id"]  # needs approval
    assert get(wapi, execution_id)["status"] == "awaiting_approval"
    assert wapi.post(f"/executions/{execution_id}/cancel").status_code == 202
    assert get(wapi, execution_id)["status"] == "cancelled"
    assert [event.event for event in events(wapi, execution_id)] == ["status", "cancelled"]
    assert wapi.post(f"/executions/{execution_id}/approve").status_code == 409


def test_timeout_ends_timed_out(wapi: ApiClient) -> None:
    agent = scripted(wapi, text="too late", hang_s=30)
    started = time.monotonic()
    execution_id = execute(wapi, agent["id"], timeout_s=1)["execution_id"]
    timed_out = wait_status(wapi, execution_id, "timed_out", timeout=10)
    assert time.monotonic() - started < 5
    assert timed_out["error"]["code"] == "timeout"
    stream = events(wapi, execution_id)
    assert_well_formed(stream)
    assert stream[-1].event == "timed_out"
    assert audit_actions(wapi, execution_id)[-1] == "execution.timed_out"


def test_a_step_that_fails_for_good_ends_the_execution_failed(wapi: ApiClient, pg_app: Flask, redis_url: str) -> None:
    """Not stranded `running`: a persist message the step cannot use (as a bug would) fails the execution once."""
    agent = scripted(wapi, text="never sent", hang_s=30)
    execution_id = execute(wapi, agent["id"], timeout_s=60)["execution_id"]
    wait_status(wapi, execution_id, "running")
    run = wait_for(lambda: redis.Redis.from_url(redis_url).get(f"exec:{execution_id}:run"), what="the LLM lease")
    # From the run that holds the lease, but with no outcome in it: the step raises KeyError.
    pg_app.extensions["celery"].send_task("executions.persist", args=[{"execution_id": execution_id,
                                                                        "run": run.decode()}])
    failed = wait_status(wapi, execution_id, timeout=20)
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "internal_error", "message": "the persist step failed (KeyError)"}
    stream = events(wapi, execution_id)
    assert_well_formed(stream)
    assert stream[-1].event == "failed"
    actions = audit_actions(wapi, execution_id)
    assert actions.count("execution.failed") == 1 and actions[-1] == "execution.failed"
    assert "execution.completed" not in actions


# --- governance and approval --------------------------------------------------------------------------------


def test_governance_denied_is_recorded(wapi: ApiClient) -> None:
    agent = scripted(wapi, maturity="STUDENT")
    response = wapi.post(f"/agents/{agent['id']}/execute", json={"message": "drop it", "action": "delete"})
    assert response.status_code == 403
    error = response.get_json()["error"]
    assert error["code"] == "governance_denied"
    execution_id = error["details"]["execution_id"]
    assert "AUTONOMOUS" in error["details"]["reason"]
    execution = get(wapi, execution_id)
    assert execution["status"] == "denied"
    assert execution["error"]["code"] == "governance_denied"
    assert audit_actions(wapi, execution_id) == ["execution.requested", "governance.denied"]
    rows = wapi.get("/audit", query_string={"execution_id": execution_id}).get_json()["items"]
    assert next(row for row in rows if row["action"] == "governance.denied")["result"] == "denied"
    assert [event.event for event in events(wapi, execution_id)] == ["status", "denied"]

    paused = wapi.create_agent(maturity_level="AUTONOMOUS")
    wapi.patch(f"/agents/{paused['id']}", json={"status": "paused"})
    assert wapi.post(f"/agents/{paused['id']}/execute", json={"message": "hi"}).status_code == 403


def test_approval_then_approve_twice(wapi: ApiClient) -> None:
    agent = scripted(wapi, maturity="INTERN", text="approved work")
    accepted = execute(wapi, agent["id"], action="send_email")
    execution_id = accepted["execution_id"]
    assert accepted["status"] == "awaiting_approval"
    response = wapi.post(f"/executions/{execution_id}/approve")
    assert response.status_code == 202
    second = wapi.post(f"/executions/{execution_id}/approve")
    assert second.status_code == 409
    assert second.get_json()["error"]["code"] == "conflict"
    done = wait_status(wapi, execution_id, "completed")
    assert done["output"] == "approved work"
    assert audit_actions(wapi, execution_id) == [
        "execution.requested", "governance.approval_required", "execution.approved",
        "llm.started", "llm.completed", "execution.completed",
    ]
    stream = events(wapi, execution_id)
    assert_well_formed(stream)
    assert [event.data.get("status") for event in stream[:3]] == ["awaiting_approval", "pending", "running"]


def test_reject_ends_denied(wapi: ApiClient) -> None:
    agent = scripted(wapi, maturity="SUPERVISED")
    execution_id = execute(wapi, agent["id"], action="update")["execution_id"]
    assert get(wapi, execution_id)["status"] == "awaiting_approval"
    assert wapi.post(f"/executions/{execution_id}/reject").status_code == 200
    rejected = get(wapi, execution_id)
    assert rejected["status"] == "denied"
    assert rejected["error"]["code"] == "rejected"
    assert wapi.post(f"/executions/{execution_id}/reject").status_code == 409
    assert wapi.post(f"/executions/{execution_id}/approve").status_code == 409
    assert audit_actions(wapi, execution_id)[-1] == "execution.rejected"
    assert [event.event for event in events(wapi, execution_id)] == ["status", "denied"]


def test_governance_rechecked_in_the_worker(wapi: ApiClient) -> None:
    agent = scripted(wapi, maturity="INTERN")
    execution_id = execute(wapi, agent["id"], action="create")["execution_id"]
    wapi.patch(f"/agents/{agent['id']}", json={"status": "paused"})  # changes while it waits
    assert wapi.post(f"/executions/{execution_id}/approve").status_code == 202
    denied = wait_status(wapi, execution_id, "denied")
    assert denied["error"]["code"] == "governance_denied"
    assert audit_actions(wapi, execution_id)[-1] == "governance.denied"
    assert events(wapi, execution_id)[-1].event == "denied"


# --- idempotency and tenancy --------------------------------------------------------------------------------


def test_idempotency_key(wapi: ApiClient) -> None:
    agent = scripted(wapi, text="once")
    key = {"Idempotency-Key": f"req-{uuid.uuid4()}"}
    first = execute(wapi, agent["id"], headers=key, message="same")
    again = execute(wapi, agent["id"], headers=key, message="same")
    assert again["execution_id"] == first["execution_id"]
    conflict = wapi.post(f"/agents/{agent['id']}/execute", json={"message": "different"}, headers=key)
    assert conflict.status_code == 409
    assert conflict.get_json()["error"]["details"]["execution_id"] == first["execution_id"]
    other = execute(wapi, agent["id"], headers={"Idempotency-Key": f"req-{uuid.uuid4()}"}, message="same")
    assert other["execution_id"] != first["execution_id"]
    wait_status(wapi, first["execution_id"], "completed")
    wait_status(wapi, other["execution_id"], "completed")
    assert execute(wapi, agent["id"], headers=key, message="same")["status"] == "completed"
    assert len(wapi.get(f"/agents/{agent['id']}/executions").get_json()["items"]) == 2
    assert audit_actions(wapi, first["execution_id"]).count("execution.requested") == 1
    too_long = wapi.post(f"/agents/{agent['id']}/execute", json={"message": "x"},
                         headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 422


def test_tenancy_other_workspace_sees_404(wapi: ApiClient, other_wapi: ApiClient) -> None:
    agent = scripted(wapi, maturity="INTERN")
    execution_id = execute(wapi, agent["id"], action="create")["execution_id"]
    for method, path in [
        ("get", f"/executions/{execution_id}"),
        ("get", f"/executions/{execution_id}/events"),
        ("get", f"/agents/{agent['id']}/executions"),
        ("post", f"/executions/{execution_id}/cancel"),
        ("post", f"/executions/{execution_id}/approve"),
        ("post", f"/executions/{execution_id}/reject"),
        ("post", f"/agents/{agent['id']}/execute"),
    ]:
        kwargs = {"json": {"message": "hi"}} if method == "post" else {}
        response = getattr(other_wapi, method)(path, **kwargs)
        assert response.status_code == 404, (path, response.get_json())
    assert get(wapi, execution_id)["status"] == "awaiting_approval"
    assert other_wapi.get("/audit", query_string={"execution_id": execution_id}).get_json()["items"] == []


# --- bring your own key, real HTTP providers ----------------------------------------------------------------


def make_credential(api: ApiClient, provider: str, base_url: str) -> dict[str, Any]:
    response = api.post("/credentials", json={"provider": provider, "api_key": SECRET, "base_url": base_url})
    assert response.status_code == 201, response.get_json()
    assert SECRET not in response.get_data(as_text=True)
    data: dict[str, Any] = response.get_json()
    assert data["last4"] == SECRET[-4:]
    assert data["provider"] == provider
    return data


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_byok_provider_end_to_end(wapi: ApiClient, worker: WorkerProcess, caplog: pytest.LogCaptureFixture,
                                  provider: str) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeLLMServer(api_key=SECRET) as fake:
        fake.behave(Behaviour(status=503), Behaviour(chunks=["Hello", ",", " world", "!"]))
        base_url = fake.openai_base_url if provider == "openai" else fake.anthropic_base_url
        credential = make_credential(wapi, provider, base_url)
        agent = wapi.create_agent(llm={"provider": provider, "model": "fake-1", "credential_id": credential["id"]})
        execution_id = execute(wapi, agent["id"])["execution_id"]
        done = wait_status(wapi, execution_id, "completed", "failed")
        assert done["status"] == "completed", done
        assert done["output"] == "Hello, world!"
        assert done["attempts"] == 2  # the 503 was retried
        assert done["usage"] == {"prompt_tokens": 12, "completion_tokens": 4}
        assert [request.body["model"] for request in fake.requests] == ["fake-1", "fake-1"]
        header = "authorization" if provider == "openai" else "x-api-key"
        assert SECRET in fake.requests[-1].headers[header]

        # A wrong key fails fatally with the upstream's message, redacted.
        wrong = wapi.post("/credentials", json={"provider": provider, "api_key": "wrong-key-123456",
                                               "base_url": base_url}).get_json()
        bad_agent = wapi.create_agent(llm={"provider": provider, "credential_id": wrong["id"]})
        failed = wait_status(wapi, execute(wapi, bad_agent["id"])["execution_id"], "failed", "completed")
        assert failed["error"]["code"] == "auth_failed"

    seen = [
        wapi.get(f"/executions/{execution_id}").get_data(as_text=True),
        wapi.get(f"/executions/{execution_id}/events").get_data(as_text=True),
        wapi.get("/audit", query_string={"limit": 200}).get_data(as_text=True),
        worker.log(),
        caplog.text,
    ]
    assert all(SECRET not in text for text in seen)
    assert any(row["action"] == "credential.created"
               for row in wapi.get("/audit", query_string={"limit": 200}).get_json()["items"])


def test_credentials_validation(wapi: ApiClient) -> None:
    for body in [
        {"provider": "openai"},
        {"provider": "openai", "api_key": "short"},
        {"provider": "nope", "api_key": "long-enough-key"},
        {"provider": "openai", "api_key": "long-enough-key", "base_url": "ftp://x"},
        {"provider": "openai", "api_key": "long-enough-key", "extra": True},
    ]:
        response = wapi.post("/credentials", json=body)
        assert response.status_code == 422, body
        assert "long-enough-key" not in response.get_data(as_text=True)
    needs_key = wapi.create_agent(llm={"provider": "openai"})
    assert wapi.post(f"/agents/{needs_key['id']}/execute", json={"message": "hi"}).status_code == 422
    foreign = wapi.create_agent(llm={"provider": "openai", "credential_id": str(uuid.uuid4())})
    assert wapi.post(f"/agents/{foreign['id']}/execute", json={"message": "hi"}).status_code == 422


# --- outages and a killed worker ----------------------------------------------------------------------------


@pytest.fixture
def restore_default_celery(pg_app: Flask) -> Iterator[None]:
    """Building another app makes its Celery instance the default; put the session's back afterwards."""
    yield
    pg_app.extensions["celery"].set_default()


def test_broker_down_answers_503_and_frees_the_key(
    wapi: ApiClient, pg_app: Flask, pg_url: str, redis_url: str, restore_default_celery: None
) -> None:
    down = build_app(pg_url, "amqp://guest:guest@127.0.0.1:1//", redis_url)
    api = ApiClient(down.test_client(), wapi.key, wapi.workspace_id)
    agent = scripted(wapi, text="after the outage")
    key = {"Idempotency-Key": f"outage-{uuid.uuid4()}"}
    response = api.post(f"/agents/{agent['id']}/execute", json={"message": "hi"}, headers=key)
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "unavailable"
    lost = get(wapi, error["details"]["execution_id"])
    assert lost["status"] == "failed" and lost["error"]["code"] == "unavailable"
    assert audit_actions(wapi, lost["execution_id"])[-1] == "execution.failed"
    # The client's retry with the same key, once the broker is back, runs a fresh execution.
    retried = execute(wapi, agent["id"], headers=key, message="hi")
    assert retried["execution_id"] != lost["execution_id"]
    assert wait_status(wapi, retried["execution_id"])["status"] == "completed"


def test_redis_down_answers_503(wapi: ApiClient, pg_url: str, broker_url: str, restore_default_celery: None) -> None:
    down = build_app(pg_url, broker_url, "redis://127.0.0.1:1/0")
    api = ApiClient(down.test_client(), wapi.key, wapi.workspace_id)
    agent = scripted(wapi)
    response = api.post(f"/agents/{agent['id']}/execute", json={"message": "hi"})
    assert response.status_code == 503
    assert response.get_json()["error"]["details"]["dependency"] == "redis"
    execution_id = response.get_json()["error"]["details"]["execution_id"]
    assert get(wapi, execution_id)["status"] == "failed"
    events_response = api.get(f"/executions/{execution_id}/events")
    assert events_response.status_code == 503
    assert events_response.get_json()["error"]["code"] == "unavailable"


def test_worker_killed_mid_llm_completes_exactly_once(
    pg_url: str, redis_url: str, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory,
    restore_default_celery: None,
) -> None:
    chunks = [f"part{i} " for i in range(30)]
    with services.rabbitmq_vhost(services.run_token()) as vhost_url:
        app = build_app(pg_url, vhost_url, redis_url)
        api = new_workspace_client(app)
        log_path = tmp_path_factory.mktemp("killed") / "worker.log"
        doomed = WorkerProcess(database_url=pg_url, broker_url=vhost_url, redis_url=redis_url,
                               log_path=log_path, concurrency=1).start()
        agent = scripted(api, chunks=chunks, chunk_delay_ms=60)
        execution_id = execute(api, agent["id"])["execution_id"]
        wait_for(lambda: stored_events(redis_url, execution_id).count("delta") >= 3,
                 what="the doomed worker to stream")
        doomed.kill()
        assert get(api, execution_id)["status"] == "running"
        rescuer = WorkerProcess(database_url=pg_url, broker_url=vhost_url, redis_url=redis_url,
                                log_path=log_path, concurrency=1).start()
        try:
            done = wait_status(api, execution_id, timeout=60)
        finally:
            rescuer.stop()

    assert done["status"] == "completed"
    assert done["output"] == "".join(chunks)
    assert done["attempts"] == 2
    stream = events(api, execution_id)
    assert_well_formed(stream)
    assert [event.data for event in stream if event.event == "reset"] == [{"attempt": 2}]
    assert text_of(stream) == "".join(chunks)
    actions = audit_actions(api, execution_id)
    assert actions.count("execution.completed") == 1
    assert actions.count("llm.completed") == 1
    assert actions.count("llm.started") == 1
    assert actions.count("llm.retried") == 1
    assert api.get("/audit/verify").get_json()["ok"] is True


# --- the tool loop (DESIGN.md, "Tools"): webhook, client tool, approval, rejection, denial ---------------------
# More cases (invalid arguments, max_turns, pauses, openai, redelivery) are in tests/integration/tools/.

@pytest.mark.usefixtures("loopback_webhooks")
def test_webhook_tool_loop_end_to_end(wapi: ApiClient, webhook_receiver: WebhookReceiver) -> None:
    first = call_id()
    agent = tool_agent(wapi, [webhook_tool(webhook_receiver)], [
        {"text": "Let me look.", "tool_calls": [{"name": "lookup", "arguments": {"q": "weather"}, "id": first}]},
        {"text": "It is sunny."},
    ])
    started = execute(wapi, agent["id"])
    done = wait_status(wapi, started["execution_id"])
    assert done["status"] == "completed", done
    assert done["output"] == "It is sunny."
    assert done["turns"] == 2
    assert [step["name"] for step in done["steps"]] == ["governance", "llm", "tools", "governance", "llm", "persist"]
    (row,) = done["tool_calls"]
    assert row["tool_call_id"] == first and row["status"] == "completed" and row["turn"] == 0
    assert row["output"] == {"ok": True, "name": "lookup", "arguments": {"q": "weather"}}
    assert done["required_action"] is None and done["pending_approval"] is None
    assert webhook_receiver.per_key == {first: 1}
    assert webhook_receiver.received[0].signature_ok
    stream = events(wapi, started["execution_id"])
    names = [event.event for event in stream]
    assert names.index("tool_call") < names.index("tool_result") < names.index("completed")
    assert [event.id for event in stream] == list(range(1, len(stream) + 1))
    actions = audit_actions(wapi, started["execution_id"])
    for action in ("tool.requested", "tool.allowed", "tool.completed", "execution.completed"):
        assert action in actions
    single = tool_agent(wapi, [], [{"text": "It is sunny."}])
    alone = wait_status(wapi, execute(wapi, single["id"])["execution_id"])
    assert done["usage"]["prompt_tokens"] > alone["usage"]["prompt_tokens"], "usage is summed over turns"


@pytest.mark.usefixtures("loopback_webhooks")
def test_client_tool_pauses_and_tool_outputs_resume(wapi: ApiClient) -> None:
    ids = [call_id(), call_id()]
    agent = tool_agent(wapi, [client_tool()], [
        {"tool_calls": [{"name": "confirm", "arguments": {"n": 1}, "id": ids[0]},
                        {"name": "confirm", "arguments": {"n": 2}, "id": ids[1]}]},
        {"text": "Thanks."},
    ])
    execution_id = execute(wapi, agent["id"])["execution_id"]
    paused = wait_status(wapi, execution_id, "requires_action")
    assert paused["required_action"] == {"tool_calls": [{"id": ids[0], "name": "confirm", "arguments": {"n": 1}},
                                                        {"id": ids[1], "name": "confirm", "arguments": {"n": 2}}]}
    path = f"/executions/{execution_id}/tool_outputs"
    for body in ({"tool_outputs": [{"tool_call_id": ids[0], "output": "yes"}]},
                 {"tool_outputs": [{"tool_call_id": ids[0], "output": "yes"}, {"tool_call_id": "nope", "output": 1},
                                   {"tool_call_id": ids[1], "output": 2}]},
                 {"tool_outputs": [{"tool_call_id": ids[0], "output": 1}, {"tool_call_id": ids[0], "output": 1},
                                   {"tool_call_id": ids[1], "output": 2}]}):
        response = wapi.post(path, json=body)
        assert response.status_code == 409, response.get_json()
    for bad in ({}, {"tool_outputs": []}, {"tool_outputs": [{"tool_call_id": ids[0]}]}, {"tool_outputs": "x"}):
        assert wapi.post(path, json=bad).status_code == 422
    assert get(wapi, execution_id)["status"] == "requires_action"
    answer = {"tool_outputs": [{"tool_call_id": ids[0], "output": "yes"},
                               {"tool_call_id": ids[1], "output": {"confirmed": True}}]}
    response = wapi.post(path, json=answer)
    assert response.status_code == 200, response.get_json()
    assert wapi.post(path, json=answer).status_code == 409, "answered twice"
    done = wait_status(wapi, execution_id)
    assert done["status"] == "completed" and done["output"] == "Thanks."
    assert [row["output"] for row in done["tool_calls"]] == ["yes", {"confirmed": True}]
    assert "tool.output_submitted" in audit_actions(wapi, execution_id)
    stream = events(wapi, execution_id)
    statuses = [event.data["status"] for event in stream if event.event == "status"]
    assert statuses == ["pending", "running", "requires_action", "running", "pending", "running"]


@pytest.mark.usefixtures("loopback_webhooks")
def test_approval_runs_the_call_and_a_second_approve_is_409(wapi: ApiClient,
                                                              webhook_receiver: WebhookReceiver) -> None:
    first = call_id()
    agent = tool_agent(wapi, [webhook_tool(webhook_receiver, "open_ticket", "create")], [
        {"tool_calls": [{"name": "open_ticket", "arguments": {"q": "printer"}, "id": first}]}, {"text": "Opened."},
    ], maturity="INTERN")
    execution_id = execute(wapi, agent["id"])["execution_id"]
    paused = wait_status(wapi, execution_id, "awaiting_approval")
    assert paused["pending_approval"] == {"tool_calls": [{"id": first, "name": "open_ticket",
                                                         "arguments": {"q": "printer"}}]}
    assert webhook_receiver.received == []
    assert wapi.post(f"/executions/{execution_id}/approve").status_code == 202
    assert wapi.post(f"/executions/{execution_id}/approve").status_code == 409
    done = wait_status(wapi, execution_id)
    assert done["status"] == "completed", done
    assert done["tool_calls"][0]["status"] == "completed"
    assert webhook_receiver.per_key == {first: 1}
    actions = audit_actions(wapi, execution_id)
    assert "tool.approval_required" in actions and "tool.approved" in actions


@pytest.mark.usefixtures("loopback_webhooks")
def test_rejection_gives_the_llm_a_rejected_result(wapi: ApiClient, webhook_receiver: WebhookReceiver) -> None:
    agent = tool_agent(wapi, [webhook_tool(webhook_receiver, "open_ticket", "create")], [
        {"tool_calls": [{"name": "open_ticket", "arguments": {"q": "printer"}, "id": call_id()}]},
        {"text": "Not allowed, then."},
    ], maturity="INTERN")
    execution_id = execute(wapi, agent["id"])["execution_id"]
    wait_status(wapi, execution_id, "awaiting_approval")
    assert wapi.post(f"/executions/{execution_id}/reject").status_code in (200, 202)
    done = wait_status(wapi, execution_id)
    assert done["status"] == "completed" and done["output"] == "Not allowed, then."
    assert done["tool_calls"][0]["status"] == "rejected"
    assert done["tool_calls"][0]["error"]["code"] == "rejected"
    assert webhook_receiver.received == []
    assert "tool.rejected" in audit_actions(wapi, execution_id)


@pytest.mark.usefixtures("loopback_webhooks")
def test_denied_calls_are_answered_and_the_loop_goes_on(wapi: ApiClient, webhook_receiver: WebhookReceiver) -> None:
    agent = tool_agent(wapi, [webhook_tool(webhook_receiver, "wipe", "delete")], [
        {"tool_calls": [{"name": "wipe", "arguments": {"q": "all"}, "id": call_id()}]}, {"text": "I may not."},
    ], maturity="STUDENT")
    done = wait_status(wapi, execute(wapi, agent["id"], action="read")["execution_id"])
    assert done["status"] == "completed" and done["output"] == "I may not."
    assert done["tool_calls"][0]["status"] == "denied"
    assert webhook_receiver.received == []
