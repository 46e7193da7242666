"""Messages that run the receiver, and replies that carry the output back: A asks B, B answers A, always ending.

A message sent with `execute: true`, or to an agent with `auto_reply`, starts an execution of the receiver with
metadata {reply_to, correlation_id, hop, in_reply_to}. When it completes, `reply_for_execution` (called by the
persist task) sends the output back with the same correlation_id, hop + 1 and a message_id derived from the
message it answers (so a redelivered persist step never sends twice). A reply beyond MAX_HOPS is refused and
audited `message.sent` with result `denied`. Executions are started idempotently (Idempotency-Key
`message:<message_id>`), so a client retrying a send with the same message_id never runs the receiver twice.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import current_app

from app import tracing
from app.extensions import db
from app.models import Agent, Execution, ExecutionStatus
from app.services import audit, messaging
from app.services.auth import Principal
from app.services.errors import GovernanceDenied, Unavailable, ValidationFailed
from app.services.executions import llm_config, requests
from app.services.executions.requests import Enqueue, ExecutionRequest
from app.services.messaging import MessageRequest
from coordination.envelope import next_hop, reply_message_id

log = logging.getLogger(__name__)

MAX_EXECUTION_MESSAGE = 32768
REPLY_TIMEOUT_S = 120
REPLY_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 0.0)


def as_text(message: Any) -> str:
    """What the receiving agent's LLM reads: a string as is, any other JSON value serialized."""
    return message if isinstance(message, str) else json.dumps(message, ensure_ascii=False)


def _max_hops() -> int:
    return int(current_app.config["MAX_HOPS"])


def _refuse(workspace_id: str, actor: str, from_agent_id: str, to_agent_id: str, *, hop: int,
            in_reply_to: str, correlation_id: str | None, execution_id: str | None = None) -> None:
    """Audit a reply the hop limit stops: the workflow ends here."""
    audit.record(
        workspace_id=workspace_id,
        actor=actor,
        agent_id=from_agent_id,
        execution_id=execution_id,
        action="message.sent",
        result="denied",
        details={"reason": "max_hops", "hop": hop, "max_hops": _max_hops(), "to_agent_id": to_agent_id,
                 "in_reply_to": in_reply_to, "correlation_id": correlation_id},
    )
    db.session.commit()


def start_execution(principal: Principal, receiver: Agent, envelope: dict[str, Any], *, explicit: bool,
                    enqueue: Enqueue | None = None) -> str | None:
    """Run the receiver on a delivered message; returns the execution_id (None when the hop limit refuses)."""
    hop = int(envelope.get("hop") or 0)
    correlation_id = envelope.get("correlation_id") or envelope["message_id"]
    if not explicit and next_hop(hop, _max_hops()) is None:
        _refuse(principal.workspace_id, principal.actor, receiver.id, envelope["from_agent_id"], hop=hop + 1,
                in_reply_to=envelope["message_id"], correlation_id=correlation_id)
        return None
    text = as_text(envelope["message"])[:MAX_EXECUTION_MESSAGE] or "(empty message)"
    body = ExecutionRequest(
        message=text,
        stream=False,
        action="chat",
        timeout_s=REPLY_TIMEOUT_S,
        metadata={"reply_to": envelope["from_agent_id"], "correlation_id": correlation_id, "hop": hop,
                  "in_reply_to": envelope["message_id"]},
    )
    try:
        execution = requests.request(principal, receiver.id, body,
                                       idempotency_key=f"message:{envelope['message_id']}", enqueue=enqueue)
    except GovernanceDenied as exc:  # recorded as a denied execution; the message itself was delivered
        return str(exc.details.get("execution_id")) if exc.details.get("execution_id") else None
    return str(execution.id)


