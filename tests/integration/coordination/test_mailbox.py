"""The mailbox process: background delivery, kill -9 mid-stream, poison -> agents.dead -> dead_letters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import amqp
import pytest
from sqlalchemy import Connection, Engine

from coordination.broker import BrokerSession
from coordination.deadletters import list_dead_letters
from coordination.errors import DeliveryError
from coordination.mailbox import Mailbox
from coordination.mailbox_process import management_agent_lister
from coordination.social import SocialLayer
from coordination.topology import AGENTS_EXCHANGE
from tests.integration.coordination.helpers import count_rows, stored_ids, wait_for

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def start_mailbox(coord_broker_url: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `python -m coordination.mailbox` processes; whatever is still running is killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(database_url: str, **env: str) -> subprocess.Popen[bytes]:
        environ = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BROKER_URL": coord_broker_url,
            "DATABASE_URL": database_url,
            "MAILBOX_POLL_INTERVAL": "0.02",
            "MAILBOX_SWEEP_INTERVAL": "0.5",
            "LOG_LEVEL": "WARNING",
            **env,
        }
        proc = subprocess.Popen([sys.executable, "-m", "coordination.mailbox"], env=environ, cwd=ROOT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _publish_raw(broker_url: str, agent_id: str, body: bytes, message_id: str, headers: dict[str, object]) -> None:
    """A message from a foreign publisher, bypassing SocialLayer's validation."""
    session = BrokerSession(broker_url)
    try:
        msg = amqp.Message(body, message_id=message_id, delivery_mode=2, application_headers=headers)
        session._confirm_channel().basic_publish(msg, exchange=AGENTS_EXCHANGE, routing_key=agent_id, mandatory=True)
        session.channel().queue_declare(queue="amq.rabbitmq.reply-to", passive=True)  # a round trip: published
    finally:
        session.close()


def test_mailbox_thread_delivers_in_background(
    social: SocialLayer, engine: Engine, agents: Callable[..., str], coord_broker_url: str
) -> None:
    receiver = agents()
    mailbox = Mailbox(coord_broker_url, engine, list_agent_ids=lambda: [receiver], poll_interval_s=0.02)
    mailbox.start()
    try:
        ids = [social.send_message(from_agent_id="a", to_agent_id=receiver, message=i)["message_id"] for i in range(50)]
        assert wait_for(lambda: count_rows(engine, receiver) == 50)
        assert stored_ids(engine, receiver) == ids
    finally:
        mailbox.stop()


