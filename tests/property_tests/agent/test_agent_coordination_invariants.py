"""Hypothesis through the REST API and the app's services, on the real RabbitMQ and PostgreSQL:
FIFO, exactly once, fan-out to every subscriber, workflows that end within MAX_HOPS, and interleavings of
sends, reads and consumer restarts (RuleBasedStateMachine)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import select, update

from app.extensions import db
from app.models import Execution
from app.services import coordination_clients, events, workflows
from app.services.auth import Principal
from app.services.messaging import MessageRequest
from app.timeutil import utcnow
from coordination import schema
from coordination.mailbox import Mailbox
from tests.support.api import ApiClient, new_workspace_client

EXAMPLES = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_serial = itertools.count()


@pytest.fixture
def api(pg_app: Flask) -> ApiClient:
    """PostgreSQL only: the in-process mailbox and the API share the database (SQLite is covered elsewhere)."""
    return new_workspace_client(pg_app)


class Agents:
    """Agents made for one example and deleted afterwards (their inbox queues go with them)."""

    def __init__(self, api: ApiClient, count: int, **fields: Any) -> None:
        self.api = api
        self.ids = [api.create_agent(**fields)["id"] for _ in range(count)]

    def __enter__(self) -> list[str]:
        return self.ids

    def __exit__(self, *exc: object) -> None:
        for agent_id in self.ids:
            self.api.delete(f"/agents/{agent_id}")


@pytest.fixture
def mailbox(pg_app: Flask) -> Iterator[list[str]]:
    """A background mailbox (the app's hooks) racing the API's own drains; tests put agent ids in the list."""
    watched: list[str] = []
    with pg_app.app_context():
        engine = db.engine
    box = Mailbox(pg_app.config["BROKER_URL"], engine, list_agent_ids=lambda: list(watched), poll_interval_s=0.02,
                  sweep_interval_s=0.05, on_stored=coordination_clients.on_stored)
    box.start()
    yield watched
    box.stop()


def send(api: ApiClient, sender: str, receiver: str, message: Any, **fields: Any) -> str:
    response = api.post(f"/agents/{sender}/messages", json={"to_agent_id": receiver, "message": message, **fields})
    assert response.status_code == 201, response.get_json()
    message_id: str = response.get_json()["message_id"]
    return message_id


def read(api: ApiClient, agent_id: str, after: int = 0) -> list[dict[str, Any]]:
    response = api.get(f"/agents/{agent_id}/messages", query_string={"after": after, "limit": 1000})
    assert response.status_code == 200, response.get_json()
    messages: list[dict[str, Any]] = response.get_json()["messages"]
    return messages


def stored_ids(app: Flask, agent_id: str) -> list[str]:
    """The inbox table as it is (no drain), in seq order."""
    table = schema.inbox_messages
    with app.app_context():
        query = select(table.c.message_id).where(table.c.to_agent_id == agent_id).order_by(table.c.seq)
        return list(db.session.execute(query).scalars())


# --- FIFO -----------------------------------------------------------------------------------------------------

fifo_plans = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(min_value=0, max_value=1), st.integers(min_value=1, max_value=3)),
        st.tuples(st.just("read"), st.integers(min_value=0, max_value=20), st.just(0)),
    ),
    min_size=1,
    max_size=6,
)


@pytest.fixture
def senders(api: ApiClient) -> Iterator[list[str]]:
    """Two senders for the whole test; each example gets a fresh receiver."""
    with Agents(api, 2) as ids:
        yield ids


@EXAMPLES
@given(plan=fifo_plans)
def test_fifo_ordering_invariant(api: ApiClient, mailbox: list[str], senders: list[str],
                                 plan: list[tuple[str, int, int]]) -> None:
    """Every read is exactly the messages sent so far after the given seq, in the order their sends returned."""
    first, second = senders
    with Agents(api, 1) as (receiver,):
        mailbox.append(receiver)
        sent: list[str] = []
        for kind, a, b in plan:
            if kind == "send":
                sender = (first, second)[a]
                sent += [send(api, sender, receiver, f"{sender[:4]}-{len(sent) + i}") for i in range(b)]
                continue
            everything = read(api, receiver)
            assert [m["message_id"] for m in everything] == sent
            skip = min(a, len(everything))
            after = everything[skip - 1]["seq"] if skip else 0
            assert [m["message_id"] for m in read(api, receiver, after)] == sent[skip:]
        assert [m["message_id"] for m in read(api, receiver)] == sent
        mailbox.remove(receiver)


# --- exactly once ------------------------------------------------------------------------------------------------


@EXAMPLES
@given(keys=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=10),
       reads=st.sets(st.integers(min_value=0, max_value=9), max_size=3))
def test_no_lost_messages_invariant(api: ApiClient, mailbox: list[str], senders: list[str], keys: list[int],
                                    reads: set[int]) -> None:
    """Retried sends (same message_id) and racing drains: each confirmed message in the inbox exactly once."""
    prefix = f"once-{next(_serial)}-{uuid.uuid4().hex[:8]}"
    sender = senders[0]
    with Agents(api, 1) as (receiver,):
        mailbox.append(receiver)
        for index, key in enumerate(keys):
            assert send(api, sender, receiver, key, message_id=f"{prefix}-{key}") == f"{prefix}-{key}"
            if index in reads:
                read(api, receiver)
        expected = [f"{prefix}-{key}" for key in dict.fromkeys(keys)]
        messages = read(api, receiver)
        assert [m["message_id"] for m in messages] == expected
        assert [m["message"] for m in messages] == list(dict.fromkeys(keys))
        assert stored_ids(api.client.application, receiver) == expected
        mailbox.remove(receiver)


# --- fan-out ---------------------------------------------------------------------------------------------------

WORDS = ["order", "invoice", "agent", "created", "paid"]


def topic_matches(pattern: str, routing_key: str) -> bool:
    """RabbitMQ topic semantics: `*` is exactly one word, `#` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), routing_key.split("."))


