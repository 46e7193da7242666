"""The hand-off from an LLM turn to its tools task, redelivered: the steps run in this process on a database of
their own and the real Redis, the tools task's send is the seam a kill cuts. A persist step that dies after the
hand-off's commit and before the send is redelivered; the redelivery must send the tools task (the loop was
stuck `running` otherwise) and record nothing twice; a stale result of an older turn must record nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Execution, ToolCall
from app.services.executions import llm_step, persist_step
from app.services.tools import turns
from tests.support.api import ApiClient, new_workspace_client
from tests.support.own_database import own_database_app, record_execution
from tests.support.tools import call_id, client_tool, tool_agent


class Killed(BaseException):
    """The worker dies here (a BaseException, as nothing in the step may catch it)."""


@pytest.fixture
def own_app(broker_url: str, redis_url: str) -> Iterator[Flask]:
    """A database of its own: the session's worker must not run these executions' chains."""
    with own_database_app("handoff", broker_url, redis_url) as app:
        yield app


def _execution(app: Flask, api: ApiClient, agent_id: str) -> str:
    return record_execution(app, api, agent_id, lambda *args: None)


def _counts(execution_id: str) -> tuple[int, int, int]:
    turns_now = db.session.execute(select(Execution.turns).where(Execution.id == execution_id)).scalar_one()
    calls = db.session.execute(select(func.count()).select_from(ToolCall)
                               .where(ToolCall.execution_id == execution_id)).scalar_one()
    audits = db.session.execute(select(func.count()).select_from(AuditLog)
                                .where(AuditLog.execution_id == execution_id)).scalar_one()
    db.session.rollback()
    return int(turns_now), int(calls), int(audits)


def test_a_redelivered_hand_off_sends_the_tools_task_once_more(own_app: Flask,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    api = new_workspace_client(own_app)
    agent = tool_agent(api, [client_tool()], [{"tool_calls": [{"name": "confirm", "arguments": {}, "id": call_id()}]},
                                              {"text": "done"}])
    execution_id = _execution(own_app, api, agent["id"])
    sent: list[tuple[str, int]] = []

    def killed(execution_id: str, turn: int) -> None:
        raise Killed()

    with own_app.app_context():
        result = llm_step.run({"execution_id": execution_id})
        assert result["turn"] == 0 and result["tool_calls"]
        monkeypatch.setattr(turns, "send_tools", killed)
        with pytest.raises(Killed):
            persist_step.run(result)  # the hand-off committed; the worker died before the send
        after_commit = _counts(execution_id)
        monkeypatch.setattr(turns, "send_tools", lambda *args: sent.append(args))
        redelivered = persist_step.run(result)
        assert _counts(execution_id) == after_commit, "the redelivery recorded something twice"
        assert after_commit[:2] == (1, 1)
    assert sent == [(execution_id, 0)], redelivered


def test_a_stale_result_of_an_earlier_turn_records_nothing(own_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result of turn 0 arriving while turn 1 runs (its calls all answered) must not be taken for turn 1's."""
    api = new_workspace_client(own_app)
    agent = tool_agent(api, [client_tool()], [{"tool_calls": [{"name": "confirm", "arguments": {}, "id": call_id()}]},
                                              {"tool_calls": [{"name": "confirm", "arguments": {}, "id": call_id()}]},
                                              {"text": "done"}])
    execution_id = _execution(own_app, api, agent["id"])
    monkeypatch.setattr(turns, "send_tools", lambda *args: None)
    with own_app.app_context():
        stale: dict[str, Any] = llm_step.run({"execution_id": execution_id})
        persist_step.run(stale)
        # The client answers; the turn's calls are finished (as the tools task leaves them before the next turn).
        db.session.execute(ToolCall.__table__.update().where(ToolCall.execution_id == execution_id)
                           .values(status="completed", output="ok"))
        db.session.commit()
        before = _counts(execution_id)
        outcome = persist_step.run(stale)
        assert _counts(execution_id) == before, outcome
        assert outcome.get("skip"), outcome
