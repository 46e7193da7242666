"""OpenTelemetry tracing: one trace per execution, from the POST through every task to the provider's HTTP call.

On when OTEL_EXPORTER_OTLP_ENDPOINT is set (OTLP/HTTP export), or when a test passes TRACING_SPAN_PROCESSOR or
TRACING_SPAN_EXPORTER in the app's config; otherwise nothing is installed and nothing is paid. The kept
instrumentations do the work: flask (the POST), celery (a span per task, context in the task headers, so a chain
sent from within a task stays in the trace; app/celery_spans.py drops its duplicate hand-off spans), httpx (the
provider's HTTP call, under the LLM span of app.llm.traced), psycopg and redis. This module adds only what they
cannot know: the execution's stored traceparent (so a chain re-sent by the worker's sweep, or after an approval,
joins the execution's trace), a link from an execution that answers another agent to the execution that asked, the
`traceparent` response header, and tool-call spans.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app.llm import traced
from coordination.forksafe import ForkSafeLock

log = logging.getLogger(__name__)

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
# Health checks and scrapes would be most of the spans and answer no question about an execution.
EXCLUDED_URLS = "/healthz,/readyz,/metrics"
# Should an operator turn on header capture (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*), keys stay redacted.
SANITIZED_HEADERS = "authorization,x-api-key,cookie,set-cookie,proxy-authorization"
TRACEPARENT = "traceparent"
INSTRUMENTATIONS = frozenset({"flask", "celery", "httpx", "psycopg", "redis"})
# A span per SQL statement and per Redis command triples the spans of an execution and costs about 20% more CPU
# per execution (bench/tracing.py): operators who want them add "psycopg,redis".
DEFAULT_INSTRUMENTATIONS = "flask,celery,httpx"

_tracer = trace.get_tracer("app.tracing")


def tracer() -> trace.Tracer:
    """The project's tracer (app/tool_spans.py opens its spans with it)."""
    return _tracer
_propagator = TraceContextTextMapPropagator()
_lock = ForkSafeLock()


class _Fanout(SpanProcessor):
    """The process's one span processor: forwards to those installed now (tests add and remove their own)."""

    def __init__(self) -> None:
        self.processors: tuple[SpanProcessor, ...] = ()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self.processors:
            processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self.processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self.processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(processor.force_flush(timeout_millis) for processor in self.processors)


class _Process:
    """What one process installed: the provider, its fan-out, the OTLP processor by endpoint, the instrumentors."""

    def __init__(self) -> None:
        self.fanout = _Fanout()
        self.provider = TracerProvider(resource=Resource.create({
            SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", "agent-runtime"),
        }))
        self.provider.add_span_processor(self.fanout)
        self.otlp: dict[str, SpanProcessor] = {}
        self.instrumentors: dict[str, Any] = {}


_process: _Process | None = None


def enabled() -> bool:
    """Whether spans are recorded in this process (some processor is installed)."""
    return _process is not None and bool(_process.fanout.processors)


def register_tracing(app: Flask) -> None:
    """A create_app step: install tracing for this app when configured, and do nothing at all otherwise."""
    processor = _processor_for(app)
    if processor is None:
        return
    names = instrumentations(app.config.get("TRACING_INSTRUMENTATIONS"))
    add_processor(processor, names)
    if "flask" in names:
        _instrument_app(app)


def _processor_for(app: Flask) -> SpanProcessor | None:
    """A test's processor or exporter, else OTLP/HTTP to the configured endpoint, else None (off)."""
    if app.config.get("TRACING_SPAN_PROCESSOR") is not None:
        processor: SpanProcessor = app.config["TRACING_SPAN_PROCESSOR"]
        return processor
    if app.config.get("TRACING_SPAN_EXPORTER") is not None:
        exporter: SpanExporter = app.config["TRACING_SPAN_EXPORTER"]
        return SimpleSpanProcessor(exporter)
    endpoint = app.config.get(TRACES_ENDPOINT_ENV) or app.config.get(ENDPOINT_ENV)
    if not endpoint:
        return None
    process = _install()
    with _lock:
        found = process.otlp.get(endpoint)
        if found is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            traces_url = app.config.get(TRACES_ENDPOINT_ENV) or f"{endpoint.rstrip('/')}/v1/traces"
            found = process.otlp[endpoint] = BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url))
    return found


