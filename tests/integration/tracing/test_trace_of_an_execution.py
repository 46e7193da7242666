"""The whole stack traced: gunicorn web and a prefork worker export OTLP/HTTP to a real receiver started here.

One execution is one trace holding the POST, every task of its chain and the LLM span with its GenAI attributes,
with the provider's HTTP call under it; a provider key is in no exported byte; an execution that answers another
agent is a trace of its own, linked to the asking one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask

from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.fake_llm_servers import FakeLLMServer
from tests.support.otlp_receiver import OtlpReceiver, Span
from tests.support.tools import webhook_tool
from tests.support.web import WebProcess
from tests.support.webhook_receiver import WebhookReceiver
from tests.support.worker import WorkerProcess

SECRET = "sk-test-" + uuid.uuid4().hex + "TRACEKEY"
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP span kinds
TERMINAL = {"completed", "failed", "cancelled", "timed_out", "denied"}


@dataclass
class Stack:
    web: WebProcess
    receiver: OtlpReceiver
    http: httpx.Client


@pytest.fixture(scope="module")
def stack(pg_app: Flask, pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Web and worker on a vhost of their own (no untraced session worker takes the tasks), tracing to a receiver."""
    logs = tmp_path_factory.mktemp("tracing")
    with services.rabbitmq_vhost(services.run_token()) as broker_url, OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", "MAX_HOPS": "2",
               "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}
        worker = WorkerProcess(database_url=pg_url, broker_url=broker_url, redis_url=redis_url,
                               log_path=logs / "worker.log",
                               extra_env={**env, "OTEL_SERVICE_NAME": "agent-runtime-worker"}).start()
        web = WebProcess(database_url=pg_url, broker_url=broker_url, redis_url=redis_url, log_path=logs / "web.log",
                         extra_env={**env, "OTEL_SERVICE_NAME": "agent-runtime-web"}).start()
        api = new_workspace_client(pg_app)
        try:
            with httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {api.key}"}, timeout=20) as http:
                yield Stack(web, receiver, http)
        finally:
            web.stop()
            worker.stop()


