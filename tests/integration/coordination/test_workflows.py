"""Agent ping-pong over the real broker and database ends at max_hops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordination.social import SocialLayer
from coordination.workflows import WorkflowResponder


def run_workflow(social: SocialLayer, responder: WorkflowResponder, agents: list[str]) -> list[dict[str, Any]]:
    """Each agent answers every new inbox message until no agent has anything new (bounded loop)."""
    cursor = dict.fromkeys(agents, 0)
    handled: list[dict[str, Any]] = []
    for _ in range(1000):
        progressed = False
        for agent in agents:
            for message in social.get_messages(agent_id=agent, after=cursor[agent]):
                cursor[agent] = message["seq"]
                handled.append(message)
                responder.handle(message)
                progressed = True
        if not progressed:
            return handled
    raise AssertionError("workflow did not terminate")


def test_multi_agent_workflow_ping_pong_ends_at_max_hops(social: SocialLayer, agents: Callable[..., str]) -> None:
    a, b = agents("a"), agents("b")
    refused: list[Any] = []
    responder = WorkflowResponder(
        lambda agent, message: f"{agent} got {message}", social, max_hops=6, on_refused=refused.append
    )
    first = social.send_message(from_agent_id=a, to_agent_id=b, message="ping", correlation_id="wf-1")
    handled = run_workflow(social, responder, [a, b])
    assert [m["hop"] for m in handled] == list(range(7))
    assert {m["correlation_id"] for m in handled} == {"wf-1"}
    assert [m["to_agent_id"] for m in handled] == [b, a, b, a, b, a, b]
    assert handled[0]["message_id"] == first["message_id"]
    assert handled[1]["message"] == f"{b} got ping"
    assert [m["message_id"] for m in refused] == [handled[-1]["message_id"]]


def test_handling_a_message_twice_sends_one_reply(social: SocialLayer, agents: Callable[..., str]) -> None:
    a, b = agents("a"), agents("b")
    responder = WorkflowResponder(lambda agent, message: "pong", social, max_hops=3)
    social.send_message(from_agent_id=a, to_agent_id=b, message="ping")
    (message,) = social.get_messages(agent_id=b)
    responder.handle(message)
    responder.handle(message)  # a redelivery or a retried task
    replies = social.get_messages(agent_id=a)
    assert len(replies) == 1 and replies[0]["correlation_id"] == message["message_id"]
