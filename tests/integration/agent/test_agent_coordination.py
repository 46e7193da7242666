"""Agent coordination through the REST API on the real RabbitMQ, PostgreSQL/SQLite and (for workflows) a real worker:
confirmed sends, FIFO inboxes, SSE streams, workspace-scoped events, the mailbox process, tenancy, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import amqp
import httpx
import pytest
from flask import Flask
from sqlalchemy import select

from app import create_app
from app.extensions import db
from coordination import schema
from coordination.topology import AGENTS_EXCHANGE
from tests.integration.agent.test_agent_execution_orchestration import events, execute, wait_status
from tests.integration.coordination.test_stalled_broker import StallingProxy
from tests.support.api import ApiClient, new_workspace_client
from tests.support.tools import call_id, tool_agent
from tests.support.web import WebProcess

ROOT = Path(__file__).resolve().parents[3]
FLASK = str(Path(sys.executable).with_name("flask"))


# --- helpers -----------------------------------------------------------------------------------------------


def send(api: ApiClient, sender: str, receiver: str, message: Any, **fields: Any) -> dict[str, Any]:
    response = api.post(f"/agents/{sender}/messages", json={"to_agent_id": receiver, "message": message, **fields})
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    assert body["status"] == "confirmed"
    return body


def inbox(api: ApiClient, agent_id: str, **params: Any) -> list[dict[str, Any]]:
    response = api.get(f"/agents/{agent_id}/messages", query_string={"limit": 1000, **params})
    assert response.status_code == 200, response.get_json()
    messages: list[dict[str, Any]] = response.get_json()["messages"]
    return messages


def actions(api: ApiClient) -> list[str]:
    return [row["action"] for row in api.get("/audit", query_string={"limit": 200}).get_json()["items"]]


def stored_rows(app: Flask, agent_id: str) -> list[str]:
    """message_ids in the inbox table in seq order, read without draining the queue."""
    table = schema.inbox_messages
    with app.app_context():
        query = select(table.c.message_id).where(table.c.to_agent_id == agent_id).order_by(table.c.seq)
        return [row.message_id for row in db.session.execute(query)]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def sse_blocks(response: Any) -> Iterator[str]:
    """Raw SSE blocks (events and comments) of a streaming test response."""
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield block


def parse_block(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.split("\n"):
        name, _, value = line.partition(": ")
        fields[name] = value
    return fields


def read_events(blocks: Iterator[str], count: int) -> list[dict[str, str]]:
    events: list[dict[str, str]] = []
    for block in blocks:
        if block.startswith(":"):
            continue
        events.append(parse_block(block))
        if len(events) == count:
            break
    return events


# --- messaging -------------------------------------------------------------------------------------------------


def test_agent_to_agent_messaging(api: ApiClient) -> None:
    """A confirmed message is readable at once, with every documented field, and leaves audit rows."""
    alice, bob = api.create_agent(name="alice"), api.create_agent(name="bob")
    sent = send(api, alice["id"], bob["id"], "hello bob", correlation_id="conv-1")
    structured = send(api, alice["id"], bob["id"], {"task": "sum", "args": [1, 2, 3], "nested": {"ok": True}})
    assert sent["execution_id"] is None
    messages = inbox(api, bob["id"])
    assert [m["message_id"] for m in messages] == [sent["message_id"], structured["message_id"]]
    first = messages[0]
    assert first["message"] == "hello bob"
    assert first["from_agent_id"] == alice["id"] and first["to_agent_id"] == bob["id"]
    assert first["correlation_id"] == "conv-1" and first["hop"] == 0
    assert first["seq"] < messages[1]["seq"]
    assert first["sent_at"] <= first["delivered_at"]
    assert messages[1]["message"] == {"task": "sum", "args": [1, 2, 3], "nested": {"ok": True}}
    assert inbox(api, alice["id"]) == []
    audit = actions(api)
    assert audit.count("message.sent") == 2 and audit.count("message.stored") == 2
    assert api.get("/audit/verify").get_json()["ok"] is True


def test_message_ordering_fifo(api: ApiClient) -> None:
    """Sequential sends appear in the order their sends returned; after/limit page through them."""
    alice, bob, carol = (api.create_agent() for _ in range(3))
    sent = []
    for i in range(30):
        sender = alice if i % 3 else carol
        sent.append(send(api, sender["id"], bob["id"], i)["message_id"])
        if i % 10 == 0:
            assert [m["message_id"] for m in inbox(api, bob["id"])] == sent
    messages = inbox(api, bob["id"])
    assert [m["message_id"] for m in messages] == sent
    assert [m["message"] for m in messages] == list(range(30))
    page = api.get(f"/agents/{bob['id']}/messages", query_string={"limit": 10}).get_json()
    assert [m["message"] for m in page["messages"]] == list(range(10))
    rest = api.get(f"/agents/{bob['id']}/messages", query_string={"after": page["next_after"]}).get_json()
    assert [m["message"] for m in rest["messages"]] == list(range(10, 30))
    empty = api.get(f"/agents/{bob['id']}/messages", query_string={"after": rest["next_after"]}).get_json()
    assert empty == {"messages": [], "next_after": rest["next_after"]}


def test_retry_with_the_same_message_id_never_duplicates(api: ApiClient, other_api: ApiClient) -> None:
    alice, bob = api.create_agent(), api.create_agent()
    message_id = f"client-{uuid.uuid4().hex}"
    for _ in range(3):
        assert send(api, alice["id"], bob["id"], "once", message_id=message_id)["message_id"] == message_id
    assert [m["message_id"] for m in inbox(api, bob["id"])] == [message_id]
    # Another workspace reusing that id would have its message silently dropped: refused instead.
    x, y = other_api.create_agent(), other_api.create_agent()
    response = other_api.post(f"/agents/{x['id']}/messages",
                              json={"to_agent_id": y["id"], "message": "mine", "message_id": message_id})
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "conflict"


def test_message_stream_replays_then_follows(api: ApiClient) -> None:
    alice, bob = api.create_agent(), api.create_agent()
    first = [send(api, alice["id"], bob["id"], i)["message_id"] for i in range(3)]
    response = api.get(f"/agents/{bob['id']}/messages/stream", buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    blocks = sse_blocks(response)
    replayed = read_events(blocks, 3)
    assert [json.loads(e["data"])["message_id"] for e in replayed] == first
    assert {e["event"] for e in replayed} == {"message"}
    live = send(api, alice["id"], bob["id"], "live")["message_id"]
    (event,) = read_events(blocks, 1)
    assert json.loads(event["data"])["message_id"] == live
    response.close()
    # Resume after the second message with Last-Event-ID: exactly the rest, nothing repeated.
    resumed = api.get(f"/agents/{bob['id']}/messages/stream", headers={"Last-Event-ID": replayed[1]["id"]},
                      buffered=False)
    events = read_events(sse_blocks(resumed), 2)
    resumed.close()
    assert [json.loads(e["data"])["message_id"] for e in events] == [first[2], live]


# --- events ----------------------------------------------------------------------------------------------------


def test_event_bus_communication(api: ApiClient, other_api: ApiClient) -> None:
    """Subscribe first (the `: subscribed` line), then publish: every matching event, none of another workspace."""
    response = api.get("/events/stream", query_string={"pattern": "order.#"}, buffered=False)
    assert response.status_code == 200
    blocks = sse_blocks(response)
    assert next(blocks) == ": subscribed"
    foreign = other_api.get("/events/stream", query_string={"pattern": "#"}, buffered=False)
    foreign_blocks = sse_blocks(foreign)
    assert next(foreign_blocks) == ": subscribed"

    published = []
    for event_type, data in [("order.created", {"id": 1}), ("invoice.sent", {"id": 2}), ("order.paid.card", [3])]:
        accepted = api.post("/events", json={"event_type": event_type, "data": data})
        assert accepted.status_code == 202
        published.append((accepted.get_json()["event_id"], event_type, data))
    events = read_events(blocks, 2)
    response.close()
    assert [e["event"] for e in events] == ["order.created", "order.paid.card"]
    bodies = [json.loads(e["data"]) for e in events]
    assert [(b["event_id"], b["event_type"], b["data"]) for b in bodies] == [published[0], published[2]]
    assert all(b["published_at"].endswith("Z") for b in bodies)
    assert actions(api).count("event.published") == 3

    # The other workspace's `#` subscriber saw none of them: its next event is its own.
    own = other_api.post("/events", json={"event_type": "ping", "data": None}).get_json()["event_id"]
    (event,) = read_events(foreign_blocks, 1)
    foreign.close()
    assert json.loads(event["data"])["event_id"] == own


def test_agent_lifecycle_events_reach_the_workspace(api: ApiClient) -> None:
    response = api.get("/events/stream", query_string={"pattern": "agent.*"}, buffered=False)
    blocks = sse_blocks(response)
    assert next(blocks) == ": subscribed"
    agent = api.create_agent()
    assert api.delete(f"/agents/{agent['id']}").status_code == 204
    events = read_events(blocks, 2)
    response.close()
    assert [e["event"] for e in events] == ["agent.created", "agent.deleted"]
    assert all(json.loads(e["data"])["data"]["agent_id"] == agent["id"] for e in events)


# --- tenancy and bad input ---------------------------------------------------------------------------------------


def test_tenancy_is_404(api: ApiClient, other_api: ApiClient) -> None:
    mine, theirs = api.create_agent(), other_api.create_agent()
    gone = api.create_agent()
    assert api.delete(f"/agents/{gone['id']}").status_code == 204
    cases = [
        api.post(f"/agents/{mine['id']}/messages", json={"to_agent_id": theirs["id"], "message": "x"}),
        api.post(f"/agents/{theirs['id']}/messages", json={"to_agent_id": mine["id"], "message": "x"}),
        api.post(f"/agents/{mine['id']}/messages", json={"to_agent_id": gone["id"], "message": "x"}),
        api.post(f"/agents/{mine['id']}/messages", json={"to_agent_id": "no-such-agent", "message": "x"}),
        api.get(f"/agents/{theirs['id']}/messages"),
        api.get(f"/agents/{theirs['id']}/messages/stream"),
        api.get(f"/agents/{theirs['id']}/dead-letters"),
    ]
    assert [(r.status_code, r.get_json()["error"]["code"]) for r in cases] == [(404, "not_found")] * len(cases)
    assert inbox(other_api, theirs["id"]) == []
    assert "message.sent" not in actions(api)
    assert api.get(f"/agents/{mine['id']}/dead-letters").get_json() == {"items": []}


def test_bad_input_is_4xx_and_changes_nothing(api: ApiClient) -> None:
    alice, bob = api.create_agent(), api.create_agent()
    before = actions(api)
    path = f"/agents/{alice['id']}/messages"
    cases = [
        (api.post(path, data="{not json", headers={"Content-Type": "application/json"}), 400, "invalid_json"),
        (api.post(path, data="x", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
        (api.post(path, json={"message": "no receiver"}), 422, "validation_error"),
        (api.post(path, json={"to_agent_id": bob["id"]}), 422, "validation_error"),
        (api.post(path, json={"to_agent_id": bob["id"], "message": "x", "extra": 1}), 422, "validation_error"),
        (api.post(path, json={"to_agent_id": bob["id"], "message": "x", "message_id": "has space"}), 422,
         "validation_error"),
        (api.post(path, json={"to_agent_id": bob["id"], "message": "x", "execute": "yes"}), 422, "validation_error"),
        (api.post(path, json={"to_agent_id": bob["id"], "message": "x" * (256 * 1024)}), 413, "payload_too_large"),
        (api.post(path, json={"to_agent_id": bob["id"], "message": "", "execute": True}), 422, "validation_error"),
        (api.get(f"/agents/{bob['id']}/messages?after=-1"), 422, "validation_error"),
        (api.get(f"/agents/{bob['id']}/messages?limit=0"), 422, "validation_error"),
        (api.get(f"/agents/{bob['id']}/messages/stream?after=x"), 422, "validation_error"),
        (api.post("/events", json={"event_type": "order.*", "data": 1}), 422, "validation_error"),
        (api.post("/events", json={"event_type": "a..b"}), 422, "validation_error"),
        (api.post("/events", json={"event_type": "big", "data": "x" * (256 * 1024 + 1)}), 413, "payload_too_large"),
        (api.get("/events/stream?pattern=a..b"), 422, "validation_error"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.get_json()["error"]["code"]) == (status, code), response.get_json()
    assert inbox(api, bob["id"]) == []
    assert actions(api) == before


def test_broker_down_is_503_and_changes_nothing(app: Flask, api: ApiClient) -> None:
    alice, bob, carol = api.create_agent(), api.create_agent(), api.create_agent()
    send(api, carol["id"], bob["id"], "first")  # bob's inbox queue exists now
    down = new_client_on(create_app({**app.config, "BROKER_URL": "amqp://guest:guest@127.0.0.1:1//"}), api)
    response = down.post(f"/agents/{alice['id']}/messages", json={"to_agent_id": bob["id"], "message": "lost?"})
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "unavailable" and error["details"]["dependency"] == "broker"
    assert down.post("/events", json={"event_type": "x", "data": 1}).status_code == 503
    assert down.get(f"/agents/{bob['id']}/messages").status_code == 503  # its queue cannot be drained
    never_sent_to = down.get(f"/agents/{alice['id']}/messages")  # no queue, so nothing to drain: the table answers
    assert never_sent_to.status_code == 200 and never_sent_to.get_json()["messages"] == []
    assert [m["message"] for m in inbox(api, bob["id"])] == ["first"]
    assert actions(api).count("message.sent") == 1 and "event.published" not in actions(api)


def test_stalled_broker_is_a_bounded_503(pg_app: Flask) -> None:
    """No confirm within CONFIRM_TIMEOUT_S (a stalled TCP proxy): 503 in time, never a hang."""
    api = new_workspace_client(pg_app)
    alice, bob = api.create_agent(), api.create_agent()
    parts = urlsplit(pg_app.config["BROKER_URL"])
    proxy = StallingProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    try:
        url = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
        stalled = new_client_on(create_app({**pg_app.config, "BROKER_URL": url, "CONFIRM_TIMEOUT_S": 0.5}), api)
        send(stalled, alice["id"], bob["id"], "warm-up")  # connected through the proxy
        proxy.stalled.set()
        started = time.monotonic()
        response = stalled.post(f"/agents/{alice['id']}/messages",
                                json={"to_agent_id": bob["id"], "message": "stuck", "message_id": "stalled-1"})
        assert response.status_code == 503 and time.monotonic() - started < 5
    finally:
        proxy.close()
    # The retry the 503 asks for (same message_id) goes through once the broker answers: exactly one copy.
    send(api, alice["id"], bob["id"], "stuck", message_id="stalled-1")
    assert [m["message"] for m in inbox(api, bob["id"])].count("stuck") == 1


def new_client_on(app: Flask, api: ApiClient) -> ApiClient:
    """The same workspace key against another app instance (same database, other broker settings)."""
    return ApiClient(app.test_client(), api.key, api.workspace_id)


# --- the mailbox process -----------------------------------------------------------------------------------------


@pytest.fixture
def mailbox(
    pg_app: Flask, pg_url: str, broker_url: str, tmp_path: Path
) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts `flask --app wsgi mailbox run` on the run's PostgreSQL and vhost; stops what it started."""
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "DATABASE_URL": pg_url, "BROKER_URL": broker_url, "MAILBOX_POLL_INTERVAL": "0.02",
           "PYTHONUNBUFFERED": "1"}

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / "mailbox.log").open("ab") as log:
            proc = subprocess.Popen([FLASK, "--app", "wsgi", "mailbox", "run"], cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_delivery_across_a_mailbox_kill(pg_app: Flask, mailbox: Callable[[], subprocess.Popen[bytes]]) -> None:
    """SIGKILL the mailbox process mid-stream and restart it: every confirmed message stored once, in order."""
    api = new_workspace_client(pg_app)
    alice, bob = api.create_agent(), api.create_agent()
    proc = mailbox()
    sent = [send(api, alice["id"], bob["id"], i)["message_id"] for i in range(60)]
    assert wait_for(lambda: len(stored_rows(pg_app, bob["id"])) > 0)  # the mailbox, not a read, stored them
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    sent += [send(api, alice["id"], bob["id"], i)["message_id"] for i in range(60, 100)]
    proc = mailbox()
    sent += [send(api, alice["id"], bob["id"], i)["message_id"] for i in range(100, 120)]
    assert wait_for(lambda: len(stored_rows(pg_app, bob["id"])) >= 120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert stored_rows(pg_app, bob["id"]) == sent
    assert actions(api).count("message.stored") == 120


def test_mailbox_picks_up_new_agents_and_dead_letters(pg_app: Flask, broker_url: str,
                                                      mailbox: Callable[[], subprocess.Popen[bytes]]) -> None:
    """A new agent's inbox is drained without waiting for a refresh; poison goes to agents.dead and the API."""
    api = new_workspace_client(pg_app)
    mailbox()
    time.sleep(0.5)  # running, with its agent list read
    alice, bob = api.create_agent(), api.create_agent()
    ok = send(api, alice["id"], bob["id"], "fine")["message_id"]
    publish_raw(broker_url, bob["id"], b"{not json", "poison-" + uuid.uuid4().hex, api.workspace_id, alice["id"])
    assert wait_for(lambda: ok in stored_rows(pg_app, bob["id"]))
    assert wait_for(lambda: len(api.get(f"/agents/{bob['id']}/dead-letters").get_json()["items"]) == 1)
    (dead,) = api.get(f"/agents/{bob['id']}/dead-letters").get_json()["items"]
    assert dead["body"] == "{not json" and dead["reason"] == "rejected"
    assert wait_for(lambda: "message.dead_lettered" in actions(api))
    assert [m["message_id"] for m in inbox(api, bob["id"])] == [ok]


def publish_raw(broker_url: str, agent_id: str, body: bytes, message_id: str, workspace_id: str,
                from_agent_id: str) -> None:
    """A message no store can decode, published the way a buggy client would."""
    parts = urlsplit(broker_url)
    with amqp.Connection(f"{parts.hostname}:{parts.port or 5672}", userid=parts.username, password=parts.password,
                         virtual_host=parts.path.lstrip("/") or "/") as conn:
        channel = conn.channel()
        channel.confirm_select()
        headers = {"from_agent_id": from_agent_id, "to_agent_id": agent_id, "workspace_id": workspace_id, "hop": 0}
        channel.basic_publish(amqp.Message(body, message_id=message_id, delivery_mode=2, application_headers=headers),
                              exchange=AGENTS_EXCHANGE, routing_key=agent_id, mandatory=True)


# --- workflows (a real Celery worker) ------------------------------------------------------------------------


def wait_for_messages(api: ApiClient, agent_id: str, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = inbox(api, agent_id)
        return len(found) >= count

    assert wait_for(enough, timeout_s), found
    return found


def test_multi_agent_workflow(wapi: ApiClient, pg_app: Flask) -> None:
    """`execute: true` runs the receiver and its output comes back to the sender, same correlation_id, hop 1."""
    asker = wapi.create_agent(name="asker")
    answerer = wapi.create_agent(name="answerer", llm={"provider": "scripted", "options": {"text": "forty two"}})
    sent = send(wapi, asker["id"], answerer["id"], "what is six times seven?", correlation_id="q-1", execute=True)
    assert sent["execution_id"]
    (reply,) = wait_for_messages(wapi, asker["id"], 1)
    assert reply["message"] == "forty two" and reply["from_agent_id"] == answerer["id"]
    assert reply["correlation_id"] == "q-1" and reply["hop"] == 1
    execution = wapi.get(f"/executions/{sent['execution_id']}").get_json()
    assert execution["status"] == "completed"
    assert execution["metadata"] == {"reply_to": asker["id"], "correlation_id": "q-1", "hop": 0,
                                     "in_reply_to": sent["message_id"]}
    time.sleep(0.5)
    assert len(inbox(wapi, asker["id"])) == 1  # the asker does not auto-reply: the workflow ended


def test_auto_reply_ping_pong_ends_at_max_hops(wapi: ApiClient, pg_app: Flask) -> None:
    """Two auto-reply agents answer each other until MAX_HOPS: hops 0..MAX_HOPS, then a denied reply."""
    max_hops = int(pg_app.config["MAX_HOPS"])
    ping = wapi.create_agent(name="ping", auto_reply=True, llm={"provider": "scripted", "options": {"text": "ping"}})
    pong = wapi.create_agent(name="pong", auto_reply=True, llm={"provider": "scripted", "options": {"text": "pong"}})
    send(wapi, ping["id"], pong["id"], "serve", correlation_id="rally")
    to_pong, to_ping = (max_hops + 2) // 2, (max_hops + 1) // 2
    assert wait_for(lambda: "message.sent" in [r["action"] for r in denied(wapi)], timeout_s=90)
    messages = wait_for_messages(wapi, pong["id"], to_pong) + wait_for_messages(wapi, ping["id"], to_ping)
    assert sorted(m["hop"] for m in messages) == list(range(max_hops + 1))
    assert {m["correlation_id"] for m in messages} == {"rally"}
    (refusal,) = denied(wapi)
    assert refusal["details"]["hop"] == max_hops + 1 and refusal["details"]["reason"] == "max_hops"
    time.sleep(1.0)
    assert len(inbox(wapi, pong["id"])) + len(inbox(wapi, ping["id"])) == max_hops + 1


def denied(api: ApiClient) -> list[dict[str, Any]]:
    rows = api.get("/audit", query_string={"action": "message.sent", "limit": 200}).get_json()["items"]
    return [row for row in rows if row["result"] == "denied"]



# --- under gunicorn's gevent worker ------------------------------------------------------------------------------


def test_streams_under_gunicorn_gevent(pg_app: Flask, pg_url: str, broker_url: str, redis_url: str,
                                       tmp_path: Path) -> None:
    """Both SSE endpoints follow live over real HTTP while other requests are served (gevent, one worker)."""
    api = new_workspace_client(pg_app)
    alice, bob = api.create_agent(), api.create_agent()
    web = WebProcess(database_url=pg_url, broker_url=broker_url, redis_url=redis_url, log_path=tmp_path / "web.log",
                     extra_env={"SSE_HEARTBEAT_S": "0.5", "MESSAGE_STREAM_POLL_S": "0.05"}).start()
    headers = {"Authorization": f"Bearer {api.key}"}
    try:
        with httpx.Client(base_url=web.url, headers=headers, timeout=10) as http, \
                http.stream("GET", f"/agents/{bob['id']}/messages/stream") as inbox_stream, \
                http.stream("GET", "/events/stream", params={"pattern": "#"}) as event_stream:
            inbox_lines, event_lines = inbox_stream.iter_lines(), event_stream.iter_lines()
            assert next(event_lines) == ": subscribed"
            with httpx.Client(base_url=web.url, headers=headers, timeout=10) as other:
                sent = other.post(f"/agents/{alice['id']}/messages",
                                  json={"to_agent_id": bob["id"], "message": "over http"}).json()
                event_id = other.post("/events", json={"event_type": "web.ping", "data": 1}).json()["event_id"]
            data = next(line for line in inbox_lines if line.startswith("data: "))
            assert json.loads(data[6:])["message_id"] == sent["message_id"]
            assert next(line for line in event_lines if line.startswith("event: ")) == "event: web.ping"
            assert json.loads(next(event_lines)[6:])["event_id"] == event_id
            assert next(line for line in event_lines if line.startswith(":")) == ": heartbeat"
    finally:
        web.stop()


# --- agent tools: an execution asks another agent over its confirmed inbox queue (DESIGN.md, "Tools") ----------

def test_agent_tool_asks_another_agent(wapi: ApiClient) -> None:
    helper = wapi.create_agent(llm={"provider": "scripted", "options": {"text": "Paris, of course.",
                                                                         "chunk_delay_ms": 300}})
    ask = {"name": "ask_helper", "action": "chat", "kind": "agent", "agent_id": helper["id"]}
    first = call_id()
    agent = tool_agent(wapi, [ask], [
        {"tool_calls": [{"name": "ask_helper", "arguments": {"question": "Capital of France?"}, "id": first}]},
        {"text": "The helper says Paris."},
    ])
    execution_id = execute(wapi, agent["id"])["execution_id"]
    done = wait_status(wapi, execution_id)
    assert done["status"] == "completed", done
    (row,) = done["tool_calls"]
    assert row["status"] == "completed" and row["output"] == "Paris, of course."
    inbox = wapi.get(f"/agents/{helper['id']}/messages").get_json()["messages"]
    assert [(message["correlation_id"], message["hop"]) for message in inbox] == [(first, 1)]
    statuses = [event.data["status"] for event in events(wapi, execution_id) if event.event == "status"]
    assert "waiting" in statuses