def create_agent(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = http.post("/agents", json={"name": f"agent-{uuid.uuid4().hex[:6]}", "maturity_level": "AUTONOMOUS",
                                          **fields})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def wait_finished(http: httpx.Client, execution_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data: dict[str, Any] = http.get(f"/executions/{execution_id}").json()
        if data["status"] in TERMINAL:
            return data
        time.sleep(0.05)
    raise AssertionError(f"execution {execution_id} did not finish in {timeout}s")


def in_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [span for span in spans if span["trace_id"] == trace_id]


def named(spans: list[Span], name: str) -> list[Span]:
    return [span for span in spans if span["name"] == name]


CHAIN = ("run/executions.governance", "run/executions.llm", "run/executions.persist")


def chain_done(trace_id: str) -> Any:
    """The receiver has every task span of the trace (and the LLM span)."""
    def check(spans: list[Span]) -> bool:
        names = {span["name"] for span in in_trace(spans, trace_id)}
        return all(name in names for name in CHAIN) and any(name.startswith("chat ") for name in names)
    return check


def test_one_execution_is_one_trace_from_the_post_to_the_providers_http_call(
        stack: Stack, fake_llm_server: FakeLLMServer) -> None:
    credential = stack.http.post("/credentials", json={"provider": "openai", "api_key": SECRET,
                                                       "base_url": fake_llm_server.openai_base_url}).json()
    agent = create_agent(stack.http, llm={"provider": "openai", "model": "gpt-fake", "credential_id": credential["id"]})
    response = stack.http.post(f"/agents/{agent['id']}/execute", json={"message": "what does it cost?"})
    assert response.status_code == 200, response.text
    traceparent = response.headers["traceparent"]
    version, trace_id, _span_id, _flags = traceparent.split("-")
    assert version == "00" and len(trace_id) == 32
    execution = wait_finished(stack.http, response.json()["execution_id"])
    assert execution["status"] == "completed", execution

    spans = in_trace(stack.receiver.wait_for(chain_done(trace_id)), trace_id)
    by_id = {span["span_id"]: span for span in spans}
    (post,) = [span for span in spans if span["kind"] == SERVER and span["attributes"].get("http.request.method",
               span["attributes"].get("http.method")) == "POST" and "execute" in span["name"]]
    assert post["service"] == "agent-runtime-web" and post["parent_span_id"] is None
    for name in CHAIN:
        (task,) = named(spans, name)
        assert task["service"] == "agent-runtime-worker" and task["kind"] == CONSUMER
    (sent,) = named(spans, "apply_async/executions.governance")
    assert sent["service"] == "agent-runtime-web" and sent["kind"] == PRODUCER
    assert sent["parent_span_id"] == post["span_id"]
    # A hand-off from a running task has no PRODUCER span (app/celery_spans.py): each step is its sender's child.
    assert [span["name"] for span in spans if span["kind"] == PRODUCER] == ["apply_async/executions.governance"]
    for sender, receiver in zip(CHAIN, CHAIN[1:], strict=False):
        assert by_id[named(spans, receiver)[0]["parent_span_id"]]["name"] == sender

    (llm,) = [span for span in spans if span["name"].startswith("chat ")]
    assert llm["name"] == "chat gpt-fake" and llm["kind"] == CLIENT
    attributes = llm["attributes"]
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-fake"
    assert attributes["gen_ai.usage.input_tokens"] == execution["usage"]["prompt_tokens"] == 12
    assert attributes["gen_ai.usage.output_tokens"] == execution["usage"]["completion_tokens"] == 4
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert by_id[llm["parent_span_id"]]["name"] == "run/executions.llm"
    under_llm = [span for span in spans if span["parent_span_id"] == llm["span_id"]]
    (provider_http,) = [span for span in under_llm if span["scope"] == "opentelemetry.instrumentation.httpx"]
    assert provider_http["kind"] == CLIENT
    assert provider_http["attributes"].get("http.response.status_code",
                                           provider_http["attributes"].get("http.status_code")) == 200

    everything = b"".join(stack.receiver.raw)
    assert SECRET.encode() not in everything and SECRET[-12:].encode() not in everything
    assert b"what does it cost?" not in everything  # no message text without the opt-in


def test_the_web_and_worker_logs_carry_the_trace_id(stack: Stack) -> None:
    agent = create_agent(stack.http)
    response = stack.http.post(f"/agents/{agent['id']}/execute", json={"message": "log me"})
    trace_id = response.headers["traceparent"].split("-")[1]
    wait_finished(stack.http, response.json()["execution_id"])
    stack.receiver.wait_for(chain_done(trace_id))
    worker_log = Path(stack.web.log_path).parent / "worker.log"
    lines = [line for line in worker_log.read_text().splitlines() if response.json()["execution_id"] in line]
    assert lines and all(f'"trace_id": "{trace_id}"' in line for line in lines if line.startswith("{")), lines[:3]


def test_an_execution_answering_an_agent_is_its_own_trace_linked_to_the_asker(stack: Stack) -> None:
    """B messages A; A (auto_reply) runs and replies; B (auto_reply) runs on the reply: that is a second trace,
    whose root links to A's persist task, the span that sent the reply (MAX_HOPS 2 ends it there)."""
    a, b = create_agent(stack.http, auto_reply=True), create_agent(stack.http, auto_reply=True)
    sent = stack.http.post(f"/agents/{b['id']}/messages", json={"to_agent_id": a["id"], "message": "start"})
    assert sent.status_code == 201, sent.text
    first = sent.headers["traceparent"].split("-")[1]
    persist = named(in_trace(stack.receiver.wait_for(chain_done(first)), first), "run/executions.persist")[0]

    def linked_root(spans: list[Span]) -> Span | None:
        return next((span for span in named(spans, "workflow.reply")
                     if any(link["span_id"] == persist["span_id"] for link in span["links"])), None)

    root = linked_root(stack.receiver.wait_for(lambda spans: linked_root(spans) is not None))
    assert root is not None and root["trace_id"] != first and root["parent_span_id"] is None
    assert root["links"][0]["trace_id"] == first
    second = in_trace(stack.receiver.wait_for(chain_done(root["trace_id"])), root["trace_id"])
    assert {span["service"] for span in named(second, "run/executions.llm")} == {"agent-runtime-worker"}


def test_an_execution_with_two_tool_turns_is_one_trace_with_every_turn_and_call(
        stack: Stack, webhook_receiver: WebhookReceiver) -> None:
    """Turn 1 and turn 2 each call the webhook, turn 3 answers: one trace holds the POST, every task of every turn
    (three LLM steps, two tools steps), the three LLM spans and one span per tool call, the webhook's HTTP call
    under its tool span."""
    turns = [{"tool_calls": [{"name": "lookup", "arguments": {"q": "one"}, "id": "call_turn_one"}]},
             {"tool_calls": [{"name": "lookup", "arguments": {"q": "two"}, "id": "call_turn_two"}]},
             {"text": "Both looked up."}]
    agent = create_agent(stack.http, tools=[webhook_tool(webhook_receiver)],
                         llm={"provider": "scripted", "options": {"turns": turns}})
    response = stack.http.post(f"/agents/{agent['id']}/execute", json={"message": "look twice"})
    assert response.status_code == 200, response.text
    trace_id = response.headers["traceparent"].split("-")[1]
    execution = wait_finished(stack.http, response.json()["execution_id"])
    assert execution["status"] == "completed" and execution["turns"] == 3, execution

    def whole_loop(spans: list[Span]) -> bool:
        mine = in_trace(spans, trace_id)
        return (len(named(mine, "run/executions.llm")) == 3 and len(named(mine, "run/executions.tools")) == 2
                and len(named(mine, "execute_tool lookup")) == 2 and len(named(mine, "run/executions.persist")) >= 1)

    spans = in_trace(stack.receiver.wait_for(whole_loop), trace_id)
    by_id = {span["span_id"]: span for span in spans}
    assert [span for span in spans if span["kind"] == SERVER and "execute" in span["name"]], "the POST"
    llm_spans = [span for span in spans if span["name"].startswith("chat ")]
    assert len(llm_spans) == 3
    assert all(span["attributes"]["gen_ai.system"] == "scripted" for span in llm_spans)
    assert all("gen_ai.usage.input_tokens" in span["attributes"] for span in llm_spans)
    tools = named(spans, "execute_tool lookup")
    assert sorted(span["attributes"]["gen_ai.tool.call.id"] for span in tools) == ["call_turn_one", "call_turn_two"]
    for span in tools:
        assert span["attributes"]["agent_runtime.governance.decision"] == "allowed"
        assert span["attributes"]["agent_runtime.tool.status"] == "completed"
        assert by_id[span["parent_span_id"]]["name"] == "run/executions.tools"
        assert "gen_ai.tool.call.arguments" not in span["attributes"]  # no arguments without the opt-in
    assert webhook_receiver.per_key == {"call_turn_one": 1, "call_turn_two": 1}