def add_processor(processor: SpanProcessor, names: frozenset[str] | None = None) -> None:
    """Record spans into `processor` too (idempotent), with the instrumentations named (default: all but flask,
    which is per app); the first processor turns tracing on in this process."""
    process = _install()
    with _lock:
        if processor not in process.fanout.processors:
            process.fanout.processors = (*process.fanout.processors, processor)
        _instrument_process(process, INSTRUMENTATIONS if names is None else names)
        traced.activate(True)


def remove_processor(processor: SpanProcessor) -> None:
    """Stop recording into `processor` (flushed first); the last one out turns the instrumentations off."""
    if _process is None:
        return
    processor.force_flush()
    with _lock:
        _process.fanout.processors = tuple(p for p in _process.fanout.processors if p is not processor)
        _process.otlp = {k: v for k, v in _process.otlp.items() if v is not processor}
        if not _process.fanout.processors:
            traced.activate(False)
            for instrumentor in _process.instrumentors.values():
                instrumentor.uninstrument()
            _process.instrumentors = {}


def force_flush(timeout_s: float = 5.0) -> None:
    """Export what is buffered now (a prefork child about to exit, a test about to read the receiver)."""
    if _process is not None:
        _process.provider.force_flush(int(timeout_s * 1000))


def _install() -> _Process:
    """The process-wide provider, set once (the API allows one global TracerProvider per process)."""
    global _process
    with _lock:
        if _process is None:
            os.environ.setdefault("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", SANITIZED_HEADERS)
            _process = _Process()
            trace.set_tracer_provider(_process.provider)
            _connect_worker_signals()
        return _process


def _instrument_process(process: _Process, names: frozenset[str]) -> None:
    """The process-wide instrumentations named (they patch libraries, not one app); under _lock."""
    for name in sorted(names - set(process.instrumentors) - {"flask"}):
        instrumentor = _instrumentor(name)
        instrumentor.instrument(tracer_provider=process.provider)
        process.instrumentors[name] = instrumentor
    _stamp_new_executions()


def _instrumentor(name: str) -> Any:
    if name == "celery":
        from app.celery_spans import HandOffCeleryInstrumentor

        return HandOffCeleryInstrumentor()
    if name == "httpx":
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        return HTTPXClientInstrumentor()
    if name == "psycopg":
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        return PsycopgInstrumentor()
    if name == "redis":
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        return RedisInstrumentor()
    raise ValueError(f"unknown instrumentation {name!r}; known: {', '.join(sorted(INSTRUMENTATIONS))}")


def instrumentations(value: str | None) -> frozenset[str]:
    """TRACING_INSTRUMENTATIONS: a comma-separated subset of INSTRUMENTATIONS (default DEFAULT_INSTRUMENTATIONS)."""
    names = frozenset(part.strip() for part in (value or DEFAULT_INSTRUMENTATIONS).split(",") if part.strip())
    unknown = names - INSTRUMENTATIONS
    if unknown:
        raise ValueError(f"TRACING_INSTRUMENTATIONS: unknown {sorted(unknown)}; known: {sorted(INSTRUMENTATIONS)}")
    return names


def _instrument_app(app: Flask) -> None:
    """The flask server span of every request but health checks, and its traceparent on the answer."""
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    if getattr(app, "_is_instrumented_by_opentelemetry", False):
        return
    FlaskInstrumentor.instrument_app(  # type: ignore[no-untyped-call]
        app, excluded_urls=EXCLUDED_URLS, tracer_provider=_install().provider, enable_commenter=False)
    app.after_request(_traceparent_header)


def _traceparent_header(response: Response) -> Response:
    """POST /agents/{id}/execute (and every traced answer) names its trace, so a client can find it in a viewer."""
    value = current_traceparent()
    if value:
        response.headers[TRACEPARENT] = value
    return response