def test_get_messages_races_a_running_mailbox_without_reordering(
    pg_social: SocialLayer, pg_engine: Engine, agents: Callable[..., str], coord_broker_url: str
) -> None:
    """Both drain under the same per-agent lock: a read always sees every sent message, in order."""
    receiver = agents()
    mailbox = Mailbox(coord_broker_url, pg_engine, list_agent_ids=lambda: [receiver], poll_interval_s=0.001)
    mailbox.start()
    try:
        sent: list[str] = []
        for i in range(150):
            sent.append(pg_social.send_message(from_agent_id="a", to_agent_id=receiver, message=i)["message_id"])
            if i % 5 == 0:
                seen = [m["message_id"] for m in pg_social.get_messages(agent_id=receiver, limit=1000)]
                assert seen == sent
    finally:
        mailbox.stop()
    assert [m["message_id"] for m in pg_social.get_messages(agent_id=receiver, limit=1000)] == sent


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_delivery_across_a_consumer_kill(
    database: str,
    request: pytest.FixtureRequest,
    agents: Callable[..., str],
    coord_broker_url: str,
    start_mailbox: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """SIGKILL the mailbox mid-stream, restart it: every confirmed message stored exactly once, in order."""
    engine: Engine = request.getfixturevalue("pg_engine" if database == "postgresql" else "sqlite_engine")
    database_url = engine.url.render_as_string(hide_password=False)
    receiver = agents("killed")
    layer = SocialLayer(coord_broker_url, engine)
    sent: list[str] = []
    try:
        proc = start_mailbox(database_url)
        for i in range(150):
            sent.append(layer.send_message(from_agent_id="a", to_agent_id=receiver, message=i)["message_id"])
        assert wait_for(lambda: count_rows(engine, receiver) > 0)
        batch = layer.send_many(
            [{"from_agent_id": "a", "to_agent_id": receiver, "message": i} for i in range(150, 400)]
        )
        sent += [r["message_id"] for r in batch]
        proc.send_signal(signal.SIGKILL)  # most likely in the middle of a drain of the batch
        proc.wait(10)
        for i in range(400, 450):
            sent.append(layer.send_message(from_agent_id="a", to_agent_id=receiver, message=i)["message_id"])
        proc = start_mailbox(database_url)
        for i in range(450, 500):
            sent.append(layer.send_message(from_agent_id="a", to_agent_id=receiver, message=i)["message_id"])
        assert wait_for(lambda: count_rows(engine, receiver) >= 500, timeout_s=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0  # graceful: finishes the drain in progress, exits 0
        assert stored_ids(engine, receiver) == sent
        assert [m["message"] for m in layer.get_messages(agent_id=receiver, limit=1000)] == list(range(500))
    finally:
        layer.close()


def test_poison_message_goes_to_dead_letters(
    pg_social: SocialLayer, pg_engine: Engine, agents: Callable[..., str], coord_broker_url: str
) -> None:
    """A body that is not JSON fails every store: after 5 tries it goes to agents.dead, then dead_letters."""
    receiver = agents("poison")
    first = pg_social.send_message(from_agent_id="a", to_agent_id=receiver, message="before")["message_id"]
    poison_id = f"poison-{receiver}"
    _publish_raw(coord_broker_url, receiver, b"{not json", poison_id, {"from_agent_id": "evil", "hop": 0})
    last = pg_social.send_message(from_agent_id="a", to_agent_id=receiver, message="after")["message_id"]
    assert [m["message_id"] for m in pg_social.get_messages(agent_id=receiver)] == [first, last]

    audited: list[dict[str, object]] = []
    mailbox = Mailbox(
        coord_broker_url,
        pg_engine,
        list_agent_ids=lambda: [receiver],
        on_dead_lettered=lambda conn, row: audited.append(row),
    )
    try:
        assert wait_for(lambda: mailbox.run_once().dead_letter_rows > 0 or bool(audited), timeout_s=10)
    finally:
        mailbox._close_session()
    rows = [r for r in list_dead_letters(pg_engine, to_agent_id=receiver) if r["message_id"] == poison_id]
    assert len(rows) == 1
    assert rows[0]["reason"] == "rejected"
    assert rows[0]["body"] == "{not json"
    assert rows[0]["from_agent_id"] == "evil"
    assert "x-death" in rows[0]["headers"]
    assert [r["message_id"] for r in audited] == [poison_id]


def test_quorum_inbox_poison_is_dead_lettered(
    pg_social: SocialLayer, pg_engine: Engine, agents: Callable[..., str], coord_broker_url: str
) -> None:
    """Quorum inboxes (x-delivery-limit, at-least-once dead-lettering) take the same path to dead_letters."""
    receiver = agents("qpoison", queue_type="quorum")
    poison_id = f"poison-{receiver}"
    _publish_raw(coord_broker_url, receiver, b"\xff\xfe", poison_id, {"from_agent_id": "evil"})
    ok = pg_social.send_message(from_agent_id="a", to_agent_id=receiver, message="fine")["message_id"]
    assert [m["message_id"] for m in pg_social.get_messages(agent_id=receiver)] == [ok]
    mailbox = Mailbox(coord_broker_url, pg_engine, list_agent_ids=lambda: [receiver])
    try:
        assert wait_for(
            lambda: (
                mailbox.run_once() is not None
                and any(r["message_id"] == poison_id for r in list_dead_letters(pg_engine, to_agent_id=receiver))
            ),
            timeout_s=10,
        )
    finally:
        mailbox._close_session()


def test_failing_store_hook_dead_letters_after_max_attempts(
    engine: Engine, agents: Callable[..., str], coord_broker_url: str
) -> None:
    """on_stored runs in the store's transaction: when it keeps failing the message is poison."""
    receiver = agents()
    attempts: list[str] = []

    def on_stored(conn: Connection, row: dict[str, object]) -> None:
        if row["message"] == "bad":
            attempts.append(str(row["message_id"]))
            raise RuntimeError("audit write failed")

    layer = SocialLayer(coord_broker_url, engine, on_stored=on_stored, max_attempts=3)
    try:
        layer.send_message(from_agent_id="a", to_agent_id=receiver, message="ok1")
        bad = layer.send_message(from_agent_id="a", to_agent_id=receiver, message="bad")["message_id"]
        layer.send_message(from_agent_id="a", to_agent_id=receiver, message="ok2")
        assert [m["message"] for m in layer.get_messages(agent_id=receiver)] == ["ok1", "ok2"]
        assert attempts == [bad] * 3
    finally:
        layer.close()


def test_crash_inside_a_drain_loses_and_duplicates_nothing(
    pg_engine: Engine, agents: Callable[..., str], coord_broker_url: str
) -> None:
    """A drain dying before its commit: rows roll back, messages are requeued in place, a retry stores all."""
    receiver = agents()
    seen = 0

    def crash_midway(conn: Connection, row: dict[str, object]) -> None:
        nonlocal seen
        seen += 1
        if seen == 30:
            raise SystemExit("killed mid-drain")

    crashing = SocialLayer(coord_broker_url, pg_engine, on_stored=crash_midway)
    healthy = SocialLayer(coord_broker_url, pg_engine)
    try:
        ids = [
            r["message_id"]
            for r in healthy.send_many(
                [{"from_agent_id": "a", "to_agent_id": receiver, "message": i} for i in range(60)]
            )
        ]
        with pytest.raises(SystemExit):
            crashing.get_messages(agent_id=receiver)
        assert count_rows(pg_engine, receiver) == 0
        assert [m["message_id"] for m in healthy.get_messages(agent_id=receiver)] == ids
    finally:
        crashing.close()
        healthy.close()


def test_a_new_agents_message_is_stored_without_listing_it(
    pg_social: SocialLayer, pg_engine: Engine, agents: Callable[..., str], coord_broker_url: str
) -> None:
    """The sender's notice names the inbox: an agent the mailbox never listed is drained at once."""
    mailbox = Mailbox(coord_broker_url, pg_engine, list_agent_ids=list, poll_interval_s=0.02, sweep_interval_s=3600)
    mailbox.start()
    try:
        receiver = agents("late")
        started = time.monotonic()
        message_id = pg_social.send_message(from_agent_id="a", to_agent_id=receiver, message="x")["message_id"]
        assert wait_for(lambda: stored_ids(pg_engine, receiver) == [message_id], timeout_s=5)
        assert time.monotonic() - started < 2.0
    finally:
        mailbox.stop()


def test_passes_after_a_notice_keep_their_session(
    pg_social: SocialLayer, pg_engine: Engine, agents: Callable[..., str], coord_broker_url: str
) -> None:
    """A notice is acked once: quiet passes after it neither re-ack it nor lose the channel (no reconnect)."""
    receiver = agents("acked")
    mailbox = Mailbox(coord_broker_url, pg_engine, list_agent_ids=list, sweep_interval_s=3600)
    try:
        mailbox.run_once()
        session = mailbox._session
        message_id = pg_social.send_message(from_agent_id="a", to_agent_id=receiver, message="x")["message_id"]
        assert wait_for(lambda: mailbox.run_once(wait_s=0.05).stored > 0, timeout_s=5)
        for _ in range(5):
            mailbox.run_once(wait_s=0.05)
        assert mailbox._session is session and not session.broken
        assert stored_ids(pg_engine, receiver) == [message_id]
    finally:
        mailbox._close_session()


def test_idle_inboxes_cost_nothing_but_the_throttled_sweep(
    pg_engine: Engine, agents: Callable[..., str], coord_broker_url: str
) -> None:
    """200 listed, idle inboxes: after the first round, passes ask at most sweep_rate queues a second."""
    idle = [agents("idle") for _ in range(200)]
    mailbox = Mailbox(coord_broker_url, pg_engine, list_agent_ids=lambda: idle, sweep_rate=20, sweep_interval_s=3600)
    try:
        first = mailbox.run_once()  # a new session: one unthrottled round
        assert first.swept == 200 and first.drained == 0
        started, swept, passes = time.monotonic(), 0, 0
        while time.monotonic() - started < 1.0:
            stats = mailbox.run_once(wait_s=0.05)
            swept, passes = swept + stats.swept, passes + 1
            assert stats.drained == 0
        assert passes >= 5
        assert swept == 0  # the next round is an hour away
    finally:
        mailbox._close_session()


def test_sweep_stores_a_message_whose_notice_never_came(
    pg_engine: Engine, agents: Callable[..., str], coord_broker_url: str
) -> None:
    """A foreign publisher sends no notice: the throttled sweep finds the queue and stores the message."""
    receivers = [agents("quiet") for _ in range(30)]
    mailbox = Mailbox(coord_broker_url, pg_engine, list_agent_ids=lambda: receivers, sweep_rate=100,
                      sweep_interval_s=0.1)
    try:
        mailbox.run_once()  # the first (unthrottled) round finds nothing
        raw_id = f"raw-{receivers[-1]}"
        _publish_raw(coord_broker_url, receivers[-1], json.dumps("hi").encode(), raw_id, {"from_agent_id": "x"})
        assert wait_for(lambda: mailbox.run_once(wait_s=0.02).stored > 0 or bool(stored_ids(pg_engine, receivers[-1])))
        assert stored_ids(pg_engine, receivers[-1]) == [raw_id]
    finally:
        mailbox._close_session()


def test_management_lister_finds_inboxes(agents: Callable[..., str], coord_broker_url: str) -> None:
    a, b = agents(), agents()
    listed = management_agent_lister(coord_broker_url, "http://guest:guest@127.0.0.1:15672")()
    assert {a, b} <= set(listed)


def test_delivery_error_is_a_clear_exception_hierarchy() -> None:
    from coordination import errors

    for cls in (errors.Unroutable, errors.NotConfirmed, errors.Nacked, errors.BrokerUnavailable):
        assert issubclass(cls, DeliveryError)
    assert json.dumps({"ok": True})
