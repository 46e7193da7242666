"""The tool loop end to end: API -> RabbitMQ -> the session's real worker -> webhook receiver / client / another
agent -> next LLM turn, on PostgreSQL and Redis. Waits poll the API against a deadline."""

from __future__ import annotations

import pytest
from flask import Flask

from tests.integration.agent.test_agent_execution_orchestration import (
    events,
    execute,
    get,
    wait_for,
    wait_status,
)
from tests.support.api import ApiClient
from tests.support.fake_llm_servers import Behaviour, FakeLLMServer
from tests.support.tools import call_id, client_tool, tool_agent, webhook_tool
from tests.support.webhook_receiver import Reply, WebhookReceiver

pytestmark = pytest.mark.usefixtures("loopback_webhooks")


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
