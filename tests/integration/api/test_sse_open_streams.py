"""Every SSE answer comes from one builder and is counted in sse_open_streams{kind} while a client reads it."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from flask import Flask

from tests.support.api import ApiClient, new_workspace_client


def _open_streams(app: Flask, kind: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    found = re.search(rf'^sse_open_streams{{kind="{kind}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _awaiting_execution(api: ApiClient) -> str:
    """An execution that stays open (it waits for an approval nobody gives), so its stream stays open too."""
    agent = api.create_agent(maturity_level="STUDENT")
    response = api.post(f"/agents/{agent['id']}/execute", json={"message": "hi", "action": "analyze"})
    assert response.status_code == 200 and response.get_json()["status"] == "awaiting_approval"
    return str(response.get_json()["execution_id"])


PATHS: dict[str, Callable[[ApiClient], str]] = {
    "executions": lambda api: f"/executions/{_awaiting_execution(api)}/events",
    "messages": lambda api: f"/agents/{api.create_agent()['id']}/messages/stream",
    "events": lambda api: "/events/stream?pattern=agent.%23",
}


@pytest.mark.parametrize("kind", list(PATHS))
def test_a_stream_is_counted_while_it_is_read(pg_app: Flask, kind: str) -> None:
    api = new_workspace_client(pg_app)
    path = PATHS[kind](api)
    before = _open_streams(pg_app, kind)
    response = api.get(path, buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    body = iter(response.response)
    assert next(body)  # the first chunk: the stream is being read
    assert _open_streams(pg_app, kind) == before + 1
    response.close()
    assert _open_streams(pg_app, kind) == before
