"""Exceptions of the coordination layer: a failed delivery is always raised, never swallowed."""

from __future__ import annotations

from typing import Any


class CoordinationError(Exception):
    """Root of every error this package raises on purpose."""


class DeliveryError(CoordinationError):
    """A message or event could not be confirmed by the broker (the API answers 503)."""

    def __init__(self, message: str, *, message_id: str | None = None) -> None:
        super().__init__(message)
        self.message_id = message_id


class Unroutable(DeliveryError):
    """The broker returned the message (mandatory=True): no queue is bound for that receiver."""


class NotConfirmed(DeliveryError):
    """No publisher confirm arrived within the timeout; the send may or may not have reached a queue."""


class Nacked(NotConfirmed):
    """The broker answered basic.nack: it could not take responsibility for the message."""


class BrokerBlocked(NotConfirmed):
    """RabbitMQ blocks publishers (memory or disk alarm, connection.blocked): retry once the alarm clears."""


class BrokerUnavailable(DeliveryError):
    """The broker could not be reached or the connection died (after one reconnect)."""


class BatchDeliveryError(DeliveryError):
    """Some items of a send_many batch failed; `results` holds the per-item outcome in input order."""

    def __init__(self, message: str, results: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.results = results


class HopLimitExceeded(CoordinationError, ValueError):
    """A message would exceed the configured maximum hop count of a workflow."""
