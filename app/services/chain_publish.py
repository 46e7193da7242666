"""Sending a Celery chain within CONFIRM_TIMEOUT_S, failing at once while RabbitMQ blocks publishers.

Celery's apply_async waits for the publisher confirm with no deadline by default, and a confirm does not come
while a memory or disk alarm blocks the connection: execute hung until the alarm cleared (celery #9259,
#2689). Here the confirm wait is bounded (py-amqp's confirm_timeout), and while any connection of this process
has heard connection.blocked, a send fails before publishing; after a second it re-checks with a probe publish
instead (the connection that heard the block may be gone).

The publish runs without kombu's retry: on a failure kombu first switches to the next node, and the switch
closes the old connection with a handshake that a blocked or frozen node never answers (the web hung there).
Here a failed connection is dropped without it and moved to the next node; a timed-out publish is not sent
again (it may still be queued: the caller fails the execution and the steps ignore a late copy), a dead
connection is retried on the next node within the deadline.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery
from celery.canvas import Signature

from app.celery_failover import drop_and_fail_over
from coordination import broker
from coordination.errors import BrokerBlocked, NotConfirmed
from coordination.flow import FLOW

RECHECK_AFTER_S = 1.0


def check_not_blocked(broker_url: str, timeout_s: float) -> None:
    """Raise BrokerBlocked if the broker blocks publishers: from what was heard, re-probed when stale."""
    state = FLOW.broker_state(broker_url)
    if state is None:
        return
    if state.age_s < RECHECK_AFTER_S:
        raise BrokerBlocked(f"the broker blocks publishers ({state.reason})")
    try:
        outcome = broker.probe(broker_url, timeout_s=timeout_s)
    except broker.CONNECTION_ERRORS:
        return  # unreachable is not blocked: the publish below fails (and fails over) on its own terms
    if outcome != broker.CONFIRMED:
        FLOW.mark(broker_url, f"probe: {outcome}")
        raise BrokerBlocked(f"the broker blocks publishers (probe: {outcome})")


def send(celery_app: Celery, signature: Signature, *, timeout_s: float) -> Any:
    """apply_async with the confirm bounded by timeout_s; raises NotConfirmed / BrokerBlocked instead of hanging."""
    broker_url = str(celery_app.conf.broker_url)
    deadline = time.monotonic() + timeout_s
    check_not_blocked(broker_url, timeout_s)
    last: Exception | None = None
    for _ in range(broker.node_count(broker_url) + 1):  # each node, and the first again (a stale pooled connection)
        with celery_app.pool.acquire(block=True) as connection:
            try:
                return signature.apply_async(connection=connection, retry=False,
                                             confirm_timeout=max(deadline - time.monotonic(), 0.05))
            except Exception as exc:
                cause = exc.__cause__ if exc.__cause__ is not None else exc  # kombu's OperationalError wraps it
                if not isinstance(cause, broker.CONNECTION_ERRORS):
                    raise
                drop_and_fail_over(connection)
                if isinstance(cause, TimeoutError) or time.monotonic() >= deadline:
                    state = FLOW.broker_state(broker_url)
                    if state is not None:
                        raise BrokerBlocked(f"the broker blocks publishers ({state.reason})") from exc
                    raise NotConfirmed(f"no publisher confirm within {timeout_s}s") from exc
                last = exc
    raise NotConfirmed(f"no node of the broker took the publish ({type(last).__name__})") from last


def transport_callbacks(broker_url: str) -> dict[str, Any]:
    """broker_transport_options entries that let every Celery connection report connection.blocked."""
    return FLOW.callbacks(broker_url)
