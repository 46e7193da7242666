"""Anthropic Messages API streaming (POST /v1/messages with stream: true)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from app.llm.base import (
    BAD_RESPONSE,
    INCOMPLETE_STREAM,
    INVALID_OPTIONS,
    OVERLOADED,
    PROVIDER_ERROR,
    RATE_LIMITED,
    AssistantTurn,
    Delta,
    FatalProviderError,
    Message,
    ProviderError,
    ShouldStop,
    StreamItem,
    Timeouts,
    ToolCall,
    ToolResult,
    ToolSpec,
    TransientProviderError,
    Usage,
)
from app.llm.http_stream import StreamRequest, stream_lines
from app.llm.options import InvalidOptions, validate_anthropic
from app.llm.redact import clip, redact
from app.llm.sse import SSEEvent, iter_events
from app.llm.stopping import check_stop

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-haiku-4-5"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
TRANSIENT_ERROR_TYPES = {
    "overloaded_error": OVERLOADED,
    "api_error": PROVIDER_ERROR,
    "rate_limit_error": RATE_LIMITED,
}


class AnthropicProvider:
    """Streams a Messages API reply; base_url is the host root (a trailing /v1 is tolerated)."""

    name = "anthropic"
    default_model = DEFAULT_MODEL

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None = None,
        timeouts: Timeouts | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._api_key = api_key
        root = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.base_url = root[: -len("/v1")] if root.endswith("/v1") else root
        self.timeouts = timeouts or Timeouts()
        self._transport = transport

    def __repr__(self) -> str:
        return f"AnthropicProvider(base_url={self.base_url!r}, api_key={'***' if self._api_key else None})"

    def build_request(
        self, *, system_prompt: str | None, message: str, model: str | None, options: dict[str, Any],
        messages: Sequence[Message] = (), tools: Sequence[ToolSpec] = (),
    ) -> StreamRequest:
        """The streaming request body and headers (the key only in x-api-key)."""
        body: dict[str, Any] = {
            "model": model or self.default_model,
            "max_tokens": DEFAULT_MAX_TOKENS,
            "messages": _wire_messages(message, messages),
            "stream": True,
        }
        if system_prompt:
            body["system"] = system_prompt
        if tools:
            body["tools"] = [{"name": tool.name, "description": tool.description, "input_schema": tool.parameters}
                             for tool in tools]
        body.update(options)
        headers = {
            "accept": "text/event-stream",
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
        }
        if self._api_key:
            headers["x-api-key"] = self._api_key
        return StreamRequest(url=f"{self.base_url}/v1/messages", headers=headers, body=body)

    def stream(
        self,
        *,
        system_prompt: str | None,
        message: str,
        model: str | None,
        options: dict[str, Any],
        should_stop: ShouldStop,
        attempt: int,
        messages: Sequence[Message] = (),
        tools: Sequence[ToolSpec] = (),
    ) -> Iterator[StreamItem]:
        """Yield text deltas, each tool_use block as a ToolCall when it closes, then Usage."""
        try:
            opts = validate_anthropic(options)
        except InvalidOptions as exc:
            raise FatalProviderError(INVALID_OPTIONS, exc.message) from None
        request = self.build_request(system_prompt=system_prompt, message=message, model=model, options=opts,
                                     messages=messages, tools=tools)
        secrets = (self._api_key,)
        lines = stream_lines(
            request,
            timeouts=self.timeouts,
            should_stop=should_stop,
            secrets=secrets,
            transport=self._transport,
        )
        input_tokens = output_tokens = 0
        stop_reason: str | None = None
        stopped_cleanly = False
        tool_blocks: dict[int, dict[str, Any]] = {}
        try:
            for event in iter_events(lines):
                payload = _decode(event, secrets)
                kind = event.event if event.event != "message" else str(payload.get("type", ""))
                if kind == "content_block_delta":
                    delta = payload.get("delta")
                    if isinstance(delta, dict) and delta.get("type") == "text_delta":
                        text = delta.get("text")
                        if isinstance(text, str) and text:
                            check_stop(should_stop)
                            yield Delta(text)
                    elif isinstance(delta, dict) and delta.get("type") == "input_json_delta":
                        block = tool_blocks.get(_int(payload.get("index"), -1))
                        if block is not None and isinstance(delta.get("partial_json"), str):
                            block["json"].append(delta["partial_json"])
                elif kind == "content_block_start":
                    started = _dict(payload.get("content_block"))
                    if started.get("type") == "tool_use":
                        tool_blocks[_int(payload.get("index"), len(tool_blocks))] = {
                            "id": started.get("id"), "name": started.get("name"),
                            "input": started.get("input"), "json": []}
                elif kind == "content_block_stop":
                    block = tool_blocks.pop(_int(payload.get("index"), -1), None)
                    if block is not None:
                        check_stop(should_stop)
                        yield _tool_call(block)
                elif kind == "message_start":
                    usage = _dict(_dict(payload.get("message")).get("usage"))
                    input_tokens = _int(usage.get("input_tokens"), input_tokens)
                    output_tokens = _int(usage.get("output_tokens"), output_tokens)
                elif kind == "message_delta":
                    reason = _dict(payload.get("delta")).get("stop_reason")
                    stop_reason = reason if isinstance(reason, str) else stop_reason
                    usage = _dict(payload.get("usage"))
                    input_tokens = _int(usage.get("input_tokens"), input_tokens)
                    output_tokens = _int(usage.get("output_tokens"), output_tokens)
                elif kind == "message_stop":
                    stopped_cleanly = True
                    break
                elif kind == "error":
                    raise _stream_error(payload.get("error"), secrets)
        finally:
            lines.close()
        if not stopped_cleanly:
            raise TransientProviderError(INCOMPLETE_STREAM, "stream ended before message_stop")
        check_stop(should_stop)
        yield Usage(prompt_tokens=input_tokens, completion_tokens=output_tokens, finish_reason=stop_reason)


def _wire_messages(message: str, messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The conversation in Messages-API form; consecutive tool results share one user message."""
    wire: list[dict[str, Any]] = [{"role": "user", "content": message}]
    for item in messages:
        if isinstance(item, AssistantTurn):
            content: list[dict[str, Any]] = [{"type": "text", "text": item.text}] if item.text else []
            content.extend({"type": "tool_use", "id": call.id, "name": call.name,
                            "input": call.arguments if isinstance(call.arguments, dict) else {}}
                           for call in item.tool_calls)
            wire.append({"role": "assistant", "content": content or [{"type": "text", "text": "(no reply)"}]})
        elif isinstance(item, ToolResult):
            block = {"type": "tool_result", "tool_use_id": item.tool_call_id, "content": item.content,
                     "is_error": item.is_error}
            last = wire[-1]
            if last["role"] == "user" and isinstance(last["content"], list) and last is not wire[0]:
                last["content"].append(block)
            else:
                wire.append({"role": "user", "content": [block]})
        else:
            wire.append({"role": "user", "content": item.text})
    return wire