patterns = st.lists(st.sampled_from([*WORDS, "*", "#"]), min_size=1, max_size=3).map(".".join)
event_types = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(".".join)


@EXAMPLES
@given(subscriptions=st.lists(patterns, min_size=1, max_size=3), published=st.lists(event_types, max_size=6))
def test_delivery_to_all_subscribers(api: ApiClient, other_api: ApiClient, subscriptions: list[str],
                                     published: list[str]) -> None:
    """Every subscriber bound before a publish gets every matching event of its workspace, in order, and no other."""
    app = api.client.application
    mine = Principal(workspace_id=api.workspace_id, key_id="", actor="test")
    theirs = Principal(workspace_id=other_api.workspace_id, key_id="", actor="test")
    with app.test_request_context():
        listeners = [events.listen(mine, pattern, idle_s=0.05) for pattern in subscriptions]
        foreign = events.listen(theirs, "#", idle_s=0.05)
    try:
        ids = []
        for event_type in published:
            response = api.post("/events", json={"event_type": event_type, "data": {"n": len(ids)}})
            assert response.status_code == 202
            ids.append((response.get_json()["event_id"], event_type))
        for pattern, listener in zip(subscriptions, listeners, strict=True):
            expected = [(event_id, t) for event_id, t in ids if topic_matches(pattern, t)]
            got = []
            while (event := listener.get(0.3 if len(got) < len(expected) else 0.02)) is not None:
                public = events.public_event(api.workspace_id, event)
                got.append((public["event_id"], public["event_type"]))
            assert got == expected, pattern
        assert foreign.get(0.02) is None
    finally:
        for listener in [*listeners, foreign]:
            listener.close()


@pytest.fixture
def other_api(pg_app: Flask) -> ApiClient:
    return new_workspace_client(pg_app)


# --- workflows end -------------------------------------------------------------------------------------------


@EXAMPLES
@given(max_hops=st.integers(min_value=0, max_value=4), auto=st.tuples(st.booleans(), st.booleans()),
       execute=st.booleans())
def test_workflow_termination_within_max_hops(api: ApiClient, max_hops: int, auto: tuple[bool, bool],
                                              execute: bool) -> None:
    """Replies run through the real services (executions stand in for the worker): hops 0..MAX_HOPS, then stop."""
    app = api.client.application
    queued: list[str] = []
    previous = app.config["MAX_HOPS"]
    app.config["MAX_HOPS"] = max_hops
    principal = Principal(workspace_id=api.workspace_id, key_id="", actor="test")
    try:
        with Agents(api, 1, auto_reply=auto[0]) as (a,), Agents(api, 1, auto_reply=auto[1]) as (b,):
            with app.app_context():
                workflows.send_message(principal, a, MessageRequest(to_agent_id=b, message="start", execute=execute),
                                       enqueue=lambda execution_id, _tasks: queued.append(execution_id))
                for step in range(4 * (max_hops + 2)):
                    if not queued:
                        break
                    execution_id = queued.pop(0)
                    finish(execution_id, f"reply {step}")
                    workflows.reply_for_execution(execution_id, enqueue=lambda e, _t: queued.append(e))
                assert not queued, "the workflow did not end"
            hops = sorted(m["hop"] for m in read(api, a) + read(api, b))
            assert hops == list(range(len(hops))) and len(hops) <= max_hops + 1
            runs = execute or auto[1]
            if auto == (True, True):
                assert len(hops) == max_hops + 1
                refused = api.get("/audit", query_string={"action": "message.sent", "limit": 200}).get_json()["items"]
                assert [r["details"]["hop"] for r in refused if r["result"] == "denied"][:1] == [max_hops + 1]
            elif not runs:
                assert hops == [0]
            elif max_hops >= 1 and not auto[0]:
                assert hops == [0, 1]
    finally:
        app.config["MAX_HOPS"] = previous


