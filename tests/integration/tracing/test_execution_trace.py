"""The stored traceparent: a chain sent later (the sweep, an approval) joins the execution's trace, both databases."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.extensions import db
from app.models import Execution
from app.services.executions import sweeps
from app.services.executions.events import event_log
from app.services.executions.requests import ENQUEUE_EXTENSION
from app.timeutil import utcnow
from tasks.chain import enqueuer
from tests.support.api import ApiClient

tracer = trace.get_tracer("test")


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def stored(app: Flask, execution_id: str) -> str | None:
    with app.app_context():
        row = db.session.get(Execution, execution_id)
        assert row is not None
        return row.traceparent


def test_the_sweep_resends_a_stranded_chain_inside_the_executions_trace(
        app: Flask, api: ApiClient, span_exporter: InMemorySpanExporter) -> None:
    agent = api.create_agent()
    # The web process dies between the commit and the publish: no chain reaches the broker (where a worker of
    # another test module, on the same vhost, would run it).
    sent_chain = app.extensions[ENQUEUE_EXTENSION]
    app.extensions[ENQUEUE_EXTENSION] = lambda execution_id, task_ids: None
    try:
        with tracer.start_as_current_span("POST execute") as post:
            execution_id = api.post(f"/agents/{agent['id']}/execute",
                                    json={"message": "hi"}).get_json()["execution_id"]
    finally:
        app.extensions[ENQUEUE_EXTENSION] = sent_chain
    origin = post.get_span_context()
    traceparent = stored(app, execution_id)
    assert traceparent is not None and traceparent.split("-")[1] == format(origin.trace_id, "032x")

    with app.app_context():  # as the sweep thread does: no span of its own, the row older than the cutoff
        db.session.execute(db.update(Execution).where(Execution.id == execution_id)
                           .values(created_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
        event_log().unmark_queued(execution_id)
        requeued = sweeps.requeue_stranded(enqueuer(app.extensions["celery"]), older_than_s=60)
    assert execution_id in requeued

    (resume,) = [span for span in named(span_exporter, "execution.resume")
                 if dict(span.attributes or {})["agent_runtime.execution.id"] == execution_id]
    assert resume.context.trace_id == origin.trace_id
    assert resume.parent is not None and resume.parent.span_id == origin.span_id
    assert not resume.links
    sent = [span for span in named(span_exporter, "apply_async/executions.governance")
            if span.parent is not None and span.parent.span_id == resume.context.span_id]
    assert len(sent) == 1 and sent[0].context.trace_id == origin.trace_id


def test_an_approval_sends_the_chain_in_the_executions_trace_linked_to_the_approval(
        app: Flask, api: ApiClient, span_exporter: InMemorySpanExporter) -> None:
    agent = api.create_agent(maturity_level="INTERN")
    with tracer.start_as_current_span("POST execute") as post:
        body = api.post(f"/agents/{agent['id']}/execute", json={"message": "hi", "action": "create"}).get_json()
    assert body["status"] == "awaiting_approval"
    with tracer.start_as_current_span("POST approve") as approval:
        assert api.post(f"/executions/{body['execution_id']}/approve").status_code == 202
    (resume,) = [span for span in named(span_exporter, "execution.resume")
                 if dict(span.attributes or {})["agent_runtime.execution.id"] == body["execution_id"]]
    assert resume.context.trace_id == post.get_span_context().trace_id
    assert [link.context.span_id for link in resume.links] == [approval.get_span_context().span_id]


def test_sent_from_its_own_post_no_extra_span(app: Flask, api: ApiClient,
                                              span_exporter: InMemorySpanExporter) -> None:
    agent = api.create_agent()
    with tracer.start_as_current_span("POST execute") as post:
        execution_id = api.post(f"/agents/{agent['id']}/execute", json={"message": "hi"}).get_json()["execution_id"]
    assert not [span for span in named(span_exporter, "execution.resume")
                if dict(span.attributes or {})["agent_runtime.execution.id"] == execution_id]
    sent = named(span_exporter, "apply_async/executions.governance")
    assert any(span.parent is not None and span.parent.span_id == post.get_span_context().span_id for span in sent)


def test_tracing_off_stores_nothing(app: Flask, api: ApiClient) -> None:
    agent = api.create_agent()
    execution_id = api.post(f"/agents/{agent['id']}/execute", json={"message": "hi"}).get_json()["execution_id"]
    assert stored(app, execution_id) is None
