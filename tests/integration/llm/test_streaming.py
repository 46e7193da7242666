"""The real OpenAI and Anthropic clients streaming from a local server over real sockets."""

from __future__ import annotations

import threading
import time

import pytest

from app.llm import Usage
from tests.integration.llm.helpers import FLAVOURS, KEY, Outcome, drain, provider_for
from tests.support.fake_llm_servers import Behaviour, FakeLLMServer


@pytest.mark.parametrize("name", FLAVOURS)
def test_deltas_and_usage_come_through(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=["The", " answer", " is", " 42."], usage=(21, 5)))
    outcome = drain(provider_for(name, fake_llm_server))
    assert outcome.deltas == ["The", " answer", " is", " 42."]
    assert outcome.usage == Usage(prompt_tokens=21, completion_tokens=5)


@pytest.mark.parametrize("name", FLAVOURS)
def test_deltas_arrive_as_they_are_sent(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=["a", "b", "c"], chunk_delay_s=0.2))
    stream = provider_for(name, fake_llm_server).stream(
        system_prompt=None, message="m", model=None, options={}, should_stop=lambda: False, attempt=1
    )
    started = time.monotonic()
    next(stream)
    assert time.monotonic() - started < 0.15, "the first delta must not wait for the rest"
    assert len(list(stream)) == 3  # two deltas and usage


def test_openai_request_carries_bearer_key_and_streaming_body(fake_llm_server: FakeLLMServer) -> None:
    drain(provider_for("openai", fake_llm_server), message="hi", system_prompt="sys", options={"temperature": 0.3})
    (request,) = fake_llm_server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert "x-api-key" not in request.headers
    assert request.body["stream"] is True
    assert request.body["stream_options"] == {"include_usage": True}
    assert request.body["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert request.body["model"] == "gpt-4o-mini"
    assert request.body["temperature"] == 0.3


def test_anthropic_request_carries_x_api_key_and_version(fake_llm_server: FakeLLMServer) -> None:
    drain(provider_for("anthropic", fake_llm_server), message="hi", system_prompt="sys")
    (request,) = fake_llm_server.requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.body["stream"] is True
    assert request.body["max_tokens"] == 1024
    assert request.body["system"] == "sys"
    assert request.body["messages"] == [{"role": "user", "content": "hi"}]


def test_openai_without_usage_chunk_estimates_usage(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=["two", " words"]))
    outcome = drain(provider_for("openai", fake_llm_server), options={"include_usage": False}, message="a b c")
    assert outcome.deltas == ["two", " words"]
    assert outcome.usage == Usage(prompt_tokens=5, completion_tokens=2, estimated=True)
    assert "stream_options" not in fake_llm_server.requests[0].body


def test_openai_compatible_server_without_a_key(fake_llm_server: FakeLLMServer) -> None:
    outcome = drain(provider_for("openai", fake_llm_server, key=None))
    assert "".join(outcome.deltas) == "Hello, world!"
    assert "authorization" not in fake_llm_server.requests[0].headers


@pytest.mark.parametrize("name", FLAVOURS)
def test_unicode_and_multiline_text_survive_framing(name: str, fake_llm_server: FakeLLMServer) -> None:
    chunks = ["naïve ", "日本語", "\n\nnew para", " emoji 🎉", "data: not a field"]
    fake_llm_server.behave(Behaviour(chunks=chunks))
    assert drain(provider_for(name, fake_llm_server)).deltas == chunks


@pytest.mark.parametrize("name", FLAVOURS)
def test_many_streams_in_a_row_do_not_leak_threads(name: str, fake_llm_server: FakeLLMServer) -> None:
    provider = provider_for(name, fake_llm_server)
    before = threading.active_count()
    for _ in range(20):
        assert drain(provider, outcome=Outcome()).usage is not None
    time.sleep(0.2)
    assert threading.active_count() <= before + 2


@pytest.mark.parametrize(("name", "reason"), [("openai", "stop"), ("anthropic", "end_turn")])
def test_usage_carries_the_upstreams_finish_reason(name: str, reason: str, fake_llm_server: FakeLLMServer) -> None:
    outcome = drain(provider_for(name, fake_llm_server))
    assert outcome.usage is not None and outcome.usage.finish_reason == reason
