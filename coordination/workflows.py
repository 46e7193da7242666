"""Agent workflows (A asks B, B answers A) that always end: every message carries a hop count.

A message sent by a client has hop 0; each automatic reply has the hop of the message it answers plus one;
no reply is sent once that would exceed max_hops. So a ping-pong between two responders produces exactly
max_hops + 1 messages (hops 0..max_hops) and stops. Replies get a message_id derived from the message they
answer, so handling the same message twice (a redelivery, a retried task) never sends a second reply.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

_REPLY_NAMESPACE = uuid.UUID("6f1c7f9e-3f5d-4c1a-9a57-2d0c3c1f8b41")


class MessageSender(Protocol):
    """What a responder needs from SocialLayer (so tests and the app can pass any sender)."""

    def send_message(
        self,
        *,
        from_agent_id: str,
        to_agent_id: str,
        message: Any,
        correlation_id: str | None = None,
        message_id: str | None = None,
        workspace_id: str | None = None,
        hop: int = 0,
    ) -> dict[str, Any]:
        """Publish and confirm one message."""
        ...


def next_hop(hop: int, max_hops: int) -> int | None:
    """The hop of a reply to a message at `hop`, or None when replying would exceed max_hops."""
    if hop < 0 or max_hops < 0:
        raise ValueError("hop and max_hops must be >= 0")
    return hop + 1 if hop < max_hops else None


def should_reply(hop: int, max_hops: int) -> bool:
    """Whether a responder may answer a message at `hop`."""
    return next_hop(hop, max_hops) is not None


def reply_message_id(message_id: str) -> str:
    """A deterministic id for the reply to message_id (idempotent replies)."""
    return uuid.uuid5(_REPLY_NAMESPACE, message_id).hex


class WorkflowResponder:
    """Runs the receiving agent on a message and sends its output back to the sender, hop + 1."""

    def __init__(
        self,
        run_agent: Callable[[str, Any], str],
        sender: MessageSender,
        *,
        max_hops: int,
        on_refused: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        if max_hops < 0:
            raise ValueError("max_hops must be >= 0")
        self.run_agent = run_agent
        self.sender = sender
        self.max_hops = max_hops
        self.on_refused = on_refused

    def handle(self, message: Mapping[str, Any], *, workspace_id: str | None = None) -> dict[str, Any] | None:
        """Answer one inbox message (get_messages' dict); None when the hop limit stops the workflow."""
        hop = int(message.get("hop") or 0)
        reply_hop = next_hop(hop, self.max_hops)
        if reply_hop is None:
            log.info(
                "message %s at hop %d: max_hops %d reached, not replying", message["message_id"], hop, self.max_hops
            )
            if self.on_refused is not None:
                self.on_refused(message)
            return None
        output = self.run_agent(message["to_agent_id"], message["message"])
        return self.sender.send_message(
            from_agent_id=message["to_agent_id"],
            to_agent_id=message["from_agent_id"],
            message=output,
            correlation_id=message.get("correlation_id") or message["message_id"],
            message_id=reply_message_id(message["message_id"]),
            workspace_id=workspace_id,
            hop=reply_hop,
        )
