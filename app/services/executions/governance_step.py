"""The chain's first step: governance again in the worker (the agent may have changed while it was queued)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select

from app.extensions import db
from app.models import Agent, Execution, ExecutionStatus
from app.services import governance
from app.services.executions import state
from app.services.executions.step_support import ACTOR, skipped, step_record
from app.timeutil import iso, utcnow

# The execution and its agent in one round trip, as plain columns of the tables (Core: no ORM compile or loading
# step); built once per process (building and cache-keying it cost more CPU than running it).
_EXECUTIONS, _AGENTS = Execution.__table__, Agent.__table__
_EXECUTION_AND_AGENT = (
    select(_EXECUTIONS.c.status, _EXECUTIONS.c.action, _EXECUTIONS.c.governance, _EXECUTIONS.c.steps,
           _AGENTS.c.id.label("agent_id"), _AGENTS.c.status.label("agent_status"), _AGENTS.c.deleted_at,
           _AGENTS.c.maturity_level, _AGENTS.c.llm, _AGENTS.c.system_prompt, _AGENTS.c.tools)
    .select_from(_EXECUTIONS.outerjoin(_AGENTS, _AGENTS.c.id == _EXECUTIONS.c.agent_id))
    .where(_EXECUTIONS.c.id == bindparam("execution_id"))
)


def run(execution_id: str) -> dict[str, Any]:
    """Denied ends the execution, approval required pauses it; allowed hands the agent's config to the LLM step."""
    started = iso(utcnow())
    found = db.session.execute(_EXECUTION_AND_AGENT, {"execution_id": execution_id}).one_or_none()
    db.session.rollback()  # read only: hold no transaction (or connection) from here on
    if found is None or found.status != ExecutionStatus.PENDING:
        return skipped(execution_id, f"status {found.status if found else 'missing'}")
    agent_status = "deleted" if found.agent_id is None or found.deleted_at is not None else found.agent_status
    decision = governance.decide(
        maturity_level=found.maturity_level or "STUDENT", action=found.action, agent_status=agent_status
    )
    approved = bool((found.governance or {}).get("approved_by"))
    if decision.outcome == "denied":
        state.move(
            execution_id, ExecutionStatus.DENIED, actor=ACTOR, from_statuses=[ExecutionStatus.PENDING],
            values={"error_code": "governance_denied", "error_message": decision.reason,
                    "steps": [step_record("governance", "denied", started)]},
            audit_rows=[state.Audit("governance.denied", "denied", {**decision.as_dict(), "checked_by": ACTOR})],
        )
        return skipped(execution_id, "denied")
    if decision.outcome == "approval_required" and not approved:
        state.move(
            execution_id, ExecutionStatus.AWAITING_APPROVAL, actor=ACTOR, from_statuses=[ExecutionStatus.PENDING],
            audit_rows=[state.Audit("governance.approval_required", "ok",
                                    {**decision.as_dict(), "checked_by": ACTOR})],
        )
        return skipped(execution_id, "awaiting_approval")
    return {
        "execution_id": execution_id,
        "steps": [*(found.steps or []), step_record("governance", "completed", started)],  # earlier tool-loop turns
        "agent": {"llm": found.llm or {}, "system_prompt": found.system_prompt, "tools": found.tools},
    }