def send_message(principal: Principal, from_agent_id: str, request: MessageRequest, *,
                 enqueue: Enqueue | None = None) -> dict[str, Any]:
    """POST /agents/{id}/messages: confirmed send, then the receiver's execution when asked or configured."""
    if request.execute:
        receiver = messaging.receiver_of(principal, from_agent_id, request.to_agent_id)[1]
        if not as_text(request.message) or len(as_text(request.message)) > MAX_EXECUTION_MESSAGE:
            raise ValidationFailed(f"execute needs a message of 1..{MAX_EXECUTION_MESSAGE} characters as text",
                                   {"field": "message"})
        llm_config.check(principal.workspace_id, receiver)
    receiver, sent = messaging.send(principal, from_agent_id, request)
    result: dict[str, Any] = {**sent, "execution_id": None}
    if request.execute or receiver.auto_reply:
        envelope = {"message_id": sent["message_id"], "from_agent_id": from_agent_id, "message": request.message,
                    "correlation_id": request.correlation_id, "hop": 0}
        result["execution_id"] = start_execution(principal, receiver, envelope, enqueue=enqueue,
                                                 explicit=request.execute)
    return result


def _deliver_reply(**fields: Any) -> dict[str, Any] | None:
    """A reply outlives a short broker outage (same message_id each try); after that it is audited as an error."""
    for attempt, delay_s in enumerate(REPLY_RETRY_DELAYS_S):
        try:
            return messaging.deliver(**fields)
        except Unavailable:
            log.warning("reply %s not confirmed (attempt %d)", fields["message_id"], attempt + 1,
                        extra={"message_id": fields["message_id"]})
            time.sleep(delay_s)
    db.session.rollback()
    audit.record(workspace_id=fields["workspace_id"], actor=fields["actor"], agent_id=fields["from_agent_id"],
                 execution_id=fields["execution_id"], action="message.sent", result="error",
                 details={"reason": "broker_unavailable", "message_id": fields["message_id"],
                          "to_agent_id": fields["to_agent_id"], "hop": fields["hop"]})
    db.session.commit()
    return None


def reply_for_execution(execution_id: str, *, enqueue: Enqueue | None = None) -> dict[str, Any] | None:
    """Called once the persist step ran (also on a redelivery): send a completed execution's output back."""
    execution = db.session.get(Execution, execution_id)
    meta = (execution.meta or {}) if execution is not None else {}
    if execution is None or not meta.get("reply_to") or execution.status != ExecutionStatus.COMPLETED.value:
        db.session.rollback()
        return None
    in_reply_to, reply_to = str(meta["in_reply_to"]), str(meta["reply_to"])
    hop, correlation_id = int(meta.get("hop") or 0), meta.get("correlation_id") or in_reply_to
    workspace_id, sender_id = execution.workspace_id, execution.agent_id
    actor = f"agent:{sender_id}"
    reply_hop = next_hop(hop, _max_hops())
    if reply_hop is None:
        _refuse(workspace_id, actor, sender_id, reply_to, hop=hop + 1, in_reply_to=in_reply_to,
                correlation_id=correlation_id, execution_id=execution_id)
        return None
    receiver = db.session.get(Agent, reply_to)
    if receiver is None or receiver.deleted_at is not None or receiver.workspace_id != workspace_id:
        log.info("not replying to %s: the agent is gone", reply_to, extra={"execution_id": execution_id})
        db.session.rollback()
        return None
    reply_id = reply_message_id(in_reply_to)
    output = execution.output or ""
    sent = _deliver_reply(workspace_id=workspace_id, actor=actor, from_agent_id=sender_id, to_agent_id=reply_to,
                          message=output, correlation_id=correlation_id, message_id=reply_id, hop=reply_hop,
                          execution_id=execution_id)
    if sent is None:
        return None
    if receiver.auto_reply:
        principal = Principal(workspace_id=workspace_id, key_id="", actor=actor)
        envelope = {"message_id": reply_id, "from_agent_id": sender_id, "message": output,
                    "correlation_id": correlation_id, "hop": reply_hop}
        with tracing.linked_trace("workflow.reply", **{"agent_runtime.execution.id": execution_id}):
            sent["execution_id"] = start_execution(principal, receiver, envelope, enqueue=enqueue, explicit=False)
    return sent
