"""An agent's inbox queue is declared with it and removed with it; no broker means no agent."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import httpx
from flask import Flask

from app import create_app
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client


def queue_info(broker_url: str, name: str) -> httpx.Response:
    vhost = urlsplit(broker_url).path.lstrip("/")
    with services._management() as api:
        return api.get(f"/api/queues/{vhost}/{quote(name, safe='')}")


def test_inbox_follows_the_agent(api: ApiClient, broker_url: str) -> None:
    agent = api.create_agent()
    info = queue_info(broker_url, f"agent.{agent['id']}.inbox")
    assert info.status_code == 200
    queue = info.json()
    assert queue["durable"] is True
    assert queue["arguments"]["x-dead-letter-exchange"] == "agents.dlx"
    assert queue_info(broker_url, "agents.dead").status_code == 200
    assert api.delete(f"/agents/{agent['id']}").status_code == 204
    assert queue_info(broker_url, f"agent.{agent['id']}.inbox").status_code == 404


def test_broker_down_creates_nothing(app: Flask) -> None:
    down = create_app({**app.config, "BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"})
    api = new_workspace_client(down)
    response = api.post("/agents", json={"name": "orphan", "maturity_level": "STUDENT"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"
    assert api.get("/agents").get_json()["items"] == []
    assert [row["action"] for row in api.get("/audit").get_json()["items"]] == ["key.created"]
