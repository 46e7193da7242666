"""Tool declarations on POST/PATCH /agents: stored when valid; 422 with details and nothing stored when not."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from tests.support.api import ApiClient

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "action": "read",
    "kind": "webhook",
    "url": "https://tools.example.com/weather",
}
CONFIRM = {"name": "confirm_order", "action": "submit", "kind": "client"}


@pytest.fixture
def allow_loopback(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.config, "WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")


def _errors(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.get_json()
    body = response.get_json()["error"]
    assert body["code"] == "validation_error"
    return list(body["details"]["errors"])


def test_tools_are_stored_and_shown(api: ApiClient) -> None:
    helper = api.create_agent(name="helper")
    ask = {"name": "ask_helper", "action": "chat", "kind": "agent", "agent_id": helper["id"]}
    agent = api.create_agent(tools=[WEATHER, CONFIRM, ask])
    assert [tool["name"] for tool in agent["tools"]] == ["get_weather", "confirm_order", "ask_helper"]
    assert agent["tools"][0] == {**WEATHER, "timeout_s": 30}
    assert agent["tools"][1] == {**CONFIRM, "description": "", "parameters": {"type": "object", "properties": {}}}
    assert api.get(f"/agents/{agent['id']}").get_json()["tools"] == agent["tools"]
    assert api.create_agent()["tools"] == []


def test_patch_replaces_and_clears_tools(api: ApiClient) -> None:
    agent = api.create_agent(tools=[WEATHER])
    changed = api.patch(f"/agents/{agent['id']}", json={"tools": [CONFIRM]}).get_json()
    assert [tool["name"] for tool in changed["tools"]] == ["confirm_order"]
    assert api.patch(f"/agents/{agent['id']}", json={"tools": []}).get_json()["tools"] == []


@pytest.mark.parametrize(
    ("tool", "field", "needle"),
    [
        ({**CONFIRM, "name": "has space"}, "name", "pattern"),
        ({**CONFIRM, "name": "x" * 65}, "name", "pattern"),
        ({**CONFIRM, "parameters": {"type": "bogus"}}, "parameters", "not a valid JSON Schema"),
        ({**CONFIRM, "parameters": {"type": "object", "properties": {"a": {"minLength": -1}}}}, "parameters",
         "properties/a/minLength"),
        ({**CONFIRM, "parameters": {"type": "string"}}, "parameters", "object"),
        ({**CONFIRM, "kind": "shell"}, "kind", "client"),
        ({**CONFIRM, "url": "https://example.com"}, "url", "only for kind 'webhook'"),
        ({**WEATHER, "url": None}, "url", "needs url"),
        ({**WEATHER, "url": "ftp://example.com/x"}, "url", "http or https"),
        ({**WEATHER, "url": "http://127.0.0.1:9/x"}, "url", "loopback"),
        ({**WEATHER, "url": "http://10.1.2.3/x"}, "url", "private"),
        ({**WEATHER, "url": "http://169.254.169.254/latest/meta-data"}, "url", "link-local"),
        ({**WEATHER, "url": "http://[::1]/x"}, "url", "loopback"),
        ({**WEATHER, "url": "http://[::ffff:192.168.0.1]/x"}, "url", "private"),
        ({**WEATHER, "url": "http://localhost:8000/x"}, "url", "loopback name"),
        ({**WEATHER, "url": "http://user:pw@example.com/x"}, "url", "credentials"),
        ({**WEATHER, "timeout_s": 0}, "timeout_s", "greater than or equal"),
        ({"name": "ask", "action": "chat", "kind": "agent"}, "agent_id", "needs agent_id"),
        ({"name": "ask", "action": "chat", "kind": "agent", "agent_id": "nope"}, "agent_id", "not found"),
        ({**CONFIRM, "action": ""}, "action", "at least 1"),
        ({**CONFIRM, "shell": "rm -rf"}, "shell", "Extra inputs"),
    ],
)
def test_bad_declarations_are_422_and_nothing_is_stored(api: ApiClient, tool: dict[str, Any], field: str,
                                                         needle: str) -> None:
    before = api.get("/agents").get_json()["items"]
    errors = _errors(api.post("/agents", json={"name": "bad", "maturity_level": "INTERN", "tools": [tool]}))
    assert any(error["loc"][:3] == ["tools", "0", field] and needle in error["msg"] for error in errors), errors
    assert api.get("/agents").get_json()["items"] == before
    agent = api.create_agent(tools=[WEATHER])
    _errors(api.patch(f"/agents/{agent['id']}", json={"tools": [WEATHER, tool]}))
    assert api.get(f"/agents/{agent['id']}").get_json()["tools"] == agent["tools"]


def test_duplicate_names_and_too_many_tools(api: ApiClient) -> None:
    errors = _errors(api.post("/agents", json={"name": "d", "maturity_level": "INTERN", "tools": [CONFIRM, CONFIRM]}))
    assert errors == [{"loc": ["tools", "1", "name"], "msg": "tool name 'confirm_order' is declared twice",
                       "type": "duplicate"}]
    many = [{**CONFIRM, "name": f"t{index}"} for index in range(33)]
    errors = _errors(api.post("/agents", json={"name": "m", "maturity_level": "INTERN", "tools": many}))
    assert errors[0]["loc"] == ["tools"]
    assert api.create_agent(tools=many[:32])["tools"][31]["name"] == "t31"


def test_every_problem_is_listed(api: ApiClient) -> None:
    tools = [{**CONFIRM, "parameters": {"type": 3}}, {**WEATHER, "url": "http://192.168.1.1/"}]
    errors = _errors(api.post("/agents", json={"name": "e", "maturity_level": "INTERN", "tools": tools}))
    assert [error["loc"] for error in errors] == [["tools", "0", "parameters"], ["tools", "1", "url"]]


def test_allowed_hosts_admit_loopback(api: ApiClient, allow_loopback: None) -> None:
    agent = api.create_agent(tools=[{**WEATHER, "url": "http://127.0.0.1:8123/hook"}])
    assert agent["tools"][0]["url"] == "http://127.0.0.1:8123/hook"
    _errors(api.post("/agents", json={"name": "x", "maturity_level": "INTERN",
                                      "tools": [{**WEATHER, "url": "http://127.0.0.2/hook"}]}))


def test_agent_tool_must_name_an_agent_of_this_workspace(api: ApiClient, other_api: ApiClient) -> None:
    stranger = other_api.create_agent()
    tool = {"name": "ask", "action": "chat", "kind": "agent", "agent_id": stranger["id"]}
    errors = _errors(api.post("/agents", json={"name": "x", "maturity_level": "INTERN", "tools": [tool]}))
    assert "not found in this workspace" in errors[0]["msg"]
    deleted = api.create_agent()
    api.delete(f"/agents/{deleted['id']}")
    _errors(api.post("/agents", json={"name": "x", "maturity_level": "INTERN",
                                      "tools": [{**tool, "agent_id": deleted["id"]}]}))