def _connect_worker_signals() -> None:
    """Prefork children: the SDK restarts the batch export thread after fork (os.register_at_fork), so a child
    exports with the provider its parent built; what matters is flushing before a child exits (os._exit skips
    atexit). Threads and gevent pools run tasks in the main process, whose provider exits normally."""
    from celery.signals import worker_process_init, worker_process_shutdown

    def child_started(**_: Any) -> None:
        log.debug("tracing active in pool child %d", os.getpid())

    def child_stopping(**_: Any) -> None:
        force_flush()

    worker_process_init.connect(child_started, weak=False, dispatch_uid="tracing-child-init")
    worker_process_shutdown.connect(child_stopping, weak=False, dispatch_uid="tracing-child-flush")


# -- trace ids, stored and propagated ------------------------------------------------------------------------


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None when there is none (tracing off).

    The header's fixed layout written directly (what TraceContextTextMapPropagator.inject writes, without its
    carrier, setter and context lookups): it runs twice per POST, for the stored row and the response header."""
    found = trace.get_current_span().get_span_context()
    if not found.is_valid:
        return None
    return f"00-{found.trace_id:032x}-{found.span_id:016x}-{found.trace_flags:02x}"


def span_context_of(traceparent: str | None) -> trace.SpanContext | None:
    """The span context a stored or received traceparent names, or None if it is missing or malformed."""
    if not traceparent:
        return None
    found = trace.get_current_span(_propagator.extract({TRACEPARENT: traceparent})).get_span_context()
    return found if found.is_valid else None


def _stamp_new_executions() -> None:
    """Every new execution row stores the traceparent of the span that created it (its POST, or a task)."""
    from sqlalchemy import event

    from app.models import Execution

    if not event.contains(Execution, "before_insert", _stamp_traceparent):
        event.listen(Execution, "before_insert", _stamp_traceparent)


def _stamp_traceparent(_mapper: Any, _connection: Any, execution: Any) -> None:
    if execution.traceparent is None and enabled():
        execution.traceparent = current_traceparent()


@contextmanager
def execution_trace(execution_id: str) -> Iterator[None]:
    """Around sending an execution's chain: run inside the execution's own trace.

    Sent from its POST, that is already the case. Sent later (the sweep re-queues a chain no broker confirmed,
    an approval, a resumed pause), the sender's context is another trace or none: then an `execution.resume`
    span is opened under the stored traceparent, linked to the sender's span, so every task joins the trace.
    """
    if not enabled():
        yield
        return
    stored = _stored_traceparent(execution_id)
    current = trace.get_current_span().get_span_context()
    if current.is_valid and stored is not None and stored[3:35] == f"{current.trace_id:032x}":
        yield  # the common case, its POST: already in the trace (no parse of the stored header)
        return
    parent = span_context_of(stored)
    if parent is None or (current.is_valid and current.trace_id == parent.trace_id):
        yield
        return
    links = [Link(current)] if current.is_valid else []
    with _tracer.start_as_current_span("execution.resume", context=trace.set_span_in_context(
            trace.NonRecordingSpan(parent)), links=links, kind=SpanKind.INTERNAL,
            attributes={"agent_runtime.execution.id": execution_id}):
        yield


def _stored_traceparent(execution_id: str) -> str | None:
    """From the session's identity map when the row is loaded (the POST path), else one SELECT of that column."""
    from sqlalchemy import select

    from app.extensions import db
    from app.models import Execution

    loaded = db.session.identity_map.get(db.session().identity_key(Execution, execution_id))
    if loaded is not None and "traceparent" in loaded.__dict__:
        return str(loaded.traceparent) if loaded.traceparent else None
    with db.engine.connect() as connection:  # not the session: its transaction and objects stay as they are
        value = connection.execute(select(Execution.traceparent).where(Execution.id == execution_id)).scalar()
    return str(value) if value else None


@contextmanager
def linked_trace(name: str, *, traceparent: str | None = None, **attributes: Any) -> Iterator[None]:
    """A new trace for work another execution asked for (an agent answering an agent), linked to the asker.

    The link goes to `traceparent` (the asking message's header) or else to the current span. Inside the block,
    an execution created stores this new trace, so it stays one trace per execution.
    """
    if not enabled():
        yield
        return
    asker = span_context_of(traceparent) or trace.get_current_span().get_span_context()
    links = [Link(asker, {"agent_runtime.link": "asked_by"})] if asker.is_valid else []
    with _tracer.start_as_current_span(name, context=Context(), links=links, kind=SpanKind.INTERNAL,
                                       attributes=attributes):
        yield
