"""An agent's inbox queue is declared by the first send to it and removed with the agent; registering needs no
broker."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from flask import Flask
from sqlalchemy import select

from app import create_app
from app.extensions import db
from app.models import Agent
from app.services import coordination_clients
from coordination.broker import connect
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client


def queue_info(broker_url: str, name: str) -> httpx.Response:
    vhost = urlsplit(broker_url).path.lstrip("/")
    with services._management() as api:
        return api.get(f"/api/queues/{vhost}/{quote(name, safe='')}")


def _inbox(broker_url: str, agent_id: str) -> httpx.Response:
    return queue_info(broker_url, f"agent.{agent_id}.inbox")


def _send(api: ApiClient, sender: dict[str, Any], receiver: dict[str, Any], message: Any) -> int:
    response = api.post(f"/agents/{sender['id']}/messages", json={"to_agent_id": receiver["id"], "message": message})
    return int(response.status_code)


def test_inbox_is_declared_by_the_first_send_and_removed_with_the_agent(api: ApiClient, broker_url: str) -> None:
    sender, receiver = api.create_agent(), api.create_agent()
    assert _inbox(broker_url, receiver["id"]).status_code == 404
    empty = api.get(f"/agents/{receiver['id']}/messages")
    assert empty.status_code == 200 and empty.get_json()["messages"] == []
    assert [_send(api, sender, receiver, n) for n in range(3)] == [201] * 3
    info = _inbox(broker_url, receiver["id"])
    assert info.status_code == 200
    queue = info.json()
    assert queue["durable"] is True
    assert queue["arguments"]["x-dead-letter-exchange"] == "agents.dlx"
    assert queue_info(broker_url, "agents.dead").status_code == 200
    assert _inbox(broker_url, sender["id"]).status_code == 404  # sending needs no inbox of one's own
    messages = api.get(f"/agents/{receiver['id']}/messages").get_json()["messages"]
    assert [m["message"] for m in messages] == [0, 1, 2]
    assert api.delete(f"/agents/{receiver['id']}").status_code == 204
    assert _inbox(broker_url, receiver["id"]).status_code == 404


def test_a_deleted_queue_is_declared_again_by_the_next_send(app: Flask, api: ApiClient, broker_url: str) -> None:
    sender, receiver = api.create_agent(), api.create_agent()
    assert _send(api, sender, receiver, 1) == 201
    assert len(api.get(f"/agents/{receiver['id']}/messages").get_json()["messages"]) == 1  # stored: off the queue
    vhost = urlsplit(broker_url).path.lstrip("/")
    with services._management() as management:
        name = quote(f"agent.{receiver['id']}.inbox", safe="")
        assert management.delete(f"/api/queues/{vhost}/{name}").status_code == 204
    lost = api.post(f"/agents/{sender['id']}/messages", json={"to_agent_id": receiver["id"], "message": 2})
    assert lost.status_code == 503 and lost.get_json()["error"]["details"]["reason"] == "Unroutable"
    again = api.post(f"/agents/{sender['id']}/messages", json={"to_agent_id": receiver["id"], "message": 3})
    assert again.status_code == 201
    assert [m["message"] for m in api.get(f"/agents/{receiver['id']}/messages").get_json()["messages"]] == [1, 3]


def test_the_sweep_lists_only_agents_with_an_inbox(app: Flask, api: ApiClient) -> None:
    sender, quiet, talked_to = api.create_agent(), api.create_agent(), api.create_agent()
    assert _send(api, sender, talked_to, 1) == 201
    with app.app_context():
        listed = set(coordination_clients.live_agent_ids(db.engine))
        marked = db.session.execute(select(Agent.inbox_declared_at).where(Agent.id == talked_to["id"])).scalar_one()
    assert talked_to["id"] in listed and quiet["id"] not in listed and sender["id"] not in listed
    assert marked is not None


def test_declare_inboxes_command_declares_every_missing_one(app: Flask, api: ApiClient, broker_url: str) -> None:
    made = [api.create_agent() for _ in range(3)]
    result = app.test_cli_runner().invoke(args=["agents", "declare-inboxes"])
    assert result.exit_code == 0, result.output
    assert all(_inbox(broker_url, agent["id"]).status_code == 200 for agent in made)
    again = app.test_cli_runner().invoke(args=["agents", "declare-inboxes"])
    assert again.exit_code == 0 and "declared 0 inboxes" in again.output


def test_broker_down_still_registers_agents_and_a_send_answers_503(app: Flask) -> None:
    down = create_app({**app.config, "BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"})
    api = new_workspace_client(down)
    sender = api.post("/agents", json={"name": "sender", "maturity_level": "STUDENT"})
    receiver = api.post("/agents", json={"name": "receiver", "maturity_level": "STUDENT"})
    assert sender.status_code == 201 and receiver.status_code == 201
    sent = api.post(f"/agents/{sender.get_json()['id']}/messages",
                    json={"to_agent_id": receiver.get_json()["id"], "message": "hello"})
    assert sent.status_code == 503
    assert sent.get_json()["error"]["details"]["dependency"] == "broker"
    actions = [row["action"] for row in api.get("/audit").get_json()["items"]]
    assert actions.count("agent.created") == 2 and "message.sent" not in actions


def test_an_inbox_the_broker_refuses_is_a_503_naming_the_message_and_nothing_is_sent(
    api: ApiClient, broker_url: str
) -> None:
    sender, receiver = api.create_agent(), api.create_agent()
    name = f"agent.{receiver['id']}.inbox"
    conn = connect(broker_url, timeout_s=10)
    try:
        conn.connection.channel().queue_declare(queue=name, durable=True, auto_delete=False)  # no DLX: other args
        refused = api.post(f"/agents/{sender['id']}/messages",
                           json={"to_agent_id": receiver["id"], "message": "x", "message_id": f"refused-{name}"})
        assert refused.status_code == 503, refused.get_json()
        details = refused.get_json()["error"]["details"]
        assert details["dependency"] == "broker" and details["message_id"] == f"refused-{name}"
        assert conn.connection.channel().queue_declare(queue=name, passive=True).message_count == 0
        conn.connection.channel().queue_delete(name)
    finally:
        conn.release()
    again = api.post(f"/agents/{sender['id']}/messages",
                     json={"to_agent_id": receiver["id"], "message": "x", "message_id": f"refused-{name}"})
    assert again.status_code == 201  # the retry the 503 asks for declares the inbox with the right arguments
    assert [m["message"] for m in api.get(f"/agents/{receiver['id']}/messages").get_json()["messages"]] == ["x"]
    assert _inbox(broker_url, receiver["id"]).json()["arguments"]["x-dead-letter-exchange"] == "agents.dlx"
