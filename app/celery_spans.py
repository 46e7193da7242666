"""The kept celery instrumentation with one span kind fewer: no `apply_async` PRODUCER span for a hand-off a task
sends while its own `run` span is current (the chain's next step, a tool turn), only the context in its headers.

That span duplicated its parent: the sender's `run/<task>` span already covers the send, and the next task's
`run` span becomes its child either way. It was 2 of the 8 spans of an execution and 4 of its signal handlers.
A send from anywhere else (the POST, the sweep's or an approval's `execution.resume`, a beat or upkeep thread)
keeps its PRODUCER span, so the POST's trace still shows the broker's confirm wait.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind


def _from_a_running_task() -> bool:
    """Whether the current span is a task's `run` span (celery's CONSUMER span) of this process."""
    span = trace.get_current_span()
    return isinstance(span, ReadableSpan) and span.kind is SpanKind.CONSUMER


class HandOffCeleryInstrumentor(CeleryInstrumentor):
    """CeleryInstrumentor, but a hand-off from a running task carries the trace context without a span."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def _trace_before_publish(self, *args: Any, **kwargs: Any) -> None:
        if not _from_a_running_task():
            super()._trace_before_publish(*args, **kwargs)  # type: ignore[no-untyped-call]
            return
        headers = kwargs.get("headers")
        if headers:
            inject(headers)  # the run span's context: the next task's run span is its child

    @staticmethod
    def _trace_after_publish(*args: Any, **kwargs: Any) -> None:
        if not _from_a_running_task():  # else before_publish opened no span: nothing to end
            CeleryInstrumentor._trace_after_publish(*args, **kwargs)  # type: ignore[no-untyped-call]
