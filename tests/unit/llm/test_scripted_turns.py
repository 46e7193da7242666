"""The scripted provider's `turns` option: one entry per LLM turn, with text and tool calls, fully offline."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.llm.base import AssistantTurn, Delta, FatalProviderError, Message, ToolCall, ToolResult, Usage, UserTurn
from app.llm.conversation import dump, load, turn_index
from app.llm.options import InvalidOptions, validate_scripted
from app.llm.scripted import ScriptedProvider

TURNS = [
    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "c1"},
                    {"name": "get_time", "id": "c2"}]},
    {"text": "Checking once more", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}, "id": "c3"}]},
    {"chunks": ["Sunny", " in both."]},
]


def run(options: dict[str, Any], messages: tuple[Message, ...] = ()) -> list[Any]:
    return list(ScriptedProvider().stream(system_prompt=None, message="weather?", model=None, options=options,
                                          should_stop=lambda: False, attempt=1, messages=messages))


def after(*turns: tuple[str, tuple[ToolCall, ...]]) -> tuple[Message, ...]:
    """A conversation that already holds these assistant turns, each answered."""
    messages: list[Message] = []
    for text, calls in turns:
        messages.append(AssistantTurn(text=text, tool_calls=calls))
        messages.extend(ToolResult(tool_call_id=call.id, name=call.name, content="{}") for call in calls)
    return tuple(messages)


def test_each_turn_plays_its_entry() -> None:
    first = run({"turns": TURNS})
    calls = [item for item in first if isinstance(item, ToolCall)]
    assert calls == [ToolCall("c1", "get_weather", {"city": "Oslo"}), ToolCall("c2", "get_time", {})]
    assert not [item for item in first if isinstance(item, Delta)]
    second = run({"turns": TURNS}, after(("", tuple(calls))))
    assert "".join(item.text for item in second if isinstance(item, Delta)) == "Checking once more"
    assert [item.id for item in second if isinstance(item, ToolCall)] == ["c3"]
    third = run({"turns": TURNS}, after(("", tuple(calls)), ("x", (ToolCall("c3", "get_weather", {}),))))
    assert [item.text for item in third if isinstance(item, Delta)] == ["Sunny", " in both."]
    assert not [item for item in third if isinstance(item, ToolCall)]
    assert isinstance(third[-1], Usage) and third[-1].prompt_tokens > first[-1].prompt_tokens


def test_past_the_script_the_reply_is_plain_text() -> None:
    history = after(("", (ToolCall("c1", "t", {}),)), ("", ()), ("", ()))
    items = run({"turns": TURNS, "text": "done"}, history)
    assert [item.text for item in items if isinstance(item, Delta)] == ["done"]
    assert not [item for item in items if isinstance(item, ToolCall)]


def test_ids_are_generated_when_not_given_and_unique() -> None:
    script = {"turns": [{"tool_calls": [{"name": "a"}, {"name": "b"}]}]}
    ids = [item.id for item in run(script) + run(script) if isinstance(item, ToolCall)]
    assert len(set(ids)) == 4 and all(call_id.startswith("call_") for call_id in ids)


def test_failures_apply_to_tool_turns_too() -> None:
    with pytest.raises(FatalProviderError):
        run({"turns": TURNS, "fail_mode": "fatal"})


@pytest.mark.parametrize(
    ("turns", "needle"),
    [([], "list of 1 to 64"), ("x", "list of 1 to 64"), ([3], "must be an object"),
     ([{"text": "a", "chunks": ["a"]}], "not both"), ([{"say": "x"}], "unknown key"),
     ([{"tool_calls": {}}], "tool_calls must be a list"), ([{"tool_calls": [{"arguments": {}}]}], "name must be"),
     ([{"tool_calls": [{"name": "a", "id": "x"}]}, {"tool_calls": [{"name": "b", "id": "x"}]}], "used twice"),
     ([{"tool_calls": [{"name": "a", "extra": 1}]}], "unknown key"), ([{"text": 5}], "must be a string")],
)
def test_bad_turns_are_refused(turns: Any, needle: str) -> None:
    with pytest.raises(InvalidOptions) as caught:
        validate_scripted({"turns": turns})
    assert needle in caught.value.message
    assert str(caught.value.field).startswith("turns")


def test_valid_turns_are_normalised() -> None:
    assert validate_scripted({"turns": [{"tool_calls": [{"name": "a"}]}]}) == {
        "turns": [{"tool_calls": [{"name": "a", "arguments": {}}]}]}


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                   max_size=3), max_leaves=8)
CALL = st.builds(ToolCall, id=st.text(min_size=1, max_size=8), name=st.text(min_size=1, max_size=8),
                 arguments=JSONISH)
MESSAGE = st.one_of(
    st.builds(AssistantTurn, text=st.text(max_size=10), tool_calls=st.tuples() | st.lists(CALL, max_size=3).map(tuple)),
    st.builds(ToolResult, tool_call_id=st.text(min_size=1, max_size=8), name=st.text(max_size=8),
              content=st.text(max_size=10), is_error=st.booleans()),
    st.builds(UserTurn, text=st.text(max_size=10)),
)


@given(st.lists(MESSAGE, max_size=8))
def test_conversation_round_trips_through_json(messages: list[Message]) -> None:
    assert load(dump(messages)) == messages
    assert turn_index(messages) == sum(isinstance(item, AssistantTurn) for item in messages)
