"""`flask --app wsgi agents import FILE.jsonl`: validated like POST /agents, audited, all or nothing per bad file."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Flask
from sqlalchemy import func, select

from app.extensions import db
from app.models import Agent, AuditLog, Workspace
from tests.integration.api.test_agent_inboxes import queue_info


def _run(app: Flask, *args: str) -> tuple[int, str, str]:
    result = app.test_cli_runner().invoke(args=["agents", "import", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _agents_of(app: Flask, workspace: str) -> list[Agent]:
    with app.app_context():
        ws = db.session.execute(select(Workspace).where(Workspace.name == workspace)).scalar_one_or_none()
        if ws is None:
            return []
        return list(db.session.execute(select(Agent).where(Agent.workspace_id == ws.id)).scalars())


def test_import_registers_and_audits_every_line_and_declares_no_queue(
    app: Flask, broker_url: str, tmp_path: Path
) -> None:
    lines = [{"name": f"bulk-{i}", "maturity_level": "INTERN", "llm": {"provider": "scripted"}} for i in range(25)]
    source = tmp_path / "agents.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    workspace = f"import-{tmp_path.name}"
    code, out, err = _run(app, str(source), "--workspace", workspace, "--batch-size", "10")
    assert code == 0, err
    ids = out.split()
    assert len(ids) == 25 and "imported 25 agents" in err
    stored = {agent.id: agent for agent in _agents_of(app, workspace)}
    assert set(stored) == set(ids)
    assert [stored[agent_id].name for agent_id in ids] == [f"bulk-{i}" for i in range(25)]
    with app.app_context():
        audited = db.session.execute(
            select(func.count()).select_from(AuditLog).where(AuditLog.action == "agent.created",
                                                             AuditLog.agent_id.in_(ids))
        ).scalar_one()
    assert audited == 25
    assert all(queue_info(broker_url, f"agent.{agent_id}.inbox").status_code == 404 for agent_id in ids[::6])


def test_bad_lines_are_reported_and_nothing_is_imported(app: Flask, tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join([
        json.dumps({"name": "fine", "maturity_level": "STUDENT"}),
        "{not json",
        json.dumps({"name": "x", "maturity_level": "WIZARD"}),
        json.dumps({"name": "y", "maturity_level": "STUDENT", "surprise": 1}),
        json.dumps({"name": "z\u0000", "maturity_level": "STUDENT"}),
        "NaN",
    ]))
    workspace = f"bad-{tmp_path.name}"
    code, out, err = _run(app, str(source), "--workspace", workspace)
    assert code == 1
    assert out == ""
    for number, text in ((2, "invalid JSON"), (3, "maturity_level"), (4, "surprise"), (5, "NUL"), (6, "invalid JSON")):
        assert f"line {number}: " in err and text in err.split(f"line {number}: ", 1)[1].splitlines()[0]
    assert "line 1:" not in err
    assert "5 bad line(s); nothing imported" in err
    assert _agents_of(app, workspace) == []
