"""Concurrent changes in one workspace each get a chain row: no deadlock, no fork, nothing lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from flask import Flask

from app.extensions import db
from app.models import Workspace
from tests.support.api import ApiClient, new_workspace_client


def test_concurrent_creates_keep_one_chain(app: Flask) -> None:
    api = new_workspace_client(app)

    def create(index: int) -> int:
        client = ApiClient(app.test_client(), api.key, api.workspace_id)
        return client.post("/agents", json={"name": f"c{index}", "maturity_level": "STUDENT"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(create, range(24)))
    assert statuses == [201] * 24
    assert len(api.get("/agents", query_string={"limit": 200}).get_json()["items"]) == 24
    assert api.get("/audit/verify").get_json() == {"ok": True, "checked": 25, "first_bad_id": None}
    newest = api.get("/audit", query_string={"limit": 1}).get_json()["items"][0]
    with app.app_context():
        assert db.session.get(Workspace, api.workspace_id).audit_head == newest["hash"]  # the next append links here
