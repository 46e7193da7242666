"""The real providers against the fake upstream, traced in memory: the HTTP call nests under the LLM span, and the
provider key is in no span even with every HTTP header captured."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import tracing
from tests.integration.llm.helpers import FLAVOURS, KEY, drain, provider_for
from tests.support.fake_llm_servers import FakeLLMServer


@pytest.fixture
def capturing_exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on with every request and response header captured (set before the instrumentations start)."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", ".*")
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    tracing.add_processor(processor)
    yield memory
    tracing.remove_processor(processor)


@pytest.mark.parametrize("name", FLAVOURS)
def test_the_http_call_is_a_child_of_the_llm_span_and_the_key_is_nowhere(
        name: str, fake_llm_server: FakeLLMServer, capturing_exporter: InMemorySpanExporter) -> None:
    outcome = drain(provider_for(name, fake_llm_server), message="private words")
    assert outcome.usage is not None
    spans = capturing_exporter.get_finished_spans()
    (llm,) = [span for span in spans if span.name.startswith("chat ")]
    assert dict(llm.attributes or {})["gen_ai.system"] == name
    children = [span for span in spans if span.parent is not None and span.parent.span_id == llm.context.span_id
                and span.instrumentation_scope is not None
                and span.instrumentation_scope.name == "opentelemetry.instrumentation.httpx"]
    assert len(children) == 1
    assert children[0].context.trace_id == llm.context.trace_id
    exported = "".join(span.to_json() for span in spans)
    assert "http.request.header.content_type" in exported  # the headers were captured ...
    header = "authorization" if name == "openai" else "x_api_key"
    assert dict(children[0].attributes or {})[f"http.request.header.{header}"] == ("[REDACTED]",)
    assert KEY not in exported and KEY[-8:] not in exported  # ... but not the key
    assert "private words" not in exported
