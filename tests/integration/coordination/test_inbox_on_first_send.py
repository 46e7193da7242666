"""SocialLayer with an inbox owner: a registered receiver's inbox is declared by the first send to it, once per
process, on the real broker; an unregistered receiver stays unroutable."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import amqp
import pytest
from sqlalchemy import Engine

from coordination import topology
from coordination.broker import connect
from coordination.errors import BatchDeliveryError, Unroutable
from coordination.social import SocialLayer
from tests.integration.coordination.helpers import new_agent_id


class Registry:
    """The owner callable: which receivers are registered, and every batch it was asked about."""

    def __init__(self, *registered: str) -> None:
        self.registered = set(registered)
        self.asked: list[list[str]] = []

    def __call__(self, agent_ids: list[str]) -> list[str]:
        self.asked.append(list(agent_ids))
        return [agent_id for agent_id in agent_ids if agent_id in self.registered]


def ready_count(broker_url: str, agent_id: str) -> int | None:
    """Ready count of the agent's inbox, or None if it does not exist."""
    conn = connect(broker_url, timeout_s=10)
    try:
        channel = conn.connection.channel()
        try:
            return int(channel.queue_declare(queue=topology.inbox_queue_name(agent_id), passive=True).message_count)
        except amqp.exceptions.NotFound:
            return None
    finally:
        conn.release()


@pytest.fixture
def receivers(coord_broker_url: str) -> Iterator[list[str]]:
    ids = [new_agent_id("lazy") for _ in range(3)]
    yield ids
    for agent_id in ids:
        topology.delete_agent_inbox(coord_broker_url, agent_id)


@pytest.fixture
def layer_for(coord_broker_url: str, engine: Engine) -> Iterator[Callable[..., tuple[SocialLayer, Registry]]]:
    """A SocialLayer whose owner calls the given receivers registered (closed at the end of the test)."""
    layers: list[SocialLayer] = []

    def make(*registered: str) -> tuple[SocialLayer, Registry]:
        registry = Registry(*registered)
        layers.append(SocialLayer(coord_broker_url, engine, inbox_owner=registry))
        return layers[-1], registry

    yield make
    for layer in layers:
        layer.close()


def test_first_send_declares_a_registered_receivers_inbox_once(
    layer_for: Callable[..., tuple[SocialLayer, Registry]], coord_broker_url: str, receivers: list[str]
) -> None:
    receiver = receivers[0]
    layer, registry = layer_for(receiver)
    assert ready_count(coord_broker_url, receiver) is None
    for n in range(3):
        layer.send_message(from_agent_id="a", to_agent_id=receiver, message=n)
    assert registry.asked == [[receiver]]  # asked once: the process remembers the inbox
    assert ready_count(coord_broker_url, receiver) == 3
    assert [m["message"] for m in layer.get_messages(agent_id=receiver)] == [0, 1, 2]


def test_an_unregistered_receiver_stays_unroutable(
    layer_for: Callable[..., tuple[SocialLayer, Registry]], coord_broker_url: str, receivers: list[str]
) -> None:
    stranger = receivers[0]
    layer, _registry = layer_for()
    with pytest.raises(Unroutable):
        layer.send_message(from_agent_id="a", to_agent_id=stranger, message="hello?")
    assert ready_count(coord_broker_url, stranger) is None


def test_a_batch_declares_its_new_receivers_together_and_keeps_each_order(
    layer_for: Callable[..., tuple[SocialLayer, Registry]], coord_broker_url: str, receivers: list[str]
) -> None:
    first, second, stranger = receivers
    layer, registry = layer_for(first, second)
    batch = [{"from_agent_id": "s", "to_agent_id": to, "message": n}
             for n, to in enumerate([first, second, first, stranger, second, first])]
    with pytest.raises(BatchDeliveryError) as err:
        layer.send_many(batch)
    assert [r["status"] for r in err.value.results] == ["confirmed"] * 3 + ["failed"] + ["confirmed"] * 2
    assert registry.asked == [[first, second, stranger]]
    assert [m["message"] for m in layer.get_messages(agent_id=first)] == [0, 2, 5]
    assert [m["message"] for m in layer.get_messages(agent_id=second)] == [1, 4]


def test_a_queue_deleted_behind_the_process_is_declared_again(
    layer_for: Callable[..., tuple[SocialLayer, Registry]], coord_broker_url: str, receivers: list[str]
) -> None:
    receiver = receivers[0]
    layer, registry = layer_for(receiver)
    layer.send_message(from_agent_id="a", to_agent_id=receiver, message=1)
    assert [m["message"] for m in layer.get_messages(agent_id=receiver)] == [1]
    topology.delete_agent_inbox(coord_broker_url, receiver)
    with pytest.raises(Unroutable):  # nothing was queued: the caller's retry (same message_id) is safe
        layer.send_message(from_agent_id="a", to_agent_id=receiver, message=2, message_id="again-2")
    layer.send_message(from_agent_id="a", to_agent_id=receiver, message=2, message_id="again-2")
    assert [m["message"] for m in layer.get_messages(agent_id=receiver)] == [1, 2]
    assert len(registry.asked) == 2


def test_declare_inboxes_declares_without_a_send(
    layer_for: Callable[..., tuple[SocialLayer, Registry]], coord_broker_url: str, receivers: list[str]
) -> None:
    layer, registry = layer_for(*receivers[:2])
    layer.declare_inboxes(receivers)
    assert [ready_count(coord_broker_url, r) for r in receivers] == [0, 0, None]
    layer.send_message(from_agent_id="a", to_agent_id=receivers[0], message="x")
    assert registry.asked == [receivers]  # the send found the inbox already known
