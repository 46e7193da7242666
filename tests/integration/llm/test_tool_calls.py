"""Streamed tool calls from the real OpenAI and Anthropic clients against the local fake over real sockets."""

from __future__ import annotations

from typing import Any

import pytest

from app.llm import AssistantTurn, Delta, Message, ToolCall, ToolResult, ToolSpec, Usage
from tests.integration.llm.helpers import FLAVOURS, provider_for
from tests.support.fake_llm_servers import Behaviour, FakeLLMServer

WEATHER = ToolSpec(name="get_weather", description="Weather for a city",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
CALLS = [
    {"id": "call_a1", "name": "get_weather", "arguments": {"city": "Oslo", "units": "metric"}},
    {"id": "call_b2", "name": "get_weather", "arguments": {"city": "São Paulo"}},
]


def collect(name: str, server: FakeLLMServer, *, messages: tuple[Message, ...] = (),
            tools: tuple[ToolSpec, ...] = (WEATHER,)) -> list[Any]:
    provider = provider_for(name, server)
    return list(provider.stream(system_prompt="sys", message="weather?", model=None, options={},
                                should_stop=lambda: False, attempt=1, messages=messages, tools=tools))


@pytest.mark.parametrize("name", FLAVOURS)
@pytest.mark.parametrize("interleave", [False, True])
def test_several_calls_per_turn_are_assembled(name: str, interleave: bool, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=["Let me", " check."], tool_calls=CALLS, argument_piece=3,
                                     interleave=interleave, usage=(30, 9)))
    items = collect(name, fake_llm_server)
    assert [item.text for item in items if isinstance(item, Delta)] == ["Let me", " check."]
    assert [item for item in items if isinstance(item, ToolCall)] == [
        ToolCall(id="call_a1", name="get_weather", arguments={"city": "Oslo", "units": "metric"}),
        ToolCall(id="call_b2", name="get_weather", arguments={"city": "São Paulo"}),
    ]
    assert items[-1] == Usage(prompt_tokens=30, completion_tokens=9)
    assert isinstance(items[-2], ToolCall), "calls come after the text and before usage"


@pytest.mark.parametrize("name", FLAVOURS)
def test_arguments_that_are_not_json_come_through_raw(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=[], tool_calls=[{"id": "c1", "name": "get_weather",
                                                            "arguments": '{"city": "Os'}]))
    calls = [item for item in collect(name, fake_llm_server) if isinstance(item, ToolCall)]
    assert calls == [ToolCall(id="c1", name="get_weather", arguments='{"city": "Os')]


@pytest.mark.parametrize("name", FLAVOURS)
def test_empty_arguments_are_an_empty_object(name: str, fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.behave(Behaviour(chunks=[], tool_calls=[{"id": "c1", "name": "now", "arguments": ""}]))
    calls = [item for item in collect(name, fake_llm_server) if isinstance(item, ToolCall)]
    assert calls == [ToolCall(id="c1", name="now", arguments={})]


def test_openai_request_carries_tools_and_the_conversation(fake_llm_server: FakeLLMServer) -> None:
    history = (
        AssistantTurn(text="", tool_calls=(ToolCall("call_a1", "get_weather", {"city": "Oslo"}),
                                           ToolCall("call_b2", "get_weather", {"city": "Rome"}))),
        ToolResult(tool_call_id="call_a1", name="get_weather", content='{"temp": 3}'),
        ToolResult(tool_call_id="call_b2", name="get_weather", content='{"code": "denied"}', is_error=True),
    )
    collect("openai", fake_llm_server, messages=history)
    body = fake_llm_server.requests[0].body
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER.parameters}}]
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_b2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_a1", "content": '{"temp": 3}'},
        {"role": "tool", "tool_call_id": "call_b2", "content": '{"code": "denied"}'},
    ]


def test_anthropic_request_carries_tools_and_tool_result_blocks(fake_llm_server: FakeLLMServer) -> None:
    history = (
        AssistantTurn(text="Checking.", tool_calls=(ToolCall("toolu_1", "get_weather", {"city": "Oslo"}),
                                                    ToolCall("toolu_2", "get_weather", {"city": "Rome"}))),
        ToolResult(tool_call_id="toolu_1", name="get_weather", content='{"temp": 3}'),
        ToolResult(tool_call_id="toolu_2", name="get_weather", content='{"code": "denied"}', is_error=True),
    )
    collect("anthropic", fake_llm_server, messages=history)
    body = fake_llm_server.requests[0].body
    assert body["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                              "input_schema": WEATHER.parameters}]
    assert body["messages"] == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"temp": 3}', "is_error": False},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": '{"code": "denied"}', "is_error": True},
        ]},
    ]


@pytest.mark.parametrize("name", FLAVOURS)
def test_without_tools_the_request_has_no_tools_key(name: str, fake_llm_server: FakeLLMServer) -> None:
    items = collect(name, fake_llm_server, tools=())
    assert "tools" not in fake_llm_server.requests[0].body
    assert not any(isinstance(item, ToolCall) for item in items)

