"""Hypothesis on the real broker and databases: FIFO, exactly once, fan-out, interleavings (workflow termination
is proven against the app's replies in tests/property_tests/agent)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import Engine

from coordination import topology
from coordination.events import EventBus
from coordination.mailbox import Mailbox
from coordination.social import SocialLayer
from tests.integration.coordination.helpers import count_rows, new_agent_id, stored_ids, wait_for

EXAMPLES = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def layer(coord_broker_url: str, engine: Engine) -> Iterator[SocialLayer]:
    """One SocialLayer per test (it keeps no per-example state); each example makes its own agents."""
    social = SocialLayer(coord_broker_url, engine, max_hops=8)
    yield social
    social.close()


class Inbox:
    """A fresh agent inbox for one hypothesis example, deleted afterwards."""

    def __init__(self, broker_url: str, prefix: str = "prop") -> None:
        self.broker_url = broker_url
        self.agent_id = new_agent_id(prefix)
        topology.declare_agent_inbox(broker_url, self.agent_id)

    def __enter__(self) -> str:
        return self.agent_id

    def __exit__(self, *exc: object) -> None:
        topology.delete_agent_inbox(self.broker_url, self.agent_id)


# A step: ("one", n) n single sends, ("many", n) one batch of n, ("read", 0) a read in between.
steps = st.lists(
    st.tuples(st.sampled_from(["one", "many", "read"]), st.integers(min_value=1, max_value=6)),
    min_size=1,
    max_size=8,
)


@EXAMPLES
@given(plan=steps)
def test_fifo_ordering_invariant(layer: SocialLayer, coord_broker_url: str, plan: list[tuple[str, int]]) -> None:
    """Every read is exactly the messages sent so far, in the order their sends returned."""
    with Inbox(coord_broker_url) as receiver:
        sent: list[str] = []
        counter = 0
        for kind, n in plan:
            if kind == "one":
                for _ in range(n):
                    sent.append(
                        layer.send_message(from_agent_id="s", to_agent_id=receiver, message=counter)["message_id"]
                    )
                    counter += 1
            elif kind == "many":
                batch = [{"from_agent_id": "s", "to_agent_id": receiver, "message": counter + i} for i in range(n)]
                sent += [r["message_id"] for r in layer.send_many(batch)]
                counter += n
            else:
                assert [m["message_id"] for m in layer.get_messages(agent_id=receiver, limit=1000)] == sent
        messages = layer.get_messages(agent_id=receiver, limit=1000)
        assert [m["message_id"] for m in messages] == sent
        assert [m["message"] for m in messages] == list(range(counter))
        assert all(a["seq"] < b["seq"] for a, b in zip(messages, messages[1:], strict=False))


@EXAMPLES
@given(
    keys=st.lists(st.integers(min_value=0, max_value=7), min_size=1, max_size=20),
    reads=st.lists(st.booleans(), min_size=20, max_size=20),
)
def test_no_lost_messages_invariant(
    layer: SocialLayer, coord_broker_url: str, engine: Engine, keys: list[int], reads: list[bool]
) -> None:
    """Exactly once: every confirmed message_id is stored once, retries with the same id add nothing."""
    with Inbox(coord_broker_url) as receiver:
        first_seen: list[str] = []
        for key, read in zip(keys, reads, strict=False):
            message_id = f"{receiver}-{key}"
            layer.send_message(from_agent_id="s", to_agent_id=receiver, message=key, message_id=message_id)
            if message_id not in first_seen:
                first_seen.append(message_id)
            if read:
                layer.get_messages(agent_id=receiver)
        messages = layer.get_messages(agent_id=receiver, limit=1000)
        assert [m["message_id"] for m in messages] == first_seen
        assert count_rows(engine, receiver) == len(set(first_seen))


def topic_matches(pattern: str, event_type: str) -> bool:
    """RabbitMQ topic matching (* = one word, # = zero or more), as the oracle."""

    def match(p: list[str], w: list[str]) -> bool:
        if not p:
            return not w
        if p[0] == "#":
            return any(match(p[1:], w[i:]) for i in range(len(w) + 1))
        return bool(w) and (p[0] == "*" or p[0] == w[0]) and match(p[1:], w[1:])

    return match(pattern.split("."), event_type.split("."))


def example_of(pattern: str) -> str:
    """A concrete event type the pattern matches (the per-subscriber end-of-stream marker)."""
    return ".".join("end" if word in ("*", "#") else word for word in pattern.split("."))


PATTERN_TAILS = ["#", "*", "a.*", "a.#", "b", "*.x", "a.x", "#.x"]
TYPE_TAILS = ["a", "b", "a.x", "a.y", "b.x", "a.y.x", "c"]


@pytest.fixture
def bus(coord_broker_url: str) -> Iterator[EventBus]:
    event_bus = EventBus(coord_broker_url)
    yield event_bus
    event_bus.close()


@EXAMPLES
@given(
    patterns=st.lists(st.sampled_from(PATTERN_TAILS), min_size=1, max_size=3),
    types=st.lists(st.sampled_from(TYPE_TAILS), min_size=1, max_size=8),
)
def test_delivery_to_all_subscribers(bus: EventBus, patterns: list[str], types: list[str]) -> None:
    """Every subscriber gets exactly the events after its subscribe whose type matches its pattern, in order."""
    scope = f"p{uuid.uuid4().hex[:8]}"
    received: list[list[dict[str, Any]]] = [[] for _ in patterns]
    lock = threading.Lock()

    def collector(i: int) -> Any:
        def handle(event: dict[str, Any]) -> None:
            with lock:
                received[i].append(event)

        return handle

    full = [f"{scope}.{tail}" for tail in patterns]
    subs = [bus.subscribe(event_type=pattern, handler=collector(i)) for i, pattern in enumerate(full)]
    try:
        published = [(bus.publish(event_type=f"{scope}.{t}", data={"t": t}), f"{scope}.{t}") for t in types]
        markers = [bus.publish(event_type=example_of(pattern), data={"end": True}) for pattern in full]
        for i, marker in enumerate(markers):
            assert wait_for(lambda i=i, marker=marker: any(e["event_id"] == marker for e in received[i]))
        marker_ids = set(markers)
        for i, pattern in enumerate(full):
            with lock:
                got = [e["event_id"] for e in received[i] if e["event_id"] not in marker_ids]
            assert got == [eid for eid, etype in published if topic_matches(pattern, etype)]
    finally:
        for sub in subs:
            sub.close(timeout_s=0)  # stop them all at once, then wait
        assert wait_for(lambda: all(sub.closed for sub in subs), timeout_s=5)


@dataclass
class MachineEnv:
    broker_url: str
    engine: Engine
    layer: SocialLayer


class InboxMachine(RuleBasedStateMachine):
    """Sends, resends, reads and mailbox restarts interleaved; the inbox always equals what was sent."""

    env: MachineEnv

    def __init__(self) -> None:
        super().__init__()
        self.agent = new_agent_id("sm")
        topology.declare_agent_inbox(self.env.broker_url, self.agent)
        self.sent: list[str] = []
        self.counter = 0
        self.mailbox: Mailbox | None = None
        self.start_mailbox()

    def start_mailbox(self) -> None:
        self.mailbox = Mailbox(
            self.env.broker_url, self.env.engine, list_agent_ids=lambda: [self.agent], poll_interval_s=0.002
        )
        self.mailbox.start()

    def _send(self, message_id: str | None = None) -> str:
        result = self.env.layer.send_message(
            from_agent_id="sm", to_agent_id=self.agent, message=self.counter, message_id=message_id
        )
        self.counter += 1
        return str(result["message_id"])

    @rule(n=st.integers(min_value=1, max_value=5))
    def send(self, n: int) -> None:
        for _ in range(n):
            self.sent.append(self._send())

    @rule(n=st.integers(min_value=1, max_value=10))
    def send_batch(self, n: int) -> None:
        batch = [{"from_agent_id": "sm", "to_agent_id": self.agent, "message": self.counter + i} for i in range(n)]
        self.counter += n
        self.sent += [r["message_id"] for r in self.env.layer.send_many(batch)]

    @precondition(lambda self: bool(self.sent))
    @rule(index=st.integers(min_value=0))
    def resend_same_id(self, index: int) -> None:
        self._send(self.sent[index % len(self.sent)])  # a client retry: must not duplicate

    @rule()
    def read(self) -> None:
        assert [m["message_id"] for m in self.env.layer.get_messages(agent_id=self.agent, limit=1000)] == self.sent

    @rule()
    def restart_mailbox(self) -> None:
        assert self.mailbox is not None
        self.mailbox.stop()
        self.start_mailbox()

    @rule()
    def crash_mailbox(self) -> None:
        """Drop the mailbox's connection under it, as a kill would: unacked messages are requeued."""
        assert self.mailbox is not None
        session = self.mailbox._session
        if session is not None:
            session.connection.connection.sock.close()
        self.mailbox.stop()
        self.start_mailbox()

    @invariant()
    def stored_prefix_in_order(self) -> None:
        """Whatever the mailbox stored so far is a prefix of the sends (never reordered or doubled)."""
        stored = stored_ids(self.env.engine, self.agent)
        assert stored == self.sent[: len(stored)]

    def teardown(self) -> None:
        try:
            if self.mailbox is not None:
                assert wait_for(lambda: len(stored_ids(self.env.engine, self.agent)) == len(self.sent), 10)
                self.mailbox.stop()
            assert stored_ids(self.env.engine, self.agent) == self.sent
        finally:
            if self.mailbox is not None:
                self.mailbox.stop()
            topology.delete_agent_inbox(self.env.broker_url, self.agent)


def test_interleaved_sends_reads_and_consumer_restarts(coord_broker_url: str, pg_engine: Engine) -> None:
    layer = SocialLayer(coord_broker_url, pg_engine)
    InboxMachine.env = MachineEnv(coord_broker_url, pg_engine, layer)
    try:
        run_state_machine_as_test(
            InboxMachine, settings=settings(max_examples=50, stateful_step_count=8, deadline=None)
        )
    finally:
        layer.close()
