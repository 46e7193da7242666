"""The inbox stream wakes on the sender's notice: with a 30 s poll it still delivers within a fraction of a second."""

from __future__ import annotations

import json
import threading
import time

from flask import Flask

from app import create_app
from tests.integration.agent.test_agent_coordination import read_events, sse_blocks
from tests.support.api import new_workspace_client


def test_live_messages_arrive_without_polling(app: Flask) -> None:
    slow = create_app({**app.config, "MESSAGE_STREAM_POLL_S": 30.0})
    api = new_workspace_client(slow)
    alice, bob = api.create_agent(), api.create_agent()
    first = api.post(f"/agents/{alice['id']}/messages", json={"to_agent_id": bob["id"], "message": 0}).get_json()
    response = api.get(f"/agents/{bob['id']}/messages/stream", buffered=False)
    blocks = sse_blocks(response)
    (replayed,) = read_events(blocks, 1)
    assert json.loads(replayed["data"])["message_id"] == first["message_id"]
    arrivals: list[tuple[str, float]] = []

    def read() -> None:
        for event in read_events(blocks, 3):
            arrivals.append((json.loads(event["data"])["message_id"], time.monotonic()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent: list[tuple[str, float]] = []
    for i in range(1, 4):
        time.sleep(0.3)  # the sender's pace: the reader is waiting between messages, not polling
        started = time.monotonic()
        body = api.post(f"/agents/{alice['id']}/messages", json={"to_agent_id": bob["id"], "message": i}).get_json()
        sent.append((body["message_id"], started))
    reader.join(10)
    response.close()
    assert [message_id for message_id, _ in arrivals] == [message_id for message_id, _ in sent]
    delays = [arrived - started for (_, arrived), (_, started) in zip(arrivals, sent, strict=True)]
    assert max(delays) < 2.0, delays  # the poll interval is 30 s and the re-check 5 s


def test_a_follower_of_an_agent_nobody_wrote_to_gets_its_first_message(app: Flask) -> None:
    """The receiver has no queue when the stream starts; the first send declares it and the stream drains it."""
    slow = create_app({**app.config, "MESSAGE_STREAM_POLL_S": 30.0})
    api = new_workspace_client(slow)
    alice, bob = api.create_agent(), api.create_agent()
    response = api.get(f"/agents/{bob['id']}/messages/stream", buffered=False)
    blocks = sse_blocks(response)
    arrived: list[dict[str, object]] = []
    reader = threading.Thread(target=lambda: arrived.extend(read_events(blocks, 2)), daemon=True)
    reader.start()
    sent = [api.post(f"/agents/{alice['id']}/messages", json={"to_agent_id": bob["id"], "message": i}).get_json()
            for i in range(2)]
    reader.join(10)
    response.close()
    assert [json.loads(str(event["data"]))["message_id"] for event in arrived] == [s["message_id"] for s in sent]
