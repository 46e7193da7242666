"""SocialLayer on the real broker and databases: confirms, unroutable, FIFO, exactly once."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from coordination import topology
from coordination.errors import BatchDeliveryError, BrokerUnavailable, HopLimitExceeded, Unroutable
from coordination.social import SocialLayer
from tests.integration.coordination.helpers import count_rows, new_agent_id, stored_ids


def test_unroutable_send_raises(social: SocialLayer) -> None:
    with pytest.raises(Unroutable) as err:
        social.send_message(from_agent_id="a", to_agent_id=new_agent_id("nobody"), message="hello?")
    assert err.value.message_id


def test_send_after_inbox_deleted_is_unroutable(
    social: SocialLayer, coord_broker_url: str, agents: Callable[..., str]
) -> None:
    receiver = agents()
    social.send_message(from_agent_id="a", to_agent_id=receiver, message=1)
    topology.delete_agent_inbox(coord_broker_url, receiver)
    with pytest.raises(Unroutable):
        social.send_message(from_agent_id="a", to_agent_id=receiver, message=2)


def test_agent_to_agent_messaging(social: SocialLayer, agents: Callable[..., str]) -> None:
    """A confirmed send is readable at once, with no mailbox running."""
    sender, receiver = agents("sender"), agents("receiver")
    result = social.send_message(
        from_agent_id=sender,
        to_agent_id=receiver,
        message={"text": "hi", "n": [1, 2]},
        correlation_id="corr-1",
        workspace_id="ws-1",
    )
    assert result["status"] == "confirmed"
    (msg,) = social.get_messages(agent_id=receiver)
    assert msg["message_id"] == result["message_id"]
    assert msg["from_agent_id"] == sender and msg["to_agent_id"] == receiver
    assert msg["message"] == {"text": "hi", "n": [1, 2]}
    assert msg["correlation_id"] == "corr-1"
    assert msg["hop"] == 0
    assert msg["sent_at"].endswith("Z") and msg["delivered_at"].endswith("Z")
    assert msg["sent_at"] <= msg["delivered_at"]
    assert social.get_messages(agent_id=sender) == []
    assert social.get_messages(agent_id=receiver, after=msg["seq"]) == []


def test_message_ordering_fifo(social: SocialLayer, agents: Callable[..., str]) -> None:
    """200 sequential sends appear in the order their sends returned."""
    sender, receiver = agents("sender"), agents("receiver")
    sent = [
        social.send_message(from_agent_id=sender, to_agent_id=receiver, message=i)["message_id"] for i in range(200)
    ]
    first = social.get_messages(agent_id=receiver, limit=150)
    rest = social.get_messages(agent_id=receiver, after=first[-1]["seq"], limit=150)
    messages = first + rest
    assert [m["message_id"] for m in messages] == sent
    assert [m["message"] for m in messages] == list(range(200))
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == 200


def test_duplicate_message_id_stores_one_row(social: SocialLayer, agents: Callable[..., str], engine: Engine) -> None:
    receiver = agents()
    for _ in range(3):
        social.send_message(from_agent_id="a", to_agent_id=receiver, message="same", message_id="dup-1")
        social.get_messages(agent_id=receiver)
    social.send_message(from_agent_id="a", to_agent_id=receiver, message="same", message_id="dup-1")
    assert [m["message_id"] for m in social.get_messages(agent_id=receiver)] == ["dup-1"]
    assert count_rows(engine, receiver) == 1


def test_send_many_pipelined_in_order(social: SocialLayer, agents: Callable[..., str]) -> None:
    receiver = agents()
    batch = [{"from_agent_id": "a", "to_agent_id": receiver, "message": i} for i in range(300)]
    results = social.send_many(batch)
    assert [r["status"] for r in results] == ["confirmed"] * 300
    messages = social.get_messages(agent_id=receiver, limit=1000)
    assert [m["message_id"] for m in messages] == [r["message_id"] for r in results]


def test_send_many_reports_the_unroutable_item(social: SocialLayer, agents: Callable[..., str]) -> None:
    receiver = agents()
    batch = [
        {"from_agent_id": "a", "to_agent_id": receiver, "message": 1},
        {"from_agent_id": "a", "to_agent_id": new_agent_id("ghost"), "message": 2},
        {"from_agent_id": "a", "to_agent_id": receiver, "message": 3},
    ]
    with pytest.raises(BatchDeliveryError) as err:
        social.send_many(batch)
    assert [r["status"] for r in err.value.results] == ["confirmed", "failed", "confirmed"]
    assert err.value.results[1]["error"] == "Unroutable"
    results = social.send_many(batch, raise_on_error=False)
    assert [r["status"] for r in results] == ["confirmed", "failed", "confirmed"]
    assert [m["message"] for m in social.get_messages(agent_id=receiver)] == [1, 3, 1, 3]


def test_concurrent_senders_each_keep_their_order(social: SocialLayer, agents: Callable[..., str]) -> None:
    """Threads never share a connection (pool); per-sender FIFO holds in one receiver's inbox."""
    receiver = agents()
    sent: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def run(sender: str) -> None:
        try:
            sent[sender] = [
                social.send_message(from_agent_id=sender, to_agent_id=receiver, message=i)["message_id"]
                for i in range(40)
            ]
            social.get_messages(agent_id=receiver)  # drains race with the other senders' drains
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"sender-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    messages = social.get_messages(agent_id=receiver, limit=1000)
    assert len(messages) == 160 and len({m["message_id"] for m in messages}) == 160
    for sender, ids in sent.items():
        assert [m["message_id"] for m in messages if m["from_agent_id"] == sender] == ids


