"""Limits through the API on SQLite and PostgreSQL: credential limits, workspace limits (command), queued reason,
max_tokens, the daily token budget's 429, and GET /usage."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import func, select, update

from app.extensions import db
from app.models import Execution
from app.services import admission
from tests.support.api import ApiClient, new_workspace_client

KEY = "sk-limits-0123456789"


def _workspace(app: Flask) -> tuple[ApiClient, str]:
    name = f"ws-{uuid.uuid4().hex[:12]}"
    return new_workspace_client(app, name), name


def _limits(app: Flask, name: str, *args: str) -> Any:
    result = app.test_cli_runner().invoke(args=["workspaces", "limits", name, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_credential_limits_are_stored_and_shown(api: ApiClient) -> None:
    created = api.post("/credentials", json={"provider": "openai", "api_key": KEY, "base_url": "http://127.0.0.1:9/v1",
                                             "limits": {"max_concurrency": 2, "tokens_per_minute": 1000}})
    assert created.status_code == 201, created.get_json()
    limits = {"max_concurrency": 2, "requests_per_minute": 0, "tokens_per_minute": 1000}
    assert created.get_json()["limits"] == limits
    shown = api.get(f"/credentials/{created.get_json()['id']}")
    assert shown.status_code == 200 and shown.get_json()["limits"] == limits
    assert KEY not in shown.get_data(as_text=True)
    listed = api.get("/credentials").get_json()["items"]
    assert [c["id"] for c in listed] == [created.get_json()["id"]]
    plain = api.post("/credentials", json={"provider": "openai", "api_key": KEY}).get_json()
    assert plain["limits"] == {"max_concurrency": 0, "requests_per_minute": 0, "tokens_per_minute": 0}


def test_bad_credential_limits_are_refused_and_nothing_is_stored(api: ApiClient) -> None:
    for limits in ({"max_concurrency": -1}, {"tokens_per_minute": "10"}, {"burst": 3}, {"max_concurrency": 1.5}):
        response = api.post("/credentials", json={"provider": "openai", "api_key": KEY, "limits": limits})
        assert response.status_code == 422, limits
        assert response.get_json()["error"]["code"] == "validation_error"
    assert api.get("/credentials").get_json()["items"] == []


def test_an_execution_over_its_workspace_limit_waits_pending_and_says_why(app: Flask) -> None:
    api, name = _workspace(app)
    assert '"max_concurrency": 1' in _limits(app, name, "--max-concurrency", "1")
    agent = api.create_agent(llm={"provider": "scripted", "options": {"hang_s": 60}})
    first = api.post(f"/agents/{agent['id']}/execute", json={"message": "one"}).get_json()
    second = api.post(f"/agents/{agent['id']}/execute", json={"message": "two"}).get_json()
    try:
        shown = api.get(f"/executions/{second['execution_id']}").get_json()
        assert shown["status"] == "pending"
        assert shown["queued"] == {"reason": "workspace_concurrency"}
        assert api.get(f"/executions/{first['execution_id']}").get_json()["queued"] is None
    finally:
        for execution in (second, first):
            api.post(f"/executions/{execution['execution_id']}/cancel")
    assert api.get(f"/executions/{second['execution_id']}").get_json()["status"] == "cancelled"


def test_max_tokens_is_recorded_and_validated(api: ApiClient) -> None:
    agent = api.create_agent()
    accepted = api.post(f"/agents/{agent['id']}/execute", json={"message": "hi", "max_tokens": 64})
    assert accepted.status_code == 200
    assert api.get(f"/executions/{accepted.get_json()['execution_id']}").get_json()["max_tokens"] == 64
    for bad in (0, -3, "64", 10**7):
        response = api.post(f"/agents/{agent['id']}/execute", json={"message": "hi", "max_tokens": bad})
        assert response.status_code == 422, bad


def _spend(app: Flask, execution_id: str, prompt: int, completion: int, created_at: datetime | None = None) -> None:
    with app.app_context():
        values: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
        if created_at is not None:
            values["created_at"] = created_at
        db.session.execute(update(Execution).where(Execution.id == execution_id).values(**values))
        db.session.commit()


def _count(app: Flask, workspace_id: str) -> int:
    with app.app_context():
        return int(db.session.execute(
            select(func.count()).select_from(Execution).where(Execution.workspace_id == workspace_id)).scalar_one())


def test_a_workspace_past_tokens_per_day_gets_429_with_reset_at_and_nothing_recorded(app: Flask) -> None:
    api, name = _workspace(app)
    agent = api.create_agent()
    first = api.post(f"/agents/{agent['id']}/execute", json={"message": "hi"}).get_json()
    _spend(app, first["execution_id"], 60, 50)
    _limits(app, name, "--tokens-per-day", "100")
    before = _count(app, api.workspace_id)
    refused = api.post(f"/agents/{agent['id']}/execute", json={"message": "again"})
    assert refused.status_code == 429
    error = refused.get_json()["error"]
    assert error["code"] == "rate_limited"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert error["details"]["limit"] == "tokens_per_day"
    assert error["details"]["reset_at"] == f"{tomorrow}T00:00:00.000000Z"
    assert _count(app, api.workspace_id) == before
    _limits(app, name, "--tokens-per-day", "0")  # unlimited again
    assert api.post(f"/agents/{agent['id']}/execute", json={"message": "again"}).status_code == 200


def test_usage_grouped_by_agent_model_and_day(app: Flask) -> None:
    api = new_workspace_client(app)
    other = new_workspace_client(app)
    one = api.create_agent(llm={"provider": "scripted"})
    two = api.create_agent(llm={"provider": "scripted", "model": "scripted-big"})
    yesterday = datetime.now(UTC) - timedelta(days=1)
    spent = [(one, 10, 5, yesterday), (one, 20, 5, None), (two, 7, 3, None)]
    for agent, prompt, completion, when in spent:
        execution = api.post(f"/agents/{agent['id']}/execute", json={"message": "m"}).get_json()
        _spend(app, execution["execution_id"], prompt, completion, when)
    stranger = other.create_agent()
    other.post(f"/agents/{stranger['id']}/execute", json={"message": "not mine"})

    by_agent = api.get("/usage?group_by=agent").get_json()["items"]
    assert sorted(by_agent, key=lambda i: i["prompt_tokens"]) == [
        {"key": two["id"], "executions": 1, "prompt_tokens": 7, "completion_tokens": 3},
        {"key": one["id"], "executions": 2, "prompt_tokens": 30, "completion_tokens": 10},
    ]
    by_model = {i["key"]: i for i in api.get("/usage?group_by=model").get_json()["items"]}
    assert by_model["scripted/scripted-1"]["prompt_tokens"] == 30
    assert by_model["scripted/scripted-big"]["executions"] == 1
    by_day = api.get("/usage?group_by=day").get_json()["items"]
    assert [i["key"] for i in by_day] == [yesterday.date().isoformat(), datetime.now(UTC).date().isoformat()]
    assert [i["prompt_tokens"] for i in by_day] == [10, 27]
    today = datetime.now(UTC).date().isoformat()
    assert [i["executions"] for i in api.get(f"/usage?from={today}&group_by=day").get_json()["items"]] == [2]


def test_bad_usage_parameters_are_422(api: ApiClient) -> None:
    for query in ("group_by=tool", "from=yesterday", "from=2026-12-02&to=2026-12-01", "from=2020-01-01&to=2026-01-01",
                  "to=2026-13-01"):
        response = api.get(f"/usage?{query}")
        assert response.status_code == 422, query
        assert response.get_json()["error"]["code"] == "validation_error"


def test_metrics_show_waiting_executions_slots_429s_and_tokens(app: Flask) -> None:
    api, name = _workspace(app)
    _limits(app, name, "--max-concurrency", "1")
    agent = api.create_agent(llm={"provider": "scripted", "options": {"hang_s": 60}})
    ids = [api.post(f"/agents/{agent['id']}/execute", json={"message": "m"}).get_json()["execution_id"]
           for _ in range(2)]
    try:
        with app.app_context():
            admission.on_rate_limited("some-credential", 0.01)
            reservation = admission.state().reserve_call(ids[0], est=5, now_ms=admission.service.now_ms(),
                                                         expiry_ms=admission.service.now_ms() + 60_000)
            admission.release(reservation, prompt_tokens=3, completion_tokens=4)
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert 'admission_waiting{reason="workspace_concurrency"}' in text
        assert f'admission_workspace_slots{{workspace="{api.workspace_id}"}} 1.0' in text
        assert 'admission_queued_total{reason="workspace_concurrency"}' in text
        assert 'provider_rate_limited_total{scope="credential"}' in text
        assert f'workspace_tokens_total{{workspace="{api.workspace_id}"}} 7.0' in text
    finally:
        for execution_id in reversed(ids):
            api.post(f"/executions/{execution_id}/cancel")
