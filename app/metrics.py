"""Prometheus metrics shared by web, worker and mailbox processes (multiprocess mode when
PROMETHEUS_MULTIPROC_DIR is set, as the Procfile stack does)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from app.extensions import db

FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests", ["method", "endpoint", "status"])
HTTP_LATENCY = Histogram("http_request_seconds", "HTTP request latency", ["endpoint"], buckets=FAST)
STEP_SECONDS = Histogram("execution_step_seconds", "Duration of each chain step", ["step"], buckets=SLOW)
LLM_FIRST_DELTA = Histogram("llm_first_delta_seconds", "Time to the first streamed delta", ["provider"],
                            buckets=FAST)
LLM_SECONDS = Histogram("llm_call_seconds", "Duration of one LLM attempt", ["provider", "outcome"], buckets=SLOW)
LLM_TOKENS = Counter("llm_tokens_total", "Tokens used", ["provider", "kind"])
MESSAGES = Counter("messages_total", "Agent messages by outcome", ["outcome"])
INBOX_LAG = Histogram("inbox_lag_seconds", "From send to stored in the receiver's inbox", buckets=FAST)
PUBLISH_CONFIRM = Histogram("publish_confirm_seconds", "Publish to broker confirm", ["kind"], buckets=FAST)
ADMISSION_QUEUED = Counter("admission_queued_total", "Executions that had to wait for capacity", ["reason"])
PROVIDER_RATE_LIMITED = Counter("provider_rate_limited_total", "Provider 429 answers seen", ["scope"])
WORKSPACE_TOKENS = Counter("workspace_tokens_total", "Tokens used by provider calls", ["workspace"])
SSE_OPEN = Gauge("sse_open_streams", "Server-sent event streams open now", ["kind"], multiprocess_mode="livesum")


class ExecutionStatusCollector(Collector):
    """Executions by status, read from the database at scrape time so every process agrees."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterable[GaugeMetricFamily]:
        from app.models import Execution

        family = GaugeMetricFamily("executions", "Executions by current status", labels=["status"])
        try:
            with self.app.app_context():
                rows = db.session.execute(
                    select(Execution.status, func.count()).group_by(Execution.status)
                ).all()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is down
            rows = []
        for status, count in rows:
            family.add_metric([status], count)
        yield family


class AdmissionCollector(Collector):
    """Waiting executions by reason and slots in use per workspace and credential, read from Redis at scrape time."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterable[GaugeMetricFamily]:
        from app.services.admission import state

        queued = GaugeMetricFamily("admission_waiting", "Executions waiting for capacity now", labels=["reason"])
        workspace = GaugeMetricFamily("admission_workspace_slots", "Slots in use per workspace",
                                      labels=["workspace"])
        credential = GaugeMetricFamily("admission_credential_slots", "Slots in use per credential",
                                       labels=["credential"])
        try:
            with self.app.app_context():
                st = state()
                now = int(time.time() * 1000)
                waiting = st.queued_by_reason()
                per_workspace = st.slots_in_use("ws", now_ms=now)
                per_credential = st.slots_in_use("cred", now_ms=now)
        except Exception:  # noqa: BLE001 - a scrape must not fail because Redis is down
            waiting, per_workspace, per_credential = {}, {}, {}
        for reason, count in waiting.items():
            queued.add_metric([reason], count)
        for name, count in per_workspace.items():
            workspace.add_metric([name], count)
        for name, count in per_credential.items():
            credential.add_metric([name], count)
        yield from (queued, workspace, credential)


def _process_metrics() -> bytes:
    """This process's metrics, or every process's when running under the multiprocess stack."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    endpoint = request.endpoint or "unknown"
    if endpoint != "metrics.metrics":
        HTTP_REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None:
            HTTP_LATENCY.labels(endpoint).observe(time.perf_counter() - started)
    return response


def track_open_stream(kind: str, events: Iterator[str]) -> Iterator[str]:
    """Count an SSE stream as open for as long as its generator is being consumed."""
    gauge = SSE_OPEN.labels(kind)
    gauge.inc()
    try:
        yield from events
    finally:
        gauge.dec()


def metrics_response(app: Flask) -> Response:
    database = CollectorRegistry()
    database.register(ExecutionStatusCollector(app))
    database.register(AdmissionCollector(app))
    return Response(_process_metrics() + generate_latest(database), mimetype=CONTENT_TYPE_LATEST)


def register_metrics(app: Flask) -> None:
    app.before_request(_start_timer)
    app.after_request(_observe)