def test_a_redelivered_persist_sends_one_reply(api: ApiClient) -> None:
    """reply_for_execution runs again when the persist task is redelivered: the same reply, stored once."""
    app = api.client.application
    queued: list[str] = []
    principal = Principal(workspace_id=api.workspace_id, key_id="", actor="test")
    with Agents(api, 1) as (a,), Agents(api, 1) as (b,):
        with app.app_context():
            workflows.send_message(principal, a, MessageRequest(to_agent_id=b, message="ping", execute=True),
                                   enqueue=lambda execution_id, _tasks: queued.append(execution_id))
            (execution_id,) = queued
            finish(execution_id, "pong")
            first = workflows.reply_for_execution(execution_id, enqueue=lambda e, _t: queued.append(e))
            again = workflows.reply_for_execution(execution_id, enqueue=lambda e, _t: queued.append(e))
        assert first is not None and again is not None and first["message_id"] == again["message_id"]
        replies = read(api, a)
        assert [(m["message"], m["hop"], m["message_id"]) for m in replies] == [("pong", 1, first["message_id"])]


def finish(execution_id: str, output: str) -> None:
    """What the worker's chain would do: complete the execution with an output."""
    db.session.execute(update(Execution).where(Execution.id == execution_id)
                       .values(status="completed", output=output, started_at=utcnow(), finished_at=utcnow()))
    db.session.commit()


# --- interleavings ---------------------------------------------------------------------------------------------


class InboxMachine(RuleBasedStateMachine):
    """Sends (new and retried), reads, mailbox restarts and dropped broker connections, in any order."""

    api: ApiClient

    def __init__(self) -> None:
        super().__init__()
        self.app = self.api.client.application
        self.senders = [self.api.create_agent()["id"] for _ in range(2)]
        self.receiver = self.api.create_agent()["id"]
        self.sent: list[str] = []
        self.sender_of: dict[str, str] = {}
        self.box: Mailbox | None = None

    @rule(sender=st.integers(min_value=0, max_value=1), payload=st.integers())
    def send(self, sender: int, payload: int) -> None:
        message_id = send(self.api, self.senders[sender], self.receiver, payload)
        self.sent.append(message_id)
        self.sender_of[message_id] = self.senders[sender]

    @precondition(lambda self: bool(self.sent))
    @rule()
    def retry_last(self) -> None:
        last = self.sent[-1]
        send(self.api, self.sender_of[last], self.receiver, "retry", message_id=last)

    @rule(skip=st.integers(min_value=0, max_value=10))
    def read(self, skip: int) -> None:
        everything = read(self.api, self.receiver)
        assert [m["message_id"] for m in everything] == self.sent
        skip = min(skip, len(everything))
        after = everything[skip - 1]["seq"] if skip else 0
        assert [m["message_id"] for m in read(self.api, self.receiver, after)] == self.sent[skip:]

    @rule()
    def restart_consumer(self) -> None:
        if self.box is not None:
            self.box.stop()
        with self.app.app_context():
            engine = db.engine
        self.box = Mailbox(self.app.config["BROKER_URL"], engine, list_agent_ids=lambda: [self.receiver],
                           poll_interval_s=0.02, on_stored=coordination_clients.on_stored)
        self.box.start()

    @rule()
    def drop_broker_connections(self) -> None:
        with self.app.app_context():
            coordination_clients.social().close()

    @invariant()
    def stored_is_a_prefix_of_sent(self) -> None:
        stored = stored_ids(self.app, self.receiver)
        assert stored == self.sent[: len(stored)]

    def teardown(self) -> None:
        if self.box is not None:
            self.box.stop()
        assert [m["message_id"] for m in read(self.api, self.receiver)] == self.sent
        for agent_id in [*self.senders, self.receiver]:
            self.api.delete(f"/agents/{agent_id}")


def test_interleaved_sends_reads_and_consumer_restarts(api: ApiClient) -> None:
    InboxMachine.api = api
    run_state_machine_as_test(
        InboxMachine,
        settings=settings(max_examples=50, stateful_step_count=8, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
