"""GET /metrics exposes the process counters and executions by status from the database."""

from __future__ import annotations

from flask import Flask

from tests.support.api import ApiClient


def test_metrics_exposition(app: Flask, api: ApiClient) -> None:
    api.create_agent()
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    for name in ("http_requests_total", "execution_step_seconds", "llm_first_delta_seconds", "messages_total",
                 "inbox_lag_seconds", "publish_confirm_seconds", "sse_open_streams", "# TYPE executions gauge"):
        assert name in text, name
    assert 'http_requests_total{endpoint="agents.create_agent",method="POST",status="201"}' in text
