"""The action-complexity matrix and maturity rules that decide what an agent may do."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.models.agent import MaturityLevel

ACTION_COMPLEXITY: dict[str, int] = {
    **dict.fromkeys(
        ["search", "read", "list", "get", "summarize", "present_chart", "present_markdown"], 1
    ),
    **dict.fromkeys(["analyze", "draft", "suggest", "chat", "stream_chat", "present_form"], 2),
    **dict.fromkeys(["create", "update", "submit", "send_message", "send_email", "schedule"], 3),
    **dict.fromkeys(["delete", "execute", "deploy", "payment", "approve"], 4),
}
UNKNOWN_ACTION_COMPLEXITY = 2


@dataclass(frozen=True)
class Decision:
    """What governance says about one action; `reason` is shown to API clients."""

    allowed: bool
    requires_approval: bool
    reason: str
    complexity: int
    required_maturity: str

    @property
    def outcome(self) -> str:
        """One word for audit rows: allowed, approval_required or denied."""
        if not self.allowed:
            return "denied"
        return "approval_required" if self.requires_approval else "allowed"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outcome": self.outcome}


def action_complexity(action: str) -> int:
    return ACTION_COMPLEXITY.get(action.strip().lower(), UNKNOWN_ACTION_COMPLEXITY)


def decide(*, maturity_level: str, action: str, agent_status: str = "active") -> Decision:
    """Apply DESIGN.md's rules: paused denied, one level above needs approval, two or more denied."""
    complexity = action_complexity(action)
    required = MaturityLevel(complexity)
    maturity = MaturityLevel[maturity_level]
    gap = required - maturity
    if agent_status != "active":
        return Decision(False, False, f"agent is {agent_status}", complexity, required.name)
    if gap >= 2:
        return Decision(
            False,
            False,
            f"action '{action}' needs {required.name}; {maturity.name} is {gap} levels below",
            complexity,
            required.name,
        )
    if gap == 1:
        return Decision(
            True,
            True,
            f"action '{action}' needs {required.name}; {maturity.name} needs a human approval",
            complexity,
            required.name,
        )
    if maturity is MaturityLevel.SUPERVISED and complexity == 3:
        return Decision(
            True, True, "SUPERVISED agents need approval for state changes", complexity, required.name
        )
    return Decision(True, False, "allowed", complexity, required.name)
