"""The ledger on SQLite and PostgreSQL: rows written once per (execution, tool_call_id), finished once."""

from __future__ import annotations

from flask import Flask

from app.extensions import db
from app.llm.base import ToolCall as Call
from app.models import AuditLog, Execution, ToolCallStatus
from app.services.tools import ledger
from app.services.tools.plan import plan_turn
from tests.support.api import ApiClient

TOOLS = [{"name": "lookup", "action": "read", "kind": "webhook", "url": "https://x.example/"},
         {"name": "pay", "action": "payment", "kind": "client"}]
S = ToolCallStatus


def _execution(app: Flask, api: ApiClient) -> tuple[str, str]:
    agent = api.create_agent(maturity_level="INTERN", tools=TOOLS)
    with app.app_context():
        execution = Execution(workspace_id=api.workspace_id, agent_id=agent["id"], message="m", status="running")
        db.session.add(execution)
        db.session.commit()
        return execution.id, agent["id"]


def _record(api: ApiClient, execution_id: str, agent_id: str, calls: list[Call]) -> list[str]:
    planned = plan_turn(calls, TOOLS, maturity_level="INTERN", agent_status="active")
    rows = ledger.record_turn(workspace_id=api.workspace_id, agent_id=agent_id, execution_id=execution_id, turn=0,
                              actor="worker", planned=planned)
    db.session.commit()
    return [row.status for row in rows]


def test_a_turn_is_recorded_once_with_its_audit_rows(app: Flask, api: ApiClient) -> None:
    execution_id, agent_id = _execution(app, api)
    calls = [Call("c1", "lookup", {}), Call("c2", "pay", {}), Call("c3", "nope", {})]
    with app.app_context():
        assert _record(api, execution_id, agent_id, calls) == ["pending", "denied", "failed"]
        assert _record(api, execution_id, agent_id, calls) == ["pending", "denied", "failed"]
        actions = [row.action for row in db.session.query(AuditLog).filter_by(execution_id=execution_id)
                   .order_by(AuditLog.id)]
        assert actions == ["tool.requested", "tool.allowed", "tool.requested", "tool.denied", "tool.requested",
                           "tool.failed"]
        views = [ledger.serialize(row) for row in ledger.rows_of(execution_id)]
        assert [view["tool_call_id"] for view in views] == ["c1", "c2", "c3"]
        assert views[1]["error"]["code"] == "denied" and views[1]["finished_at"] is not None


def test_a_call_finishes_once(app: Flask, api: ApiClient) -> None:
    execution_id, agent_id = _execution(app, api)
    with app.app_context():
        _record(api, execution_id, agent_id, [Call("c1", "lookup", {"q": 1})])
        assert ledger.start(execution_id, "c1")
        assert ledger.start(execution_id, "c1"), "a running row is retried after a lost worker"
        assert ledger.finish(execution_id, "c1", output={"answer": 42})
        assert not ledger.finish(execution_id, "c1", error={"code": "late", "message": "too late"})
        assert not ledger.start(execution_id, "c1"), "a completed call never runs again"
        db.session.commit()
        (row,) = ledger.rows_of(execution_id)
        assert (row.status, row.output, row.error, row.attempts) == ("completed", {"answer": 42}, None, 2)
        (result,) = ledger.result_messages([row])
        assert (result.content, result.is_error) == ('{"answer": 42}', False)


def test_results_and_pending_views(app: Flask, api: ApiClient) -> None:
    execution_id, agent_id = _execution(app, api)
    with app.app_context():
        _record(api, execution_id, agent_id, [Call("c1", "lookup", {}), Call("c2", "pay", {"amount": 5})])
        rows = ledger.rows_of(execution_id)
        assert ledger.pending_view(rows, S.PENDING) == {"tool_calls": [{"id": "c1", "name": "lookup",
                                                                         "arguments": {}}]}
        assert ledger.pending_view(rows, S.AWAITING_APPROVAL) is None
        denied = ledger.result_messages([rows[1]])[0]
        assert denied.is_error and '"code": "denied"' in denied.content
