"""The conversation of a tool loop as plain JSON, so it can be stored on the execution between turns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.llm.base import AssistantTurn, Message, ToolCall, ToolResult, UserTurn


def dump(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """JSON-ready form of the messages, in order."""
    out: list[dict[str, Any]] = []
    for item in messages:
        if isinstance(item, AssistantTurn):
            calls = [{"id": call.id, "name": call.name, "arguments": call.arguments} for call in item.tool_calls]
            out.append({"role": "assistant", "text": item.text, "tool_calls": calls})
        elif isinstance(item, ToolResult):
            out.append({"role": "tool", "tool_call_id": item.tool_call_id, "name": item.name,
                        "content": item.content, "is_error": item.is_error})
        else:
            out.append({"role": "user", "text": item.text})
    return out


def load(data: Sequence[dict[str, Any]] | None) -> list[Message]:
    """Messages back from their JSON form (dump's inverse)."""
    out: list[Message] = []
    for item in data or ():
        role = item.get("role")
        if role == "assistant":
            calls = tuple(ToolCall(id=str(call["id"]), name=str(call["name"]), arguments=call.get("arguments"))
                          for call in item.get("tool_calls") or ())
            out.append(AssistantTurn(text=str(item.get("text") or ""), tool_calls=calls))
        elif role == "tool":
            out.append(ToolResult(tool_call_id=str(item["tool_call_id"]), name=str(item.get("name") or ""),
                                  content=str(item.get("content") or ""), is_error=bool(item.get("is_error"))))
        else:
            out.append(UserTurn(text=str(item.get("text") or "")))
    return out


def turn_index(messages: Sequence[Message]) -> int:
    """0-based number of the turn about to run: the assistant turns already in the conversation."""
    return sum(1 for item in messages if isinstance(item, AssistantTurn))


def history_text(messages: Sequence[Message]) -> list[str]:
    """Every text in the conversation, for token estimates."""
    texts: list[str] = []
    for item in messages:
        if isinstance(item, AssistantTurn):
            texts.append(item.text)
        elif isinstance(item, ToolResult):
            texts.append(item.content)
        else:
            texts.append(item.text)
    return texts