def test_hop_limit_is_enforced_at_send(social: SocialLayer, agents: Callable[..., str]) -> None:
    receiver = agents()
    social.send_message(from_agent_id="a", to_agent_id=receiver, message="x", hop=social.max_hops)
    with pytest.raises(HopLimitExceeded):
        social.send_message(from_agent_id="a", to_agent_id=receiver, message="x", hop=social.max_hops + 1)


def test_invalid_input_raises_value_error(social: SocialLayer, agents: Callable[..., str]) -> None:
    receiver = agents()
    with pytest.raises(ValueError):
        social.send_message(from_agent_id="a", to_agent_id=receiver, message={1, 2})
    with pytest.raises(ValueError):
        social.send_message(from_agent_id="", to_agent_id=receiver, message="x")
    with pytest.raises(ValueError):
        social.send_message(from_agent_id="a", to_agent_id=receiver, message="x", message_id="m" * 129)
    assert social.get_messages(agent_id=receiver) == []


def test_broker_unreachable_raises_quickly(sqlite_engine: Engine) -> None:
    layer = SocialLayer("amqp://guest:guest@127.0.0.1:1//", sqlite_engine, confirm_timeout_s=2)
    with pytest.raises(BrokerUnavailable):
        layer.send_message(from_agent_id="a", to_agent_id="b", message="x")
    with pytest.raises(BrokerUnavailable):
        layer.get_messages(agent_id="b")


def test_dead_pooled_connection_is_replaced(social: SocialLayer, agents: Callable[..., str]) -> None:
    """A pooled connection killed under us: the send reconnects once and still confirms."""
    receiver = agents()
    social.send_message(from_agent_id="a", to_agent_id=receiver, message=1)
    for session in social.pool._idle:  # the broker or network dropping idle connections
        session.connection.connection.sock.close()
    social.send_message(from_agent_id="a", to_agent_id=receiver, message=2)
    assert [m["message"] for m in social.get_messages(agent_id=receiver)] == [1, 2]


def test_quorum_inbox_round_trip(pg_social: SocialLayer, agents: Callable[..., str], pg_engine: Engine) -> None:
    receiver = agents("quorum", queue_type="quorum")
    ids = [pg_social.send_message(from_agent_id="a", to_agent_id=receiver, message=i)["message_id"] for i in range(20)]
    assert [m["message_id"] for m in pg_social.get_messages(agent_id=receiver)] == ids
    assert stored_ids(pg_engine, receiver) == ids
