"""Agents API on SQLite and PostgreSQL: create, read, update, delete, list with cursors."""

from __future__ import annotations

from flask import Flask

from tests.support.api import ApiClient, new_workspace_client


def test_create_returns_the_agent(api: ApiClient) -> None:
    response = api.post("/agents", json={"name": "writer", "maturity_level": "INTERN", "system_prompt": "Be brief."})
    assert response.status_code == 201
    agent = response.get_json()
    assert agent["name"] == "writer"
    assert agent["maturity_level"] == "INTERN"
    assert agent["status"] == "active"
    assert agent["confidence_score"] == 0.5
    assert agent["llm"] == {"provider": "scripted"}
    assert agent["created_at"].endswith("Z")
    assert api.get(f"/agents/{agent['id']}").get_json() == agent


def test_llm_config_is_kept(api: ApiClient) -> None:
    llm = {"provider": "scripted", "model": "m1", "options": {"text": "hi there"}}
    agent = api.create_agent(llm=llm)
    assert agent["llm"] == llm


def test_patch_changes_only_given_fields(api: ApiClient) -> None:
    agent = api.create_agent(name="before", maturity_level="STUDENT")
    response = api.patch(f"/agents/{agent['id']}", json={"maturity_level": "SUPERVISED", "status": "paused"})
    assert response.status_code == 200
    changed = response.get_json()
    assert changed["maturity_level"] == "SUPERVISED"
    assert changed["status"] == "paused"
    assert changed["name"] == "before"


def test_delete_hides_the_agent(api: ApiClient) -> None:
    agent = api.create_agent()
    assert api.delete(f"/agents/{agent['id']}").status_code == 204
    assert api.get(f"/agents/{agent['id']}").status_code == 404
    assert api.delete(f"/agents/{agent['id']}").status_code == 404
    assert agent["id"] not in [a["id"] for a in api.get("/agents").get_json()["items"]]


def test_list_pages_through_every_agent_once(app: Flask) -> None:
    api = new_workspace_client(app)
    created = [api.create_agent(name=f"a{i}")["id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.get("/agents", query_string=query).get_json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(created)
    assert len(seen) == len(set(seen))
    assert seen == list(reversed(created)) or set(seen) == set(created)


def test_tenancy_other_workspace_sees_404(api: ApiClient, other_api: ApiClient) -> None:
    agent = api.create_agent()
    path = f"/agents/{agent['id']}"
    assert other_api.get(path).status_code == 404
    assert other_api.patch(path, json={"name": "stolen"}).status_code == 404
    assert other_api.delete(path).status_code == 404
    assert agent["id"] not in [a["id"] for a in other_api.get("/agents").get_json()["items"]]
    assert api.get(path).get_json()["name"] == agent["name"]
