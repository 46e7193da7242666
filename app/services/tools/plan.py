"""What to do with each tool call the LLM asked for: run it, pause for a person, or answer it with an error.

Pure: the agent's maturity and status, its declared tools and the calls in; one decision per call out.
Governance judges each call by its tool's action, exactly as it judges an execution's action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.llm.base import ToolCall
from app.models.tool_call import ToolCallStatus
from app.services.governance import Decision, decide
from app.services.tools.arguments import argument_error

UNKNOWN_TOOL = "unknown_tool"
DENIED = "denied"
REJECTED = "rejected"
RUNS_NOW = ToolCallStatus.PENDING


@dataclass(frozen=True)
class PlannedCall:
    """A ledger row to write: the call, its tool, the status it starts in and, if settled, its error."""

    call: ToolCall
    tool: dict[str, Any] | None
    status: ToolCallStatus
    decision: Decision | None = None
    error: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return str(self.tool["kind"]) if self.tool else "unknown"

    @property
    def action(self) -> str:
        return str(self.tool["action"]) if self.tool else "unknown"


def ready_status(tool: dict[str, Any]) -> ToolCallStatus:
    """Where an allowed (or approved) call goes: client tools wait for the caller, the others run."""
    return ToolCallStatus.REQUIRES_ACTION if tool["kind"] == "client" else ToolCallStatus.PENDING


def plan_call(call: ToolCall, tools: dict[str, dict[str, Any]], *, maturity_level: str,
              agent_status: str) -> PlannedCall:
    """One call: unknown tool or bad arguments -> failed; governance -> denied, awaiting_approval or ready."""
    tool = tools.get(call.name)
    if tool is None:
        error = {"code": UNKNOWN_TOOL, "message": f"no tool named {call.name!r}; available: "
                 f"{', '.join(sorted(tools)) or 'none'}"}
        return PlannedCall(call, None, ToolCallStatus.FAILED, error=error)
    invalid = argument_error(tool.get("parameters") or {}, call.arguments)
    if invalid is not None:
        return PlannedCall(call, tool, ToolCallStatus.FAILED, error=invalid)
    decision = decide(maturity_level=maturity_level, action=str(tool["action"]), agent_status=agent_status)
    if not decision.allowed:
        return PlannedCall(call, tool, ToolCallStatus.DENIED, decision,
                           {"code": DENIED, "message": f"governance denied this call: {decision.reason}"})
    if decision.requires_approval:
        return PlannedCall(call, tool, ToolCallStatus.AWAITING_APPROVAL, decision)
    return PlannedCall(call, tool, ready_status(tool), decision)


def plan_turn(calls: Sequence[ToolCall], tools: Sequence[dict[str, Any]], *, maturity_level: str,
              agent_status: str) -> list[PlannedCall]:
    """Every call of a turn, in the order the LLM asked for them; a repeated id keeps its first call."""
    by_name = {str(tool["name"]): tool for tool in tools}
    seen: set[str] = set()
    planned: list[PlannedCall] = []
    for call in calls:
        if call.id in seen:
            continue
        seen.add(call.id)
        planned.append(plan_call(call, by_name, maturity_level=maturity_level, agent_status=agent_status))
    return planned
