"""One OpenTelemetry span per LLM call, with the GenAI semantic-convention attributes, around any Provider.

The span is current only while the wrapped provider runs (each next()), so the provider's HTTP call, traced by the
httpx instrumentation, nests under it, and what the caller does between items (event-log writes) does not.
No message text goes into a span unless OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true; keys never do.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from app.llm.base import Delta, Message, Provider, ProviderError, ShouldStop, Stopped, StreamItem, ToolSpec, Usage

CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_tracer = trace.get_tracer("app.llm")
_active = False


def activate(on: bool) -> None:
    """Called by app.tracing when a span processor is installed (or the last one removed)."""
    global _active
    _active = on


def capture_content() -> bool:
    """Message text, prompts and tool arguments go into spans only when the operator opted in."""
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"


def wrap(provider: Provider) -> Provider:
    """The provider itself when tracing is off (nothing to pay), else a tracing wrapper."""
    return TracedProvider(provider) if _active else provider


class TracedProvider:
    """A Provider whose stream() is one `chat {model}` CLIENT span carrying gen_ai.* attributes."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.default_model = inner.default_model

    def __repr__(self) -> str:
        return f"TracedProvider({self.inner!r})"

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
        """Yield the inner provider's items unchanged; the span ends with the stream (or its error)."""
        request_model = model or self.default_model
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": self.name,
            "gen_ai.provider.name": self.name,
            "gen_ai.request.model": request_model,
            "agent_runtime.llm.attempt": attempt,
        }
        if isinstance(options.get("max_tokens"), int):
            attributes["gen_ai.request.max_tokens"] = options["max_tokens"]
        span = _tracer.start_span(f"chat {request_model}", kind=SpanKind.CLIENT, attributes=attributes)
        span_context = trace.set_span_in_context(span)
        started = time.perf_counter()
        output: list[str] = []
        try:
            items = iter(self.inner.stream(system_prompt=system_prompt, message=message, model=model,
                                           options=options, should_stop=should_stop, attempt=attempt,
                                           messages=messages, tools=tools))
            while True:
                token = context.attach(span_context)
                try:
                    item = next(items)
                except StopIteration:
                    break
                finally:
                    context.detach(token)
                if isinstance(item, Delta):
                    if not output:
                        span.set_attribute("agent_runtime.llm.time_to_first_chunk_s", time.perf_counter() - started)
                    output.append(item.text)
                elif isinstance(item, Usage):
                    _record_usage(span, item)
                yield item
        except ProviderError as exc:
            span.set_attribute("error.type", exc.code)
            if exc.status is not None:
                span.set_attribute("http.response.status_code", exc.status)
            span.set_status(Status(StatusCode.ERROR, exc.code))  # the code only: a message may quote the upstream
            raise
        except Stopped:
            span.set_attribute("agent_runtime.llm.stopped", True)
            raise
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            raise
        finally:
            if capture_content():
                _record_content(span, system_prompt, message, "".join(output))
            span.end()


def _record_usage(span: trace.Span, usage: Usage) -> None:
    """Tokens and the finish reason, from the Usage item every successful stream ends with."""
    span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    span.set_attribute("gen_ai.response.finish_reasons", [usage.finish_reason or "stop"])
    if usage.estimated:
        span.set_attribute("agent_runtime.llm.usage_estimated", True)


def _record_content(span: trace.Span, system_prompt: str | None, message: str, output: str) -> None:
    """Opt-in only: the prompt and the reply as gen_ai.input.messages / gen_ai.output.messages (JSON)."""
    messages = ([{"role": "system", "parts": [{"type": "text", "content": system_prompt}]}] if system_prompt else [])
    messages.append({"role": "user", "parts": [{"type": "text", "content": message}]})
    span.set_attribute("gen_ai.input.messages", json.dumps(messages, ensure_ascii=False))
    span.set_attribute("gen_ai.output.messages", json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": output}]}], ensure_ascii=False))
