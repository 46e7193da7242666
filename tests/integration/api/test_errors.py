"""Bad input gets a clear 4xx in the one error shape and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.api import ApiClient


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert "Traceback" not in response.get_data(as_text=True)
    error: dict[str, Any] = body["error"]
    return error


def agent_count(api: ApiClient) -> int:
    return len(api.get("/agents", query_string={"limit": 200}).get_json()["items"])


def test_invalid_json(api: ApiClient) -> None:
    response = api.post("/agents", data="{not json", headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")
    assert agent_count(api) == 0


def test_nan_is_not_json(api: ApiClient) -> None:
    response = api.post(
        "/agents",
        data='{"name": "x", "maturity_level": "STUDENT", "confidence_score": NaN}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "invalid_json")


def test_wrong_content_type(api: ApiClient) -> None:
    response = api.post("/agents", data="name=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "maturity_level": "GENIUS"},
        {"name": "x"},
        {"maturity_level": "STUDENT"},
        {"name": "", "maturity_level": "STUDENT"},
        {"name": 5, "maturity_level": "STUDENT"},
        {"name": "x", "maturity_level": "student"},
        {"name": "x", "maturity_level": "STUDENT", "confidence_score": 2},
        {"name": "x", "maturity_level": "STUDENT", "confidence_score": "0.5"},
        {"name": "x", "maturity_level": "STUDENT", "llm": {"provider": "skynet"}},
        {"name": "x", "maturity_level": "STUDENT", "llm": "scripted"},
        {"name": "x", "maturity_level": "STUDENT", "surprise": True},
        ["not", "an", "object"],
        "just a string",
        None,
    ],
)
def test_validation_errors(api: ApiClient, body: Any) -> None:
    response = api.post("/agents", data=json.dumps(body), headers={"Content-Type": "application/json"})
    error = assert_error(response, 422, "validation_error")
    assert error["details"]["errors"]
    assert agent_count(api) == 0


def test_oversize_body(api: ApiClient) -> None:
    huge = "x" * (2 * 1024 * 1024)
    response = api.post("/agents", data=f'{{"name": "{huge}"}}', headers={"Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    assert agent_count(api) == 0


def test_patch_validation_changes_nothing(api: ApiClient) -> None:
    agent = api.create_agent(maturity_level="STUDENT")
    assert_error(api.patch(f"/agents/{agent['id']}", json={"maturity_level": "GOD"}), 422, "validation_error")
    assert_error(api.patch(f"/agents/{agent['id']}", json={"status": "deleted"}), 422, "validation_error")
    assert api.get(f"/agents/{agent['id']}").get_json() == agent


def test_unknown_route_and_method(api: ApiClient) -> None:
    assert_error(api.get("/nowhere"), 404, "not_found")
    assert_error(api.client.get("/nowhere"), 404, "not_found")
    response = api.client.put("/agents", headers={"Authorization": f"Bearer {api.key}"})
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer ", "Basic abc", "Bearer ar_not_a_key"])
def test_unauthorized(api: ApiClient, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    assert_error(api.client.get("/agents", headers=headers), 401, "unauthorized")
    assert_error(api.client.post("/agents", json={"name": "x", "maturity_level": "STUDENT"}, headers=headers),
                 401, "unauthorized")


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "abc"}, {"cursor": "garbage!"}])
def test_bad_list_parameters(api: ApiClient, query: dict[str, str]) -> None:
    assert_error(api.get("/agents", query_string=query), 422, "validation_error")
    assert_error(api.get("/audit", query_string=query), 422, "validation_error")
