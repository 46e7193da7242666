"""Tracing on for one test, recording into memory (the in-memory exporter of the SDK), off again afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import tracing


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    tracing.add_processor(processor)
    yield memory
    tracing.remove_processor(processor)
