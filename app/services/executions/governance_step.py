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

# The execution and its agent in one round trip, as plain columns (no ORM objects on the allowed path); built once
# per process (building and cache-keying it cost more CPU than running it).
_EXECUTION_AND_AGENT = (
    select(Execution.status, Execution.action, Execution.governance, Execution.steps, Agent.id.label("agent_id"),
           Agent.status.label("agent_status"), Agent.deleted_at, Agent.maturity_level, Agent.llm, Agent.system_prompt,
           Agent.tools)
    .select_from(Execution).outerjoin(Agent, Agent.id == Execution.agent_id)
    .where(Execution.id == bindparam("execution_id"))
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
