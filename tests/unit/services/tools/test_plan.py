"""Per-call decisions: unknown tools and bad arguments are errors for the LLM; governance judges each action."""

from __future__ import annotations

import pytest

from app.llm.base import ToolCall
from app.models.tool_call import ToolCallStatus
from app.services.tools.plan import plan_turn

TOOLS = [
    {"name": "lookup", "action": "read", "kind": "webhook", "url": "https://x.example/", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}},
    {"name": "create_ticket", "action": "create", "kind": "webhook", "url": "https://x.example/"},
    {"name": "pay", "action": "payment", "kind": "client"},
    {"name": "confirm", "action": "chat", "kind": "client"},
    {"name": "ask", "action": "summarize", "kind": "agent", "agent_id": "b"},
]
S = ToolCallStatus


def statuses(maturity: str, *names: str, agent_status: str = "active") -> list[ToolCallStatus]:
    calls = [ToolCall(f"c{index}", name, {"q": "x"}) for index, name in enumerate(names)]
    return [planned.status for planned in plan_turn(calls, TOOLS, maturity_level=maturity, agent_status=agent_status)]


@pytest.mark.parametrize(
    ("maturity", "expected"),
    [
        ("STUDENT", [S.PENDING, S.DENIED, S.DENIED, S.AWAITING_APPROVAL, S.PENDING]),
        ("INTERN", [S.PENDING, S.AWAITING_APPROVAL, S.DENIED, S.REQUIRES_ACTION, S.PENDING]),
        ("SUPERVISED", [S.PENDING, S.AWAITING_APPROVAL, S.AWAITING_APPROVAL, S.REQUIRES_ACTION, S.PENDING]),
        ("AUTONOMOUS", [S.PENDING, S.PENDING, S.REQUIRES_ACTION, S.REQUIRES_ACTION, S.PENDING]),
    ],
)
def test_governance_per_call(maturity: str, expected: list[ToolCallStatus]) -> None:
    assert statuses(maturity, "lookup", "create_ticket", "pay", "confirm", "ask") == expected


def test_paused_agents_are_denied_every_call() -> None:
    assert statuses("AUTONOMOUS", "lookup", "pay", agent_status="paused") == [S.DENIED, S.DENIED]


def test_denied_calls_carry_an_error_for_the_llm() -> None:
    (planned,) = plan_turn([ToolCall("c1", "pay", {})], TOOLS, maturity_level="STUDENT", agent_status="active")
    assert planned.error is not None and planned.error["code"] == "denied"
    assert "payment" in planned.error["message"]


def test_unknown_tools_and_bad_arguments_fail_the_call_only() -> None:
    calls = [ToolCall("c1", "nope", {}), ToolCall("c2", "lookup", {"q": 3}), ToolCall("c3", "lookup", "{bad")]
    planned = plan_turn(calls, TOOLS, maturity_level="AUTONOMOUS", agent_status="active")
    assert [item.status for item in planned] == [S.FAILED, S.FAILED, S.FAILED]
    assert [item.error["code"] for item in planned if item.error] == ["unknown_tool", "invalid_arguments",
                                                                       "invalid_arguments"]
    assert "available: ask, confirm, create_ticket, lookup, pay" in str(planned[0].error)


def test_a_repeated_call_id_keeps_the_first_call() -> None:
    calls = [ToolCall("c1", "lookup", {"q": "a"}), ToolCall("c1", "lookup", {"q": "b"})]
    (planned,) = plan_turn(calls, TOOLS, maturity_level="AUTONOMOUS", agent_status="active")
    assert planned.call.arguments == {"q": "a"}
