"""SocialLayer: the sync Python API for agent messaging (confirmed sends, FIFO exactly-once inbox reads)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine

from coordination import broker
from coordination.broker import BrokerSession, Outgoing
from coordination.envelope import encode_message, new_id, utcnow
from coordination.errors import (
    BatchDeliveryError,
    BrokerBlocked,
    BrokerUnavailable,
    DeliveryError,
    HopLimitExceeded,
    Nacked,
    NotConfirmed,
    Unroutable,
)
from coordination.inbox import AttemptTracker, DrainResult, StoredHook, drain_inbox, read_inbox
from coordination.locks import InboxLock, lock_for
from coordination.notify import notify
from coordination.session_pool import SessionPool
from coordination.topology import DEFAULT_MAX_ATTEMPTS, declare_inboxes_on, validate_agent_id, validate_queue_type

log = logging.getLogger(__name__)

InboxOwner = Callable[[list[str]], Iterable[str]]
DEFAULT_MAX_HOPS = 10
KNOWN_INBOXES_MAX = 200_000  # receivers whose inbox this process declared; forgotten all at once past this
INBOX_REFUSED = "inbox_refused"  # an outcome: the broker refused to declare the receiver's inbox, nothing was sent


class _InboxRefused(BrokerUnavailable):
    """The broker closed the channel on an inbox declare (e.g. PRECONDITION_FAILED: other arguments)."""
_MESSAGE_KEYS = frozenset(
    {"from_agent_id", "to_agent_id", "message", "correlation_id", "message_id", "workspace_id", "hop"}
)


def _error_for(outcome: str, message_id: str) -> DeliveryError:
    """The exception that names why a publish was not confirmed."""
    if outcome == INBOX_REFUSED:
        return BrokerUnavailable(f"the broker refused to declare the receiver's inbox: {message_id} not sent",
                                 message_id=message_id)
    if outcome == broker.UNROUTABLE:
        return Unroutable(f"message {message_id} is unroutable: the receiver has no inbox", message_id=message_id)
    if outcome == broker.NACKED:
        return Nacked(f"broker nacked message {message_id}", message_id=message_id)
    if outcome == broker.BLOCKED_OUTCOME:
        return BrokerBlocked(f"the broker blocks publishers (alarm): {message_id} not confirmed", message_id=message_id)
    if outcome == broker.TIMEOUT:
        return NotConfirmed(f"no publisher confirm for message {message_id} in time", message_id=message_id)
    return BrokerUnavailable(f"broker connection failed sending {message_id} ({outcome})", message_id=message_id)


class SocialLayer:
    """Agent-to-agent messaging over agents.direct, readable from the inbox table as soon as sent.

    With an `inbox_owner`, inboxes are declared on first use: before a process first publishes to a receiver
    it asks the owner which of the new receivers are registered (the owner records that their queue now
    exists), declares those inboxes, and remembers them. Registering an agent then costs the broker nothing.
    Without one, every receiver's inbox must already be declared (a send to a missing one is Unroutable).
    """

    def __init__(
        self,
        broker_url: str,
        engine: Engine,
        *,
        queue_type: str = "classic",
        confirm_timeout_s: float = 5.0,
        max_hops: int = DEFAULT_MAX_HOPS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        lock: InboxLock | None = None,
        on_stored: StoredHook | None = None,
        pool: SessionPool | None = None,
        inbox_owner: InboxOwner | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.engine = engine
        self.queue_type = validate_queue_type(queue_type)
        self.confirm_timeout_s = confirm_timeout_s
        self.max_hops = max_hops
        self.max_attempts = max_attempts
        self.lock = lock or lock_for(engine)
        self.on_stored = on_stored
        self.pool = pool or SessionPool(broker_url, timeout_s=confirm_timeout_s, queue_type=self.queue_type)
        self._attempts = AttemptTracker()
        self.inbox_owner = inbox_owner
        self._inboxes: set[str] = set()

    # -- sending ---------------------------------------------------------------------------------------

    def _prepare(self, item: Mapping[str, Any]) -> tuple[Outgoing, dict[str, Any]]:
        """Validate one message and build its publish plus its envelope (ids, hop) for the caller's result."""
        unknown = set(item) - _MESSAGE_KEYS
        if unknown:
            raise ValueError(f"unknown message fields: {sorted(unknown)}")
        hop = int(item.get("hop") or 0)
        if hop < 0:
            raise ValueError("hop must be >= 0")
        if hop > self.max_hops:
            raise HopLimitExceeded(f"hop {hop} exceeds max_hops {self.max_hops}")
        envelope: dict[str, Any] = {
            "message_id": item.get("message_id") or new_id(),
            "from_agent_id": validate_agent_id(item["from_agent_id"]),
            "to_agent_id": validate_agent_id(item["to_agent_id"]),
            "correlation_id": item.get("correlation_id"),
            "workspace_id": item.get("workspace_id"),
            "hop": hop,
        }
        outgoing = encode_message(message=item["message"], sent_at=utcnow(), **envelope)
        return outgoing, envelope

    def _publish(self, outgoing: Sequence[Outgoing]) -> list[str]:
        """Publish with confirms; after a dead connection, republish once from the first unconfirmed item.

        A channel enqueues a prefix of what was published, so resending the suffix in order keeps FIFO;
        a resent copy of something that did arrive is dropped by the idempotent store. Once confirmed, each
        receiver is notified (coordination.notify) on the same connection, so the mailbox drains only
        inboxes that have work.
        """
        results: list[str] = [broker.CONNECTION_LOST] * len(outgoing)
        start = 0
        for attempt in range(2):
            try:
                with self.pool.session() as session:
                    self._declare_inboxes(session, [item.routing_key for item in outgoing[start:]])
                    part = session.publish(outgoing[start:], timeout_s=self.confirm_timeout_s)
                    sent = zip(outgoing[start:], part, strict=True)
                    notify(session, [item.routing_key for item, result in sent if result == broker.CONFIRMED])
            except _InboxRefused as exc:
                log.error("%s", exc)
                results[start:] = [INBOX_REFUSED] * (len(outgoing) - start)
                break
            except broker.CONNECTION_ERRORS as exc:
                log.warning("cannot connect to the broker (attempt %d): %s", attempt + 1, exc)
                part = [broker.CONNECTION_LOST] * (len(outgoing) - start)
            results[start:] = part
            self._inboxes.difference_update(
                item.routing_key for item, result in zip(outgoing[start:], part, strict=True)
                if result == broker.UNROUTABLE
            )  # its queue was deleted behind our back: the next send declares it again
            lost = [i for i, r in enumerate(part) if r in (broker.CONNECTION_LOST, broker.CHANNEL_CLOSED)]
            if not lost:
                break
            start += lost[0]
        return results

    def _declare_inboxes(self, session: BrokerSession, receivers: Sequence[str]) -> None:
        """Declare the inboxes of registered receivers this process has not sent to yet: one round trip.

        The broker has handled every declare before anything is published (coordination.topology); a declare
        it refuses closes the channel: _InboxRefused, and a send gets INBOX_REFUSED for what it had left.
        """
        if self.inbox_owner is None:
            return
        new = [receiver for receiver in dict.fromkeys(receivers) if receiver not in self._inboxes]
        if not new:
            return
        owned = list(dict.fromkeys(self.inbox_owner(new)))
        if not owned:
            return
        try:
            declare_inboxes_on(session.channel(), owned, queue_type=self.queue_type, max_attempts=self.max_attempts)
        except broker.CHANNEL_ERRORS as exc:
            session.reset_channel()
            raise _InboxRefused(f"the broker refused to declare an inbox of {owned}: {exc}") from exc
        if len(self._inboxes) + len(owned) > KNOWN_INBOXES_MAX:
            self._inboxes.clear()
        self._inboxes.update(owned)

    def declare_inboxes(self, agent_ids: Sequence[str]) -> None:
        """Declare now the inboxes of those of `agent_ids` the owner calls registered (for foreign publishers)."""
        try:
            with self.pool.session() as session:
                self._declare_inboxes(session, agent_ids)
        except broker.CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot declare inboxes: {exc}") from exc

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
        """Publish one message and return only once the broker confirmed it; raise DeliveryError otherwise."""
        outgoing, envelope = self._prepare(
            {
                "from_agent_id": from_agent_id,
                "to_agent_id": to_agent_id,
                "message": message,
                "correlation_id": correlation_id,
                "message_id": message_id,
                "workspace_id": workspace_id,
                "hop": hop,
            }
        )
        (outcome,) = self._publish([outgoing])
        if outcome != broker.CONFIRMED:
            raise _error_for(outcome, envelope["message_id"])
        return {"message_id": envelope["message_id"], "status": "confirmed"}

    def send_many(self, messages: Iterable[Mapping[str, Any]], *, raise_on_error: bool = True) -> list[dict[str, Any]]:
        """Publish a batch, then wait for all confirms (pipelined); per-item {message_id, status[, error]}.

        With raise_on_error (default) any failed item raises BatchDeliveryError carrying every result;
        items are published in order, so a sender's batch is queued in list order.
        """
        prepared = [self._prepare(item) for item in messages]
        if not prepared:
            return []
        outcomes = self._publish([outgoing for outgoing, _ in prepared])
        results: list[dict[str, Any]] = []
        for (_, envelope), outcome in zip(prepared, outcomes, strict=True):
            if outcome == broker.CONFIRMED:
                results.append({"message_id": envelope["message_id"], "status": "confirmed"})
            else:
                error = _error_for(outcome, envelope["message_id"])
                results.append(
                    {
                        "message_id": envelope["message_id"],
                        "status": "failed",
                        "error": type(error).__name__,
                        "detail": str(error),
                    }
                )
        failed = sum(1 for r in results if r["status"] != "confirmed")
        if failed and raise_on_error:
            raise BatchDeliveryError(f"{failed} of {len(results)} messages were not confirmed", results)
        return results

    # -- reading ---------------------------------------------------------------------------------------

    def deliver_pending(self, agent_id: str) -> DrainResult:
        """Move what sits in the agent's queue into its inbox table, under the shared per-agent lock."""
        validate_agent_id(agent_id)
        try:
            with self.pool.session() as session:
                return self._drain(session, agent_id)
        except broker.CONNECTION_ERRORS as exc:
            raise BrokerUnavailable(f"cannot drain the inbox of {agent_id}: {exc}") from exc

    def _drain(self, session: BrokerSession, agent_id: str) -> DrainResult:
        return drain_inbox(
            session,
            self.engine,
            agent_id,
            lock=self.lock,
            attempts=self._attempts,
            max_attempts=self.max_attempts,
            on_stored=self.on_stored,
        )

    def get_messages(
        self, *, agent_id: str, after: int = 0, limit: int = 100, drain: bool = True
    ) -> list[dict[str, Any]]:
        """The agent's inbox after `after`, FIFO; includes every message whose send already returned."""
        if drain:
            self.deliver_pending(agent_id)
        return read_inbox(self.engine, agent_id, after=after, limit=limit)

    def close(self) -> None:
        """Close pooled broker connections (the engine belongs to the caller)."""
        self.pool.close()