def _tool_call(block: dict[str, Any]) -> ToolCall:
    """A closed tool_use block: input from the joined input_json_delta pieces (or the start's input)."""
    name = block.get("name")
    if not isinstance(name, str) or not name:
        raise FatalProviderError(BAD_RESPONSE, "a tool_use block has no name")
    text = "".join(block["json"])
    arguments: Any
    if text.strip():
        try:
            arguments = json.loads(text)
        except ValueError:
            arguments = text
    else:
        arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
    call_id = block.get("id") if isinstance(block.get("id"), str) and block.get("id") else None
    return ToolCall(id=call_id or f"toolu_{uuid.uuid4().hex[:24]}", name=name, arguments=arguments)


def _dict(value: Any) -> dict[str, Any]:
    """Treat a missing or malformed sub-object as empty, so odd servers cannot crash the parser."""
    return value if isinstance(value, dict) else {}


def _int(value: Any, fallback: int) -> int:
    """Take a token count if the server sent one (a real int), else keep what we had."""
    return value if isinstance(value, int) and not isinstance(value, bool) else fallback


def _decode(event: SSEEvent, secrets: tuple[str | None, ...]) -> dict[str, Any]:
    """Parse an event's data as a JSON object or fail as a bad response."""
    try:
        payload = json.loads(event.data)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise FatalProviderError(
            BAD_RESPONSE,
            f"{event.event} event data is not a JSON object: {redact(clip(event.data, 200), secrets)}",
        )
    return payload


def _stream_error(error: Any, secrets: tuple[str | None, ...]) -> ProviderError:
    """An `error` event: overloaded/api/rate-limit errors are transient, the rest fatal."""
    kind = str(error.get("type", "")) if isinstance(error, dict) else ""
    message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
    text = redact(clip(f"{message} ({kind})" if kind else message or "unknown error"), secrets)
    if kind in TRANSIENT_ERROR_TYPES:
        return TransientProviderError(TRANSIENT_ERROR_TYPES[kind], f"upstream stream error: {text}")
    return FatalProviderError(PROVIDER_ERROR, f"upstream stream error: {text}")
