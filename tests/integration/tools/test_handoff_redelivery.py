"""The hand-off from an LLM turn to its tools task, redelivered: the steps run in this process on a database of
their own and the real Redis; the sends of the tools task and of the next turn's chain are the seams a kill cuts.
A persist step that dies after the hand-off's commit and before the send is redelivered: the redelivery must send
the tools task (the loop was stuck `running` otherwise) and record nothing twice. A stale result of an older turn,
or a tools task redelivered after the next turn started, must record nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Execution, ToolCall
from app.services import auth
from app.services.executions import llm_step, persist_step
from app.services.executions.events import event_log
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


def test_a_tools_task_redelivered_after_the_next_turn_started_changes_nothing(
        own_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tools task is killed after it queued the next turn, before its ack: the redelivery finds the next LLM
    turn running (its lease lapsed, as after a long queue) and must not append the results or queue a turn again."""
    from app.services.tools import resume, step

    api = new_workspace_client(own_app)
    agent = tool_agent(api, [client_tool()], [{"tool_calls": [{"name": "confirm", "arguments": {}, "id": call_id()}]},
                                              {"tool_calls": [{"name": "confirm", "arguments": {}, "id": call_id()}]},
                                              {"text": "done"}])
    execution_id = _execution(own_app, api, agent["id"])
    chains: list[str] = []
    monkeypatch.setattr(turns, "send_tools", lambda *args: None)
    monkeypatch.setattr(resume, "send_tools", lambda *args: None)
    monkeypatch.setitem(own_app.extensions, "enqueue_execution", lambda execution_id, _ids: chains.append(execution_id))
    with own_app.app_context():
        persist_step.run(llm_step.run({"execution_id": execution_id}))
        assert step.run(execution_id, 0)["status"] == "requires_action"
        principal = auth.authenticate(api.key)
        assert principal is not None
        execution = db.session.get(Execution, execution_id)
        call = execution.required_action["tool_calls"][0]["id"]
        resume.submit_outputs(principal, execution, [{"tool_call_id": call, "output": "yes"}])
        assert step.run(execution_id, 0)["status"] == "pending" and chains == [execution_id]
        llm_step.run({"execution_id": execution_id})  # turn 2 ran; its persist has not come yet
        event_log().end_run(execution_id)  # and its lease lapsed
        conversation = db.session.get(Execution, execution_id).conversation
        db.session.rollback()
        outcome = step.run(execution_id, 0)
        assert outcome.get("skip"), outcome
        assert db.session.get(Execution, execution_id).conversation == conversation
        assert chains == [execution_id]


def test_the_sweep_sends_the_tools_task_a_lost_resume_never_sent(own_app: Flask,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """tool_outputs committed, then the web died before its send: the workers' sweep sends the task, once the
    change is older than its grace, unless a tools run holds the loop or its results are in."""
    from app.services.tools import resume, step, stranded
    from app.services.tools.events import tools_lease

    api = new_workspace_client(own_app)
    agent = tool_agent(api, [client_tool()], [{"tool_calls": [{"name": "confirm", "arguments": {}, "id": call_id()}]},
                                              {"text": "done"}])
    execution_id = _execution(own_app, api, agent["id"])
    monkeypatch.setattr(turns, "send_tools", lambda *args: True)
    monkeypatch.setattr(resume, "send_tools", lambda *args: False)  # the web died before the send
    sent: list[tuple[str, int]] = []
    with own_app.app_context():
        persist_step.run(llm_step.run({"execution_id": execution_id}))
        assert step.run(execution_id, 0)["status"] == "requires_action"
        assert stranded.resend(lambda *args: sent.append(args), older_than_s=0) == []  # paused: not running
        principal = auth.authenticate(api.key)
        assert principal is not None
        execution = db.session.get(Execution, execution_id)
        call = execution.required_action["tool_calls"][0]["id"]
        resume.submit_outputs(principal, execution, [{"tool_call_id": call, "output": "yes"}])
        assert execution_id not in stranded.resend(lambda *args: sent.append(args), older_than_s=60)  # too recent
        with tools_lease(execution_id, lambda _id: "running") as held:
            assert held
            assert execution_id not in stranded.resend(lambda *args: sent.append(args), older_than_s=0)
        assert [args for args in sent if args[0] == execution_id] == []
        assert execution_id in stranded.resend(lambda *args: sent.append(args), older_than_s=0, page=1)
        assert [args for args in sent if args[0] == execution_id] == [(execution_id, 0)]
