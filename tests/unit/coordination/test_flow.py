"""The blocked-state registry: per connection (weakly held) and per broker, fed by py-amqp's callbacks."""

from __future__ import annotations

import gc

from coordination.flow import FlowControl


class FakeRaw:
    """Stands in for a py-amqp connection: only the two callback attributes are used."""

    on_blocked = None
    on_unblocked = None


def test_blocked_then_unblocked_clears_connection_and_broker() -> None:
    flow = FlowControl()
    raw = flow.watch(FakeRaw(), "amqp://a//")
    assert flow.connection_state(raw) is None and flow.broker_state("amqp://a//") is None
    raw.on_blocked("low on memory")
    state = flow.connection_state(raw)
    assert state is not None and state.reason == "low on memory"
    assert flow.broker_state("amqp://a//") == state
    assert flow.broker_state("amqp://b//") is None  # another broker (tests run several) is not blocked
    raw.on_unblocked()
    assert flow.connection_state(raw) is None and flow.broker_state("amqp://a//") is None


def test_a_dropped_blocked_connection_is_forgotten_but_the_broker_stays_blocked() -> None:
    flow = FlowControl()
    raw = flow.watch(FakeRaw(), "amqp://a//")
    raw.on_blocked("disk")
    del raw
    gc.collect()
    assert len(flow._connections) == 0
    # Nobody will hear the unblock now: the broker state waits for a confirmed publish or a probe.
    assert flow.broker_state("amqp://a//") is not None
    flow.clear("amqp://a//")
    assert flow.broker_state("amqp://a//") is None


def test_transport_option_callbacks_track_the_broker_only() -> None:
    flow = FlowControl()
    callbacks = flow.callbacks("amqp://a//")
    callbacks["on_blocked"]("memory")
    assert flow.broker_state("amqp://a//") is not None
    callbacks["on_unblocked"]()
    assert flow.broker_state("amqp://a//") is None
