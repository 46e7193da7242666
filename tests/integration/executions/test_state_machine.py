"""state.move on the real databases: one winner per race, audit rows with the change, refused moves change nothing."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from app.extensions import db
from app.models import AuditLog, Execution, ExecutionStatus
from app.services import auth
from app.services.executions import requests, state
from app.services.executions.events import event_log
from tests.support.api import ApiClient
from tests.support.sse import parse

S = ExecutionStatus


def _pending(app: Flask, api: ApiClient) -> str:
    """A pending execution whose chain is never sent (a no-op enqueue), so only the test moves it."""
    agent_id = api.create_agent(llm={"provider": "scripted"})["id"]
    with app.app_context():
        principal = auth.authenticate(api.key)
        assert principal is not None
        body = requests.ExecutionRequest(message="hi", stream=False, action="chat", timeout_s=60, metadata=None)
        return requests.request(principal, agent_id, body, idempotency_key=None, enqueue=lambda *_: None).id


def _audit_actions(execution_id: str) -> list[str]:
    return list(db.session.execute(
        select(AuditLog.action).where(AuditLog.execution_id == execution_id).order_by(AuditLog.id)
    ).scalars())


def test_a_move_commits_its_audit_rows_and_announces_it(app: Flask, api: ApiClient) -> None:
    execution_id = _pending(app, api)
    with app.app_context():
        row = state.move(execution_id, S.AWAITING_APPROVAL, actor="test",
                         audit_rows=[state.Audit("governance.approval_required", "ok", {"why": "test"})])
        assert row is not None and row.status == "awaiting_approval" and row.finished_at is None
        assert _audit_actions(execution_id)[-1] == "governance.approval_required"
        ended = state.move(execution_id, S.CANCELLED, actor="test", values={"error_code": "cancelled"},
                           audit_rows=lambda moved: [state.Audit("execution.cancelled", "ok",
                                                                 {"from": "awaiting_approval", "id": moved.id})])
        assert ended is not None and ended.finished_at is not None
    events = parse(api.get(f"/executions/{execution_id}/events").get_data(as_text=True))
    assert [(e.event, e.data.get("status")) for e in events] == [
        ("status", "pending"), ("status", "awaiting_approval"), ("cancelled", "cancelled")]


def test_a_second_terminal_move_loses_and_changes_nothing(app: Flask, api: ApiClient) -> None:
    execution_id = _pending(app, api)
    with app.app_context():
        assert state.move(execution_id, S.RUNNING, actor="test", announce=False) is not None
        first = state.move(execution_id, S.COMPLETED, actor="test", values={"output": "first"},
                           audit_rows=[state.Audit("execution.completed")])
        second = state.move(execution_id, S.FAILED, actor="test", values={"output": "second"},
                            audit_rows=[state.Audit("execution.failed", "error")])
        assert first is not None and second is None
        execution = db.session.get(Execution, execution_id)
        assert execution is not None and (execution.status, execution.output) == ("completed", "first")
        assert _audit_actions(execution_id).count("execution.failed") == 0


def test_a_move_the_table_refuses_raises_before_touching_the_row(app: Flask, api: ApiClient) -> None:
    execution_id = _pending(app, api)
    with app.app_context():
        with pytest.raises(ValueError, match="completed cannot be reached"):
            state.move(execution_id, S.COMPLETED, actor="test", from_statuses=[S.PENDING])
        assert db.session.get(Execution, execution_id).status == "pending"  # type: ignore[union-attr]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(list(S)), min_size=1, max_size=12))
def test_random_requests_never_end_an_execution_twice(app: Flask, api: ApiClient, targets: list[Any]) -> None:
    """Whatever sequence of moves is asked for, at most one terminal status is reached, with one terminal audit
    row and one terminal event, and the row keeps the first one."""
    execution_id = _pending(app, api)
    terminal_wins: list[ExecutionStatus] = []
    with app.app_context():
        for target in targets:
            row = state.move(execution_id, target, actor="test",
                             audit_rows=[state.Audit(f"execution.{target.value}", "ok")])
            if row is not None and target.terminal:
                terminal_wins.append(target)
        execution = db.session.get(Execution, execution_id)
        assert execution is not None
        terminal_rows = db.session.execute(
            select(func.count()).select_from(AuditLog).where(
                AuditLog.execution_id == execution_id,
                AuditLog.action.in_([f"execution.{s.value}" for s in S if s.terminal]))
        ).scalar_one()
        assert len(terminal_wins) <= 1 and terminal_rows == len(terminal_wins)
        if terminal_wins:
            assert execution.status == terminal_wins[0].value
            assert event_log().terminal_id(execution_id) is not None
