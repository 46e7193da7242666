"""Span shape with an in-memory exporter: the LLM span's GenAI attributes, tool spans, log lines, off costs nothing."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app import tool_spans, tracing
from app.llm import get_provider, traced
from app.llm.base import Delta, FatalProviderError, Usage
from app.llm.scripted import ScriptedProvider
from app.logs import JsonFormatter

CAPTURE = traced.CAPTURE_CONTENT_ENV


def run(provider: Any, message: str = "hello there", **options: Any) -> list[Any]:
    return list(provider.stream(system_prompt="be brief", message=message, model=None, options=options,
                                should_stop=lambda: False, attempt=1))


def only(spans: tuple[ReadableSpan, ...], prefix: str) -> ReadableSpan:
    found = [span for span in spans if span.name.startswith(prefix)]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


def test_off_by_default_the_provider_is_not_wrapped() -> None:
    assert not tracing.enabled()
    assert isinstance(get_provider("scripted", api_key=None, base_url=None), ScriptedProvider)
    with tool_spans.tool_span("search", "webhook", "allowed") as span:
        assert not span.is_recording()
    assert tracing.current_traceparent() is None


def test_one_llm_span_with_genai_attributes(span_exporter: InMemorySpanExporter) -> None:
    provider = get_provider("scripted", api_key=None, base_url=None)
    assert isinstance(provider, traced.TracedProvider)
    items = run(provider, text="two words")
    usage = items[-1]
    assert isinstance(usage, Usage)
    span = only(span_exporter.get_finished_spans(), "chat ")
    assert span.name == "chat scripted-1"
    assert span.kind is SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.system"] == "scripted"
    assert attributes["gen_ai.request.model"] == "scripted-1"
    assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert "gen_ai.input.messages" not in attributes and "gen_ai.output.messages" not in attributes
    assert "hello there" not in json.dumps(attributes) and "two words" not in json.dumps(attributes)


def test_message_text_only_when_capture_is_opted_in(span_exporter: InMemorySpanExporter,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAPTURE, "true")
    run(get_provider("scripted", api_key=None, base_url=None), message="secret plan", text="the answer")
    attributes = dict(only(span_exporter.get_finished_spans(), "chat ").attributes or {})
    assert "secret plan" in str(attributes["gen_ai.input.messages"])
    assert "the answer" in str(attributes["gen_ai.output.messages"])


def test_a_failed_call_is_an_error_span_with_its_code_only(span_exporter: InMemorySpanExporter) -> None:
    provider = get_provider("scripted", api_key=None, base_url=None)
    with pytest.raises(FatalProviderError):
        run(provider, text="a b c", fail_at_chunk=1, fail_mode="fatal")
    span = only(span_exporter.get_finished_spans(), "chat ")
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["error.type"] == "scripted_failure"
    assert not span.events  # no exception text recorded


def test_the_span_is_current_only_while_the_provider_runs(span_exporter: InMemorySpanExporter) -> None:
    """Work the caller does between items (event-log writes) is not a child of the LLM span."""
    seen: list[bool] = []
    for item in get_provider("scripted", api_key=None, base_url=None).stream(
            system_prompt=None, message="m", model=None, options={"text": "a b"}, should_stop=lambda: False,
            attempt=1):
        if isinstance(item, Delta):
            seen.append(trace.get_current_span().is_recording())
    assert seen == [False, False]


def test_tool_span_records_the_decision_and_not_the_arguments(span_exporter: InMemorySpanExporter) -> None:
    with tool_spans.tool_span("lookup", "webhook", "allowed", tool_call_id="call_1",
                           arguments={"card": "4111"}) as span:
        span.set_attribute("agent_runtime.tool.status", "completed")
    with pytest.raises(RuntimeError), tool_spans.tool_span("deploy", "client", "denied"):
        raise RuntimeError("boom")
    spans = {span.name: span for span in span_exporter.get_finished_spans()}
    ok = dict(spans["execute_tool lookup"].attributes or {})
    assert ok["gen_ai.operation.name"] == "execute_tool"
    assert ok["gen_ai.tool.name"] == "lookup"
    assert ok["gen_ai.tool.call.id"] == "call_1"
    assert ok["agent_runtime.governance.decision"] == "allowed"
    assert ok["agent_runtime.tool.status"] == "completed"
    assert "4111" not in json.dumps(ok)
    assert spans["execute_tool deploy"].status.status_code is StatusCode.ERROR


def test_tool_arguments_with_capture(span_exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAPTURE, "true")
    with tool_spans.tool_span("lookup", "webhook", "allowed", arguments={"q": "x"}):
        pass
    assert dict(span_exporter.get_finished_spans()[0].attributes or {})["gen_ai.tool.call.arguments"] == '{"q": "x"}'


def test_log_lines_carry_the_trace_id(span_exporter: InMemorySpanExporter) -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "inside", None, None)
    with trace.get_tracer("test").start_as_current_span("work") as span:
        line = json.loads(JsonFormatter().format(record))
        assert str(tracing.current_traceparent()).startswith(f"00-{line['trace_id']}-{line['span_id']}-")
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        assert tracing.current_traceparent() == carrier["traceparent"]  # written as the propagator writes it
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "trace_id" not in json.loads(JsonFormatter().format(record))


def test_linked_trace_starts_a_new_trace_linked_to_the_asker(span_exporter: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("asking") as asking:
        asker = asking.get_span_context()
        with tracing.linked_trace("workflow.reply"):
            inner = trace.get_current_span().get_span_context()
    assert inner.trace_id != asker.trace_id
    reply = only(span_exporter.get_finished_spans(), "workflow.reply")
    assert [link.context.span_id for link in reply.links] == [asker.span_id]
    header = f"00-{format(asker.trace_id, '032x')}-{format(asker.span_id, '016x')}-01"
    with tracing.linked_trace("from.header", traceparent=header):
        pass
    linked = only(span_exporter.get_finished_spans(), "from.header")
    assert linked.links[0].context.trace_id == asker.trace_id


def test_span_context_of_rejects_garbage() -> None:
    assert tracing.span_context_of(None) is None
    assert tracing.span_context_of("not-a-traceparent") is None
    parsed = tracing.span_context_of("00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    assert parsed is not None and parsed.trace_id == int("a" * 32, 16)
