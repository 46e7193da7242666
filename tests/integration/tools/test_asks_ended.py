"""An asked agent's execution that ends without its persist step (cancelled while still pending, ended by a
sweep) still answers the asking execution's call: the workers' sweep (asks.answer_ended) finds it, instead of
the asker waiting out its wait_timeout_s. Steps driven in this process on a database of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from app.extensions import db
from app.models import Execution
from app.services.executions import llm_step, persist_step
from app.services.tools import asks, resume, step, turns
from tests.support.api import new_workspace_client
from tests.support.own_database import own_database_app, record_execution
from tests.support.tools import call_id, tool_agent


@pytest.fixture
def own_app(broker_url: str, redis_url: str) -> Iterator[Flask]:
    with own_database_app("asks", broker_url, redis_url) as app:
        yield app


def test_a_cancelled_pending_ask_answers_the_asker(own_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    api = new_workspace_client(own_app)
    helper = api.create_agent(llm={"provider": "scripted", "options": {"text": "never runs"}})
    ask = {"name": "ask_helper", "action": "chat", "kind": "agent", "agent_id": helper["id"]}
    agent = tool_agent(api, [ask], [{"tool_calls": [{"name": "ask_helper", "arguments": {"question": "?"},
                                                     "id": call_id()}]}, {"text": "done"}])
    asker = record_execution(own_app, api, agent["id"], lambda *args: None)
    resumed: list[tuple[str, int]] = []
    monkeypatch.setattr(turns, "send_tools", lambda *args: True)
    monkeypatch.setattr(resume, "send_tools", lambda *args: resumed.append(args) or True)
    monkeypatch.setitem(own_app.extensions, "enqueue_execution", lambda *args: None)  # the asked chain waits
    with own_app.app_context():
        persist_step.run(llm_step.run({"execution_id": asker}))
        assert step.run(asker, 0)["status"] == "waiting"
        assert asks.answer_ended() == []  # the asked execution has not ended
    (asked,) = api.get(f"/agents/{helper['id']}/executions").get_json()["items"]
    assert api.post(f"/executions/{asked['execution_id']}/cancel").status_code == 202
    with own_app.app_context():
        assert asks.answer_ended(page=1) == [asked["execution_id"]]
        assert asks.answer_ended() == []  # answered once
        execution = db.session.get(Execution, asker)
        assert execution.status == "running"
        db.session.rollback()
    (row,) = api.get(f"/executions/{asker}").get_json()["tool_calls"]
    assert row["status"] == "failed" and row["error"]["code"] == "cancelled", row
    assert resumed == [(asker, 0)]
