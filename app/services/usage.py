"""Token usage of a workspace's executions, grouped by agent, model or UTC day (GET /usage)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.sql.elements import ColumnElement

from app.extensions import db
from app.llm import DEFAULT_MODELS
from app.models import Agent, Execution
from app.services.errors import ValidationFailed
from app.timeutil import utcnow

GROUPS = ("agent", "model", "day")
DEFAULT_SPAN = timedelta(days=30)
MAX_SPAN = timedelta(days=366)


def parse_when(name: str, raw: str | None) -> datetime | None:
    """An ISO date (midnight UTC) or date-time (UTC unless it says otherwise); 422 for anything else."""
    if raw is None or raw == "":
        return None
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed(f"{name} must be an ISO 8601 date or date-time", {name: raw}) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_range(raw_from: str | None, raw_to: str | None) -> tuple[datetime, datetime]:
    """[from, to): defaults to the last 30 days; at most a year."""
    end = parse_when("to", raw_to) or utcnow()
    start = parse_when("from", raw_from) or end - DEFAULT_SPAN
    if start >= end:
        raise ValidationFailed("from must be before to", {"from": raw_from, "to": raw_to})
    if end - start > MAX_SPAN:
        raise ValidationFailed("the range may span at most 366 days", {"from": raw_from, "to": raw_to})
    return start, end


def _day(column: Any) -> ColumnElement[Any]:
    """The UTC calendar day of a timestamp, on PostgreSQL and SQLite."""
    if db.engine.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.date(column)


def summarize(workspace_id: str, *, group_by: str | None, raw_from: str | None,
              raw_to: str | None) -> list[dict[str, Any]]:
    """One SQL pass grouped by (agent, day); agent -> model is mapped here (the agent's configured model)."""
    group = group_by or "day"
    if group not in GROUPS:
        raise ValidationFailed("group_by must be agent, model or day", {"group_by": group_by, "allowed": list(GROUPS)})
    start, end = parse_range(raw_from, raw_to)
    day = _day(Execution.created_at).label("day")
    rows = db.session.execute(
        select(Execution.agent_id, day, func.count(), func.coalesce(func.sum(Execution.prompt_tokens), 0),
               func.coalesce(func.sum(Execution.completion_tokens), 0))
        .where(Execution.workspace_id == workspace_id, Execution.created_at >= start, Execution.created_at < end)
        .group_by(Execution.agent_id, day)
    ).all()
    models: dict[str, str] = {}
    if group == "model":
        llms = db.session.execute(select(Agent.id, Agent.llm).where(Agent.workspace_id == workspace_id)).all()
        models = {agent_id: _model_of(llm or {}) for agent_id, llm in llms}
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for agent_id, day_value, count, prompt, completion in rows:
        key = {"agent": agent_id, "day": str(day_value), "model": models.get(agent_id, "unknown")}[group]
        total = totals[key]
        total[0] += int(count)
        total[1] += int(prompt)
        total[2] += int(completion)
    return [{"key": key, "executions": t[0], "prompt_tokens": t[1], "completion_tokens": t[2]}
            for key, t in sorted(totals.items())]


def _model_of(llm: dict[str, Any]) -> str:
    provider = str(llm.get("provider") or "scripted")
    return f"{provider}/{llm.get('model') or DEFAULT_MODELS.get(provider, 'unknown')}"
