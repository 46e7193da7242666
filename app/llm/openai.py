"""OpenAI-compatible /chat/completions streaming (OpenAI, vLLM, Ollama, llama.cpp, OpenRouter)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from app.llm.base import (
    BAD_RESPONSE,
    INCOMPLETE_STREAM,
    INVALID_OPTIONS,
    PROVIDER_ERROR,
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
from app.llm.conversation import history_text
from app.llm.http_stream import StreamRequest, stream_lines
from app.llm.options import InvalidOptions, validate_openai
from app.llm.redact import clip, redact
from app.llm.sse import iter_events
from app.llm.stopping import check_stop
from app.llm.tokens import count_tokens

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
TRANSIENT_ERROR_TYPES = ("server_error", "rate_limit", "overloaded", "timeout", "unavailable")


class OpenAIProvider:
    """Streams a chat completion from any OpenAI-compatible endpoint; base_url includes the /v1 part."""

    name = "openai"
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
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self._transport = transport

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self.base_url!r}, api_key={'***' if self._api_key else None})"

    def build_request(
        self, *, system_prompt: str | None, message: str, model: str | None, options: dict[str, Any],
        messages: Sequence[Message] = (), tools: Sequence[ToolSpec] = (),
    ) -> StreamRequest:
        """The streaming request body and headers (the key only as a Bearer header)."""
        opts = dict(options)
        include_usage = opts.pop("include_usage", True)
        wire: list[dict[str, Any]] = []
        if system_prompt:
            wire.append({"role": "system", "content": system_prompt})
        wire.append({"role": "user", "content": message})
        wire.extend(_wire_message(item) for item in messages)
        body: dict[str, Any] = {"model": model or self.default_model, "messages": wire, "stream": True}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        if tools:
            body["tools"] = [{"type": "function", "function": {"name": tool.name, "description": tool.description,
                                                               "parameters": tool.parameters}} for tool in tools]
        body.update(opts)
        headers = {"accept": "text/event-stream", "content-type": "application/json"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        return StreamRequest(url=f"{self.base_url}/chat/completions", headers=headers, body=body)

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
        """Yield content deltas, the turn's tool calls, then Usage (estimated if none was sent)."""
        try:
            opts = validate_openai(options)
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
        usage: Usage | None = None
        finished: str | bool = False
        output: list[str] = []
        calls = _CallAssembler()
        try:
            for event in iter_events(lines):
                if event.data.strip() == "[DONE]":
                    finished = finished or True
                    break
                chunk = _decode(event.data, secrets)
                text, chunk_usage, chunk_finished = _read_chunk(chunk, secrets)
                calls.feed(chunk)
                usage = chunk_usage or usage
                finished = finished or chunk_finished
                if text:
                    check_stop(should_stop)
                    output.append(text)
                    yield Delta(text)
        finally:
            lines.close()
        if not finished:
            raise TransientProviderError(INCOMPLETE_STREAM, "stream ended before [DONE]")
        check_stop(should_stop)
        yield from calls.complete()
        reason = finished if isinstance(finished, str) else None
        yield replace(usage, finish_reason=reason) if usage else Usage(
            prompt_tokens=count_tokens(system_prompt, message, *history_text(messages)),
            completion_tokens=count_tokens("".join(output), *calls.argument_texts()),
            estimated=True,
            finish_reason=reason,
        )


def _wire_message(item: Message) -> dict[str, Any]:
    """An earlier turn in chat-completions form: assistant with tool_calls, or a role "tool" result."""
    if isinstance(item, AssistantTurn):
        out: dict[str, Any] = {"role": "assistant", "content": item.text or None}
        if item.tool_calls:
            out["tool_calls"] = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": _arguments_text(call.arguments)}}
                for call in item.tool_calls
            ]
        return out
    if isinstance(item, ToolResult):
        return {"role": "tool", "tool_call_id": item.tool_call_id, "content": item.content}
    return {"role": "user", "content": item.text}


def _arguments_text(arguments: Any) -> str:
    """Arguments as the JSON text the API carries (a raw non-JSON string is sent back as it came)."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _CallAssembler:
    """Streamed tool_calls deltas, joined per `index` (id and name come first, arguments in pieces)."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def feed(self, chunk: Any) -> None:
        """Take the tool_calls deltas of one chunk, if any."""
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        delta = choices[0].get("delta")
        deltas = delta.get("tool_calls") if isinstance(delta, dict) else None
        if not isinstance(deltas, list):
            return
        for position, item in enumerate(deltas):
            if not isinstance(item, dict):
                continue
            index = item.get("index", position)
            call = self._calls.setdefault(index if isinstance(index, int) else position, _PartialCall())
            if isinstance(item.get("id"), str) and item["id"]:
                call.id = item["id"]
            function = item.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str) and function["name"] and not call.name:
                    call.name = function["name"]
                if isinstance(function.get("arguments"), str):
                    call.arguments.append(function["arguments"])

    def complete(self) -> list[ToolCall]:
        """The finished calls in index order; arguments parsed (raw text if not JSON, {} if empty)."""
        out: list[ToolCall] = []
        for _, call in sorted(self._calls.items()):
            if not call.name:
                raise FatalProviderError(BAD_RESPONSE, "a streamed tool call has no function name")
            text = "".join(call.arguments)
            try:
                arguments: Any = json.loads(text) if text.strip() else {}
            except ValueError:
                arguments = text
            out.append(ToolCall(id=call.id or f"call_{uuid.uuid4().hex[:24]}", name=call.name, arguments=arguments))
        return out

    def argument_texts(self) -> list[str]:
        """The arguments as streamed, for token estimates."""
        return ["".join(call.arguments) for call in self._calls.values()]


def _decode(data: str, secrets: tuple[str | None, ...]) -> Any:
    """Parse one `data:` payload as JSON or fail as a bad response."""
    try:
        return json.loads(data)
    except ValueError:
        raise FatalProviderError(
            BAD_RESPONSE, f"stream chunk is not JSON: {redact(clip(data, 200), secrets)}"
        ) from None


def _read_chunk(chunk: Any, secrets: tuple[str | None, ...]) -> tuple[str, Usage | None, str | bool]:
    """Extract (choices[0].delta.content, usage, finish_reason or False) from a chat.completion.chunk."""
    if not isinstance(chunk, dict):
        raise FatalProviderError(BAD_RESPONSE, "stream chunk is not a JSON object")
    if "error" in chunk:
        raise _stream_error(chunk["error"], secrets)
    text = ""
    finished: str | bool = False
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            text = delta["content"]
        reason = choices[0].get("finish_reason")
        finished = str(reason) if reason is not None else False
    usage = None
    raw = chunk.get("usage")
    if isinstance(raw, dict):
        prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
    return text, usage, finished


def _stream_error(error: Any, secrets: tuple[str | None, ...]) -> ProviderError:
    """An error object sent inside the stream: server/rate-limit kinds are transient, the rest fatal."""
    if isinstance(error, dict):
        message = str(error.get("message") or "unknown error")
        kind = str(error.get("type") or error.get("code") or "")
    else:
        message, kind = str(error), ""
    text = redact(clip(f"{message} ({kind})" if kind else message), secrets)
    if any(marker in kind for marker in TRANSIENT_ERROR_TYPES):
        return TransientProviderError(PROVIDER_ERROR, f"upstream stream error: {text}")
    return FatalProviderError(PROVIDER_ERROR, f"upstream stream error: {text}")
