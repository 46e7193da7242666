"""A test client that carries one workspace's API key."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.services import auth


class ApiClient:
    """Flask test client bound to a bearer key, so tests read like HTTP calls."""

    def __init__(self, client: FlaskClient, key: str, workspace_id: str) -> None:
        self.client = client
        self.key = key
        self.workspace_id = workspace_id

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **(headers or {})}

    def get(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> TestResponse:
        return self.client.get(path, headers=self._headers(headers), **kwargs)

    def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None, **kwargs: Any) -> TestResponse:
        return self.client.post(path, json=json, headers=self._headers(headers), **kwargs)

    def patch(self, path: str, json: Any = None, headers: dict[str, str] | None = None, **kwargs: Any) -> TestResponse:
        return self.client.patch(path, json=json, headers=self._headers(headers), **kwargs)

    def delete(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> TestResponse:
        return self.client.delete(path, headers=self._headers(headers), **kwargs)

    def create_agent(self, **fields: Any) -> dict[str, Any]:
        body = {"name": f"agent-{uuid.uuid4().hex[:6]}", "maturity_level": "AUTONOMOUS", **fields}
        response = self.post("/agents", json=body)
        assert response.status_code == 201, response.get_json()
        data: dict[str, Any] = response.get_json()
        return data


def new_workspace_client(app: Flask, name: str | None = None) -> ApiClient:
    """A fresh workspace with its own key: the isolation unit of the integration tests."""
    workspace_name = name or f"ws-{uuid.uuid4().hex[:12]}"
    with app.app_context():
        key, raw_key = auth.create_key(workspace_name, actor="test")
        workspace_id = key.workspace_id
    return ApiClient(app.test_client(), raw_key, workspace_id)
