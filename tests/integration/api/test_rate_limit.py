"""Per-key budgets: over the limit is a 429 with Retry-After; other keys are unaffected."""

from __future__ import annotations

from flask import Flask

from app import create_app
from tests.support.api import new_workspace_client


def test_budget_per_key(app: Flask) -> None:
    limited = create_app({**app.config, "RATE_LIMIT_PER_MINUTE": 3})
    api = new_workspace_client(limited)
    other = new_workspace_client(limited)
    statuses = [api.get("/agents").status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200]
    assert statuses[3:] == [429, 429]
    response = api.get("/agents")
    body = response.get_json()
    assert body["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert body["error"]["details"]["limit"] == 3
    assert other.get("/agents").status_code == 200
