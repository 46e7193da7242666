"""Pure workflow rules: hop counting, refusal at max_hops, idempotent replies."""

from __future__ import annotations

from typing import Any

import pytest

from coordination.workflows import WorkflowResponder, next_hop, reply_message_id, should_reply


class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self.sent.append(kwargs)
        return {"message_id": kwargs["message_id"], "status": "confirmed"}


def test_next_hop_stops_at_max_hops() -> None:
    assert next_hop(0, 3) == 1
    assert next_hop(2, 3) == 3
    assert next_hop(3, 3) is None
    assert next_hop(0, 0) is None
    assert should_reply(1, 2) and not should_reply(2, 2)
    with pytest.raises(ValueError):
        next_hop(-1, 3)


def test_reply_id_is_deterministic() -> None:
    assert reply_message_id("m1") == reply_message_id("m1") != reply_message_id("m2")


def test_responder_replies_to_sender_with_hop_plus_one() -> None:
    sender = RecordingSender()
    responder = WorkflowResponder(lambda agent, msg: f"{agent}:{msg}", sender, max_hops=2)
    message = {
        "message_id": "m1",
        "from_agent_id": "a",
        "to_agent_id": "b",
        "message": "hi",
        "hop": 1,
        "correlation_id": None,
    }
    responder.handle(message, workspace_id="ws")
    (reply,) = sender.sent
    assert reply["from_agent_id"] == "b" and reply["to_agent_id"] == "a"
    assert reply["message"] == "b:hi" and reply["hop"] == 2
    assert reply["correlation_id"] == "m1" and reply["workspace_id"] == "ws"
    assert reply["message_id"] == reply_message_id("m1")


def test_responder_refuses_at_max_hops_without_running_the_agent() -> None:
    sender = RecordingSender()
    refused: list[Any] = []

    def never(agent: str, message: Any) -> str:
        raise AssertionError("must not run")

    responder = WorkflowResponder(never, sender, max_hops=2, on_refused=refused.append)
    message = {"message_id": "m", "from_agent_id": "a", "to_agent_id": "b", "message": "x", "hop": 2}
    assert responder.handle(message) is None
    assert sender.sent == [] and refused == [message]
