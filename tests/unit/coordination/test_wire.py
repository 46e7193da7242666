"""Wire format, topology arguments, locks and confirm bookkeeping, without a broker."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from coordination import broker, topology
from coordination.broker import BrokerSession, _Tracking
from coordination.envelope import decode_delivery, encode_message, iso, next_hop, parse_iso, reply_message_id
from coordination.events import validate_event_type, validate_pattern
from coordination.inbox import AttemptTracker
from coordination.locks import lock_key


def delivery(outgoing: broker.Outgoing) -> Any:
    return SimpleNamespace(body=outgoing.body, properties=outgoing.properties, delivery_info={})


def test_encode_decode_round_trip() -> None:
    sent_at = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    out = encode_message(
        from_agent_id="a",
        to_agent_id="b",
        message={"k": ["v", 1]},
        message_id="m1",
        correlation_id="c1",
        workspace_id="ws",
        hop=3,
        sent_at=sent_at,
    )
    assert out.exchange == "agents.direct" and out.routing_key == "b" and out.mandatory
    assert out.properties["delivery_mode"] == 2 and out.properties["message_id"] == "m1"
    headers = out.properties["application_headers"]
    assert headers == {
        "from_agent_id": "a",
        "to_agent_id": "b",
        "hop": 3,
        "sent_at": iso(sent_at),
        "workspace_id": "ws",
    }
    row = decode_delivery("b", delivery(out))
    assert row["message"] == {"k": ["v", 1]} and row["hop"] == 3 and row["correlation_id"] == "c1"
    assert row["sent_at"] == sent_at and row["workspace_id"] == "ws"


def test_iso_is_utc_with_z() -> None:
    assert iso(datetime(2025, 1, 1, 12, 0, tzinfo=UTC)) == "2025-01-01T12:00:00.000000Z"
    assert iso(datetime(2025, 1, 1, 12, 0)) == "2025-01-01T12:00:00.000000Z"
    assert parse_iso("2025-01-01T12:00:00.000000Z") == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "body, headers, message_id",
    [(b"{bad", {"from_agent_id": "a"}, "m"), (b"1", {}, "m"), (b"1", {"from_agent_id": "a"}, None)],
)
def test_undecodable_deliveries_raise_value_error(body: bytes, headers: dict[str, Any], message_id: str | None) -> None:
    msg = SimpleNamespace(body=body, properties={"application_headers": headers, "message_id": message_id})
    with pytest.raises(ValueError):
        decode_delivery("b", msg)


def test_inbox_queue_arguments() -> None:
    classic = topology.inbox_queue("x")
    assert classic.name == "agent.x.inbox" and classic.routing_key == "x" and classic.durable
    assert classic.queue_arguments == {"x-queue-type": "classic", "x-dead-letter-exchange": "agents.dlx"}
    quorum = topology.inbox_queue("x", "quorum", max_attempts=7)
    assert quorum.queue_arguments["x-delivery-limit"] == 7
    with pytest.raises(ValueError):
        topology.inbox_queue("x", "stream")
    with pytest.raises(ValueError):
        topology.inbox_queue_name("has space")


def test_lock_key_is_stable_signed_64_bit() -> None:
    assert lock_key("agent-1") == lock_key("agent-1") != lock_key("agent-2")
    assert -(2**63) <= lock_key("agent-1") < 2**63


def test_attempt_tracker_counts_and_takes_broker_count_into_account() -> None:
    tracker = AttemptTracker(max_entries=2)
    assert tracker.record_failure("m") == 1
    assert tracker.record_failure("m") == 2
    assert tracker.record_failure("q", broker_count=4) == 5
    tracker.record_failure("z")  # evicts the oldest
    assert tracker.record_failure("m") == 1


def bare_session() -> BrokerSession:
    session = object.__new__(BrokerSession)
    session._tracking = _Tracking(pending={1: "a", 2: "b", 3: "c", 4: "b"})
    return session


def test_return_then_multiple_ack_marks_only_the_returned_tag() -> None:
    session = bare_session()
    session._on_return(Exception("NO_ROUTE"), "agents.direct", "x", SimpleNamespace(properties={"message_id": "b"}))
    session._on_ack(3, True)
    session._on_nack(4, False)
    assert session._tracking.outcome == {1: "confirmed", 2: "unroutable", 3: "confirmed", 4: "nacked"}
    assert session._tracking.pending == {}


def test_event_type_and_pattern_validation() -> None:
    assert validate_event_type("agent.created") == "agent.created"
    assert validate_pattern("agent.#") == "agent.#" and validate_pattern("*.x") == "*.x"
    for bad in ("agent.*", "agent..x", "", "a b"):
        with pytest.raises(ValueError):
            validate_event_type(bad)
    with pytest.raises(ValueError):
        validate_pattern("agent.#x")


def test_next_hop_stops_at_max_hops() -> None:
    assert next_hop(0, 3) == 1
    assert next_hop(2, 3) == 3
    assert next_hop(3, 3) is None
    assert next_hop(0, 0) is None
    with pytest.raises(ValueError):
        next_hop(-1, 3)


def test_reply_id_is_deterministic() -> None:
    assert reply_message_id("m1") == reply_message_id("m1") != reply_message_id("m2")
