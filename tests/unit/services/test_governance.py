"""The governance matrix of DESIGN.md: every maturity level against every action complexity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.services.governance import ACTION_COMPLEXITY, action_complexity, decide

LEVELS = ["STUDENT", "INTERN", "SUPERVISED", "AUTONOMOUS"]
ACTIONS_BY_COMPLEXITY = {1: "read", 2: "chat", 3: "create", 4: "delete"}

# (maturity, complexity) -> expected outcome, written out by hand from DESIGN.md.
EXPECTED = {
    ("STUDENT", 1): "allowed",
    ("STUDENT", 2): "approval_required",
    ("STUDENT", 3): "denied",
    ("STUDENT", 4): "denied",
    ("INTERN", 1): "allowed",
    ("INTERN", 2): "allowed",
    ("INTERN", 3): "approval_required",
    ("INTERN", 4): "denied",
    ("SUPERVISED", 1): "allowed",
    ("SUPERVISED", 2): "allowed",
    ("SUPERVISED", 3): "approval_required",
    ("SUPERVISED", 4): "approval_required",
    ("AUTONOMOUS", 1): "allowed",
    ("AUTONOMOUS", 2): "allowed",
    ("AUTONOMOUS", 3): "allowed",
    ("AUTONOMOUS", 4): "allowed",
}


@pytest.mark.parametrize(("maturity", "complexity"), sorted(EXPECTED))
def test_matrix(maturity: str, complexity: int) -> None:
    decision = decide(maturity_level=maturity, action=ACTIONS_BY_COMPLEXITY[complexity])
    assert decision.outcome == EXPECTED[(maturity, complexity)]
    assert decision.complexity == complexity
    assert decision.required_maturity == LEVELS[complexity - 1]
    assert decision.allowed == (decision.outcome != "denied")
    assert decision.requires_approval == (decision.outcome == "approval_required")


@pytest.mark.parametrize("action", sorted(ACTION_COMPLEXITY))
def test_every_listed_action_has_its_level(action: str) -> None:
    expected = next(level for level, names in {
        1: {"search", "read", "list", "get", "summarize", "present_chart", "present_markdown"},
        2: {"analyze", "draft", "suggest", "chat", "stream_chat", "present_form"},
        3: {"create", "update", "submit", "send_message", "send_email", "schedule"},
        4: {"delete", "execute", "deploy", "payment", "approve"},
    }.items() if action in names)
    assert action_complexity(action) == expected


@pytest.mark.parametrize("maturity", LEVELS)
def test_paused_agents_are_denied_everything(maturity: str) -> None:
    for action in ACTIONS_BY_COMPLEXITY.values():
        decision = decide(maturity_level=maturity, action=action, agent_status="paused")
        assert decision.outcome == "denied"
        assert "paused" in decision.reason


@given(st.text(min_size=1, max_size=30).filter(lambda a: a.strip().lower() not in ACTION_COMPLEXITY))
def test_unknown_actions_are_level_two(action: str) -> None:
    assert action_complexity(action) == 2
    assert decide(maturity_level="INTERN", action=action).outcome == "allowed"
    assert decide(maturity_level="STUDENT", action=action).outcome == "approval_required"


def test_decision_serializes_with_outcome() -> None:
    data = decide(maturity_level="STUDENT", action="deploy").as_dict()
    assert data == {
        "allowed": False,
        "requires_approval": False,
        "reason": data["reason"],
        "complexity": 4,
        "required_maturity": "AUTONOMOUS",
        "outcome": "denied",
    }
