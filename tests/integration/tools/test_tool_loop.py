"""The tool loop end to end: API -> RabbitMQ -> the session's real worker -> webhook receiver / client / another
agent -> next LLM turn, on PostgreSQL and Redis. Waits poll the API against a deadline."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask import Flask

from tests.integration.agent.test_agent_execution_orchestration import (
    audit_actions,
    events,
    execute,
    get,
    wait_for,
    wait_status,
)
from tests.support.api import ApiClient
from tests.support.fake_llm_servers import Behaviour, FakeLLMServer
from tests.support.webhook_receiver import Reply, WebhookReceiver


@pytest.fixture(autouse=True)
def loopback_webhooks(pg_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API admits the test receivers' loopback URLs (the worker has the same setting, tests/support/worker.py)."""
    monkeypatch.setitem(pg_app.config, "WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def webhook_tool(receiver: WebhookReceiver, name: str = "lookup", action: str = "read") -> dict[str, Any]:
    return {"name": name, "description": "look something up", "action": action, "kind": "webhook",
            "url": receiver.url, "timeout_s": 5,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}


def client_tool(name: str = "confirm", action: str = "chat") -> dict[str, Any]:
    return {"name": name, "action": action, "kind": "client"}


def tool_agent(api: ApiClient, tools: list[dict[str, Any]], turns: list[dict[str, Any]],
               maturity: str = "AUTONOMOUS") -> dict[str, Any]:
    return api.create_agent(maturity_level=maturity, tools=tools,
                            llm={"provider": "scripted", "options": {"turns": turns}})


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


def test_denied_calls_are_answered_and_the_loop_goes_on(wapi: ApiClient, webhook_receiver: WebhookReceiver) -> None:
    agent = tool_agent(wapi, [webhook_tool(webhook_receiver, "wipe", "delete")], [
        {"tool_calls": [{"name": "wipe", "arguments": {"q": "all"}, "id": call_id()}]}, {"text": "I may not."},
    ], maturity="STUDENT")
    done = wait_status(wapi, execute(wapi, agent["id"], action="read")["execution_id"])
    assert done["status"] == "completed" and done["output"] == "I may not."
    assert done["tool_calls"][0]["status"] == "denied"
    assert webhook_receiver.received == []


def test_invalid_arguments_become_an_error_result(wapi: ApiClient, webhook_receiver: WebhookReceiver) -> None:
    agent = tool_agent(wapi, [webhook_tool(webhook_receiver)], [
        {"tool_calls": [{"name": "lookup", "arguments": {"q": 5}, "id": call_id()},
                        {"name": "missing_tool", "arguments": {}, "id": call_id()}]}, {"text": "Oops."},
    ])
    done = wait_status(wapi, execute(wapi, agent["id"])["execution_id"])
    assert done["status"] == "completed"
    assert [row["error"]["code"] for row in done["tool_calls"]] == ["invalid_arguments", "unknown_tool"]
    assert webhook_receiver.received == []


def test_max_turns_fails_the_execution(wapi: ApiClient) -> None:
    turns = [{"tool_calls": [{"name": "confirm", "arguments": {}, "id": call_id()}]} for _ in range(3)]
    agent = tool_agent(wapi, [client_tool()], turns)
    execution_id = execute(wapi, agent["id"], max_turns=1)["execution_id"]
    done = wait_status(wapi, execution_id)
    assert done["status"] == "failed" and done["error"]["code"] == "max_turns"
    assert done["tool_calls"][0]["status"] == "failed"


def test_cancel_in_a_pause_resolves_its_calls(wapi: ApiClient) -> None:
    agent = tool_agent(wapi, [client_tool()], [{"tool_calls": [{"name": "confirm", "arguments": {}, "id": call_id()}]}])
    execution_id = execute(wapi, agent["id"])["execution_id"]
    wait_status(wapi, execution_id, "requires_action")
    assert wapi.post(f"/executions/{execution_id}/cancel").status_code == 202
    done = wait_status(wapi, execution_id)
    assert done["status"] == "cancelled"
    assert done["tool_calls"][0]["status"] == "failed" and done["tool_calls"][0]["error"]["code"] == "cancelled"
    assert events(wapi, execution_id)[-1].event == "cancelled"


def test_wait_timeout_ends_a_pause_timed_out(wapi: ApiClient, pg_app: Flask) -> None:
    from app.services.tools import pauses

    agent = tool_agent(wapi, [client_tool()], [{"tool_calls": [{"name": "confirm", "arguments": {}, "id": call_id()}]}])
    execution_id = execute(wapi, agent["id"], wait_timeout_s=1)["execution_id"]
    wait_status(wapi, execution_id, "requires_action")

    def swept() -> bool:
        with pg_app.app_context():
            return execution_id in pauses.end_expired()

    wait_for(swept, timeout=10, what="the pause to expire")
    done = get(wapi, execution_id)
    assert done["status"] == "timed_out" and done["error"]["code"] == "wait_timeout"
    assert done["tool_calls"][0]["error"]["code"] == "wait_timeout"


def test_openai_sees_the_tool_results_in_the_next_turn(wapi: ApiClient, webhook_receiver: WebhookReceiver,
                                                       fake_llm_server: FakeLLMServer) -> None:
    first = call_id()
    fake_llm_server.behave(
        Behaviour(chunks=[], tool_calls=[{"id": first, "name": "lookup", "arguments": {"q": "weather"}}]),
        Behaviour(chunks=["Sunny", "."]),
    )
    credential = wapi.post("/credentials", json={"provider": "openai", "api_key": "sk-test-tools",
                                                 "base_url": fake_llm_server.openai_base_url}).get_json()
    agent = wapi.create_agent(maturity_level="AUTONOMOUS", tools=[webhook_tool(webhook_receiver)],
                              llm={"provider": "openai", "credential_id": credential["id"]})
    done = wait_status(wapi, execute(wapi, agent["id"], message="weather?")["execution_id"])
    assert done["status"] == "completed" and done["output"] == "Sunny."
    first_request, second_request = (request.body for request in fake_llm_server.requests)
    assert first_request["tools"][0]["function"]["name"] == "lookup"
    assert second_request["messages"][-2]["tool_calls"][0]["id"] == first
    assert second_request["messages"][-1] == {
        "role": "tool", "tool_call_id": first,
        "content": '{"ok": true, "name": "lookup", "arguments": {"q": "weather"}}'}


def test_agent_tool_asks_another_agent(wapi: ApiClient) -> None:
    helper = wapi.create_agent(llm={"provider": "scripted", "options": {"text": "Paris, of course.",
                                                                         "chunk_delay_ms": 300}})
    ask = {"name": "ask_helper", "action": "chat", "kind": "agent", "agent_id": helper["id"]}
    first = call_id()
    agent = tool_agent(wapi, [ask], [
        {"tool_calls": [{"name": "ask_helper", "arguments": {"question": "Capital of France?"}, "id": first}]},
        {"text": "The helper says Paris."},
    ])
    execution_id = execute(wapi, agent["id"])["execution_id"]
    done = wait_status(wapi, execution_id)
    assert done["status"] == "completed", done
    (row,) = done["tool_calls"]
    assert row["status"] == "completed" and row["output"] == "Paris, of course."
    inbox = wapi.get(f"/agents/{helper['id']}/messages").get_json()["messages"]
    assert [(message["correlation_id"], message["hop"]) for message in inbox] == [(first, 1)]
    statuses = [event.data["status"] for event in events(wapi, execution_id) if event.event == "status"]
    assert "waiting" in statuses


def test_a_second_chain_never_answers_for_running_tool_calls(wapi: ApiClient, pg_app: Flask,
                                                              webhook_receiver: WebhookReceiver) -> None:
    """A re-sent chain (the sweep after a kill) queued beside the first: its LLM run waits for the lease, then
    finds the turn's webhook call still running, and must neither answer in its place nor end the execution."""
    from app.services.executions.requests import bound_enqueue, new_task_ids

    webhook_receiver.behave(Reply(delay_s=1.5))
    agent = tool_agent(wapi, [webhook_tool(webhook_receiver)], [
        {"tool_calls": [{"name": "lookup", "arguments": {"q": "slow"}, "id": call_id()}]}, {"text": "After the call."},
    ])
    execution_id = execute(wapi, agent["id"])["execution_id"]
    with pg_app.app_context():
        bound_enqueue()(execution_id, new_task_ids())
    done = wait_status(wapi, execution_id)
    assert done["status"] == "completed" and done["output"] == "After the call."
    assert done["tool_calls"][0]["status"] == "completed"
    assert done["turns"] == 2
