"""EventBus on the real broker: fan-out to every matching subscriber, durable named subscriptions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from coordination.events import EventBus
from tests.integration.coordination.helpers import wait_for


class Collector:
    """A thread-safe handler that remembers what it got."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def ids(self) -> list[str]:
        with self._lock:
            return [e["event_id"] for e in self.events]


@pytest.fixture
def bus(coord_broker_url: str) -> Iterator[EventBus]:
    event_bus = EventBus(coord_broker_url)
    yield event_bus
    event_bus.close()


def test_event_bus_communication(bus: EventBus) -> None:
    """Subscribe first, then publish: both matching subscribers get every event, the other none."""
    scope = uuid.uuid4().hex[:8]
    first, second, other = Collector(), Collector(), Collector()
    subs = [
        bus.subscribe(event_type=f"agent{scope}.#", handler=first),
        bus.subscribe(event_type=f"agent{scope}.*", handler=second),
        bus.subscribe(event_type=f"billing{scope}.#", handler=other),
    ]
    try:
        ids = [bus.publish(event_type=f"agent{scope}.created", data={"n": n}) for n in range(20)]
        sentinel = bus.publish(event_type=f"billing{scope}.sentinel", data={})
        assert wait_for(lambda: first.ids() == ids and second.ids() == ids)
        # Same queue order as publish order: once the sentinel is in, nothing else is coming.
        assert wait_for(lambda: other.ids() == [sentinel])
        event = first.events[0]
        assert set(event) == {"event_id", "event_type", "data", "published_at"}
        assert event["event_type"] == f"agent{scope}.created" and event["data"] == {"n": 0}
        assert event["published_at"].endswith("Z")
    finally:
        for sub in subs:
            sub.close()


def test_named_subscription_keeps_events_while_closed(bus: EventBus) -> None:
    scope = uuid.uuid4().hex[:8]
    name = f"audit-{scope}"
    before = Collector()
    sub = bus.subscribe(event_type=f"job{scope}.#", handler=before, name=name)
    first = bus.publish(event_type=f"job{scope}.started", data={})
    assert wait_for(lambda: before.ids() == [first])
    sub.close()
    missed = [bus.publish(event_type=f"job{scope}.step", data={"n": n}) for n in range(5)]
    after = Collector()
    sub = bus.subscribe(event_type=f"job{scope}.#", handler=after, name=name)
    try:
        assert wait_for(lambda: after.ids() == missed)
    finally:
        sub.close()
        with bus.pool.session() as session:
            session.channel().queue_delete(f"events.{name}")


def test_named_subscriptions_are_quorum_queues_with_quorum_and_old_ones_keep_their_type(
    bus: EventBus, coord_broker_url: str
) -> None:
    """QUEUE_TYPE=quorum: a new named subscription's queue is quorum (kept events survive a node loss on a
    cluster); one created classic before keeps its type, so subscribing to it again is not refused."""
    scope = uuid.uuid4().hex[:8]
    fresh, old = f"q-{scope}", f"c-{scope}"
    quorum_bus = EventBus(coord_broker_url, queue_type="quorum")
    bus.subscribe(event_type=f"old{scope}.#", handler=Collector(), name=old).close()
    try:
        for name, pattern in ((fresh, f"new{scope}.#"), (old, f"old{scope}.#")):
            quorum_bus.subscribe(event_type=pattern, handler=Collector(), name=name).close()
            missed = [quorum_bus.publish(event_type=pattern.replace("#", "step"), data={"n": n}) for n in range(3)]
            after = Collector()
            with quorum_bus.subscribe(event_type=pattern, handler=after, name=name):
                assert wait_for(lambda after=after, missed=missed: after.ids() == missed)
        with bus.pool.session() as session:
            # A redeclare with other x-queue-type arguments is refused, so these succeed only for the right type.
            session.channel().queue_declare(queue=f"events.{fresh}", durable=True, auto_delete=False,
                                            arguments={"x-queue-type": "quorum"})
            session.channel().queue_declare(queue=f"events.{old}", durable=True, auto_delete=False)
    finally:
        with bus.pool.session() as session:
            for name in (fresh, old):
                session.channel().queue_delete(f"events.{name}")
        quorum_bus.close()


def test_anonymous_subscription_gets_nothing_published_before_it(bus: EventBus) -> None:
    scope = uuid.uuid4().hex[:8]
    bus.publish(event_type=f"x{scope}.early", data={})
    got = Collector()
    with bus.subscribe(event_type=f"x{scope}.#", handler=got):
        late = bus.publish(event_type=f"x{scope}.late", data={})
        assert wait_for(lambda: got.ids() == [late])


def test_handler_errors_do_not_stop_the_subscription(bus: EventBus) -> None:
    scope = uuid.uuid4().hex[:8]
    got: list[int] = []

    def flaky(event: dict[str, Any]) -> None:
        if event["data"]["n"] == 0:
            raise RuntimeError("boom")
        got.append(event["data"]["n"])

    with bus.subscribe(event_type=f"f{scope}.#", handler=flaky):
        for n in range(3):
            bus.publish(event_type=f"f{scope}.e", data={"n": n})
        assert wait_for(lambda: got == [1, 2])


def test_listen_iterates_events_and_idles_with_none(bus: EventBus) -> None:
    scope = uuid.uuid4().hex[:8]
    with bus.listen(f"s{scope}.#", timeout=0.1) as listener:
        stream = iter(listener)
        assert next(stream) is None  # idle period: an SSE endpoint sends a heartbeat
        ids = [bus.publish(event_type=f"s{scope}.tick", data={"n": n}) for n in range(3)]
        got = [next(stream) for _ in range(3)]
        assert [e["event_id"] for e in got if e] == ids


def test_invalid_event_types_and_patterns_are_rejected(bus: EventBus) -> None:
    with pytest.raises(ValueError):
        bus.publish(event_type="agent.*", data={})
    with pytest.raises(ValueError):
        bus.publish(event_type="", data={})
    with pytest.raises(ValueError):
        bus.subscribe(event_type="agent..x", handler=Collector())
    with pytest.raises(ValueError):
        bus.publish(event_type="ok", data={1, 2})
