"""The per-process SSE fan-out reader on a real Redis: every follower gets every event of its stream, in order,
once; through a killed connection, a Redis outage, plain threads and gevent greenlets."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.services.stream_fanout import CLIENT_NAME, StreamFanout, Subscription, fanout
from app.services.streams import EventLog, stream_key
from tests.chaos.checks import wait_for
from tests.support.redis_node import private_redis

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(redis_url)
    yield found
    found.close()


@pytest.fixture
def events(redis_client: redis.Redis) -> EventLog:
    return EventLog(redis_client, max_events=10_000, retention_s=600)


@pytest.fixture
def readers(redis_url: str) -> StreamFanout:
    """A reader of its own (not the process-wide one), so a test sees only its own streams."""
    return StreamFanout(redis_url, block_ms=5_000)


def new_execution() -> str:
    return uuid.uuid4().hex


def emit_deltas(events: EventLog, execution_id: str, count: int, *, start: int = 0) -> None:
    for seq in range(start, start + count):
        events.emit(execution_id, "delta", {"text": f"w{seq} ", "seq": seq})


def received(subscription: Subscription, until_id: int, timeout_s: float = 10.0) -> list[int]:
    """Ids handed to the subscription until `until_id` arrived (or the deadline)."""
    ids: list[int] = []
    deadline = time.monotonic() + timeout_s
    while (not ids or ids[-1] < until_id) and time.monotonic() < deadline:
        ids.extend(event.id for event in subscription.wait(0.2))
    return ids


def test_many_followers_on_many_streams_get_every_event_in_order(readers: StreamFanout, events: EventLog) -> None:
    streams = [new_execution() for _ in range(100)]
    for execution_id in streams:
        events.emit(execution_id, "status", {"status": "running"})
    subscriptions = {execution_id: readers.subscribe(execution_id, 1) for execution_id in streams}
    try:
        for seq in range(20):  # interleaved, as live executions are
            for execution_id in streams:
                emit_deltas(events, execution_id, 1, start=seq)
        for execution_id in streams:
            events.emit(execution_id, "completed", {"status": "completed"})
        for execution_id, subscription in subscriptions.items():
            assert received(subscription, 22) == list(range(2, 23)), execution_id
    finally:
        for subscription in subscriptions.values():
            subscription.close()


def test_two_followers_of_one_stream_both_get_everything(readers: StreamFanout, events: EventLog) -> None:
    execution_id = new_execution()
    with readers.subscribe(execution_id, 0) as first, readers.subscribe(execution_id, 0) as second:
        emit_deltas(events, execution_id, 30)
        assert received(first, 30) == list(range(1, 31))
        assert received(second, 30) == list(range(1, 31))


def test_a_follower_joining_mid_stream_gets_only_what_follows_its_id(readers: StreamFanout, events: EventLog) -> None:
    execution_id = new_execution()
    emit_deltas(events, execution_id, 5)
    with readers.subscribe(execution_id, 3) as late:
        assert late.catch_up_to == 0
        emit_deltas(events, execution_id, 2, start=5)
        assert received(late, 7) == [4, 5, 6, 7]


def test_a_follower_behind_the_reader_is_told_to_catch_up(readers: StreamFanout, events: EventLog) -> None:
    """The reader already handed out 1..6 to another follower: the newcomer at 2 must XRANGE 3..6 itself."""
    execution_id = new_execution()
    with readers.subscribe(execution_id, 0) as ahead:
        emit_deltas(events, execution_id, 6)
        assert received(ahead, 6) == list(range(1, 7))
        with readers.subscribe(execution_id, 2) as behind:
            assert behind.catch_up_to == 6
            assert [event.id for event in events.read_after(execution_id, 2)] == [3, 4, 5, 6]
            emit_deltas(events, execution_id, 1, start=6)
            assert received(behind, 7) == [7]
            assert received(ahead, 7) == [7]


def test_a_new_follower_is_read_without_waiting_for_the_block_timeout(readers: StreamFanout, events: EventLog) -> None:
    with readers.subscribe(new_execution(), 0):
        time.sleep(0.3)  # the reader is now blocked (5 s) on the first stream only
        execution_id = new_execution()
        with readers.subscribe(execution_id, 0) as joined:
            started = time.monotonic()
            emit_deltas(events, execution_id, 1)
            assert received(joined, 1, timeout_s=4.0) == [1]
            assert time.monotonic() - started < 1.0


def test_unsubscribing_removes_the_stream_and_an_idle_reader_ends(redis_url: str, events: EventLog) -> None:
    readers = StreamFanout(redis_url, block_ms=300)
    kept, dropped = new_execution(), new_execution()
    with readers.subscribe(kept, 0) as staying:
        with readers.subscribe(dropped, 0), readers.subscribe(dropped, 0):
            assert set(readers.followed()) == {kept, dropped}
        assert set(readers.followed()) == {kept}
        emit_deltas(events, dropped, 3)  # nobody hears it, nothing breaks
        emit_deltas(events, kept, 2)
        assert received(staying, 2) == [1, 2]
        reader = readers._reader
        assert reader is not None and reader.is_alive()
    assert readers.followed() == {}
    reader.join(timeout=5)  # leaves at the end of its current block
    assert not reader.is_alive()
    with readers.subscribe(kept, 2) as again:  # and a new reader starts on demand
        emit_deltas(events, kept, 1, start=2)
        assert received(again, 3) == [3]


def test_the_reader_survives_a_killed_connection(readers: StreamFanout, events: EventLog,
                                                 redis_client: redis.Redis) -> None:
    execution_id = new_execution()
    database = redis_client.connection_pool.connection_kwargs.get("db", 0)
    with readers.subscribe(execution_id, 0) as subscription:
        emit_deltas(events, execution_id, 5)
        ids = received(subscription, 5)
        blocked = wait_for(lambda: [c for c in redis_client.client_list()
                                    if c["cmd"] == "xread" and int(c["db"]) == database], what="the reader's XREAD")
        for connection in blocked:
            redis_client.client_kill_filter(_id=connection["id"])
        emit_deltas(events, execution_id, 5, start=5)
        ids += received(subscription, 10)
        assert ids == list(range(1, 11))


def _reader_connections(redis_client: redis.Redis, *, subscribed: bool) -> list[dict[str, Any]]:
    database = int(redis_client.connection_pool.connection_kwargs.get("db", 0))
    return [c for c in redis_client.client_list() if c.get("name") == CLIENT_NAME and int(c["db"]) == database
            and (int(c["sub"]) > 0) == subscribed]


def test_followers_joining_mid_stream_get_everything_after_their_point_once(
        readers: StreamFanout, events: EventLog) -> None:
    """While a writer appends, followers join at the id they last read (as the SSE feed does): each one's queue
    holds every later event (from its catch-up point, the rest it reads with XRANGE), once and in order."""
    execution_id, total = new_execution(), 300
    with readers.subscribe(execution_id, 0) as first:
        writer = threading.Thread(target=lambda: [(emit_deltas(events, execution_id, 1, start=n), time.sleep(0.002))
                                                  for n in range(total)])
        writer.start()
        joined = []
        try:
            for _ in range(8):
                time.sleep(0.05)
                backlog = events.read_after(execution_id, 0)
                after = backlog[-1].id if backlog else 0
                joined.append((after, readers.subscribe(execution_id, after)))
        finally:
            writer.join()
        try:
            assert received(first, total) == list(range(1, total + 1))
            for after, subscription in joined:
                # The queue: contiguous ids, each once, from at most just after the catch-up point (it may start
                # earlier: the feed skips ids it already sent); the gap up to catch_up_to is the follower's XRANGE.
                queued = received(subscription, total)
                start = max(after, subscription.catch_up_to)
                assert queued == list(range(queued[0], total + 1)) and queued[0] <= start + 1, (after, start)
                gap = [event.id for event in events.read_after(execution_id, after)][:start - after]
                assert gap + [i for i in queued if i > start] == list(range(after + 1, total + 1))
                assert subscription.wait(0.2) == []
        finally:
            for _after, subscription in joined:
                subscription.close()


def test_a_read_names_only_the_streams_with_news(redis_url: str, events: EventLog) -> None:
    readers = StreamFanout(redis_url, full_read_s=60)
    quiet = [new_execution() for _ in range(50)]
    busy = new_execution()
    subscriptions = [readers.subscribe(execution_id, 0) for execution_id in [*quiet, busy]]
    try:
        time.sleep(0.5)  # the first (full) read and the reads on each SUBSCRIBE's confirmation are over
        reads, streams_read = readers.reads, readers.streams_read
        for seq in range(10):
            emit_deltas(events, busy, 1, start=seq)
            assert received(subscriptions[-1], seq + 1) == [seq + 1]
        assert readers.reads - reads >= 1
        assert readers.streams_read - streams_read == readers.reads - reads  # one stream per read: the busy one
        assert all(subscription.wait(0.01) == [] for subscription in subscriptions[:-1])
    finally:
        for subscription in subscriptions:
            subscription.close()


def test_an_append_whose_notification_was_lost_arrives_with_the_full_read(
        redis_url: str, events: EventLog, redis_client: redis.Redis) -> None:
    readers = StreamFanout(redis_url, full_read_s=0.5)
    execution_id = new_execution()
    with readers.subscribe(execution_id, 0) as subscription:
        emit_deltas(events, execution_id, 1)
        assert received(subscription, 1) == [1]
        redis_client.xadd(stream_key(execution_id), {"event": "delta", "data": "{}"}, id="2-0")  # no PUBLISH
        started = time.monotonic()
        assert received(subscription, 2, timeout_s=3) == [2]
        assert time.monotonic() - started < 1.5


def test_a_killed_pubsub_connection_loses_nothing(readers: StreamFanout, events: EventLog,
                                                  redis_client: redis.Redis) -> None:
    streams = [new_execution() for _ in range(20)]
    subscriptions = {execution_id: readers.subscribe(execution_id, 0) for execution_id in streams}
    try:
        ids = {execution_id: [] for execution_id in streams}
        for round_ in range(4):
            for execution_id in streams:
                emit_deltas(events, execution_id, 5, start=5 * round_)
            listening = wait_for(lambda: _reader_connections(redis_client, subscribed=True),
                                 what="the reader's pub/sub connection")
            for connection in listening:
                redis_client.client_kill_filter(_id=connection["id"])
            for execution_id in streams:  # appended while the reader reconnects: nobody may be listening
                emit_deltas(events, execution_id, 1, start=100 + round_)
        for execution_id, subscription in subscriptions.items():
            ids[execution_id] = received(subscription, 24)
        assert all(got == list(range(1, 25)) for got in ids.values()), ids
    finally:
        for subscription in subscriptions.values():
            subscription.close()


def test_followers_end_with_the_error_when_redis_stays_down() -> None:
    with private_redis(persistent=False) as node:
        readers = StreamFanout(node.url, block_ms=1_000)
        with readers.subscribe(new_execution(), 0) as subscription:
            time.sleep(0.2)
            node.kill()
            with pytest.raises(redis.ConnectionError):
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    subscription.wait(0.5)
        node.start()
        execution_id = new_execution()
        with redis.Redis.from_url(node.url) as writer, readers.subscribe(execution_id, 0) as after_restart:
            emit_deltas(EventLog(writer, max_events=100, retention_s=60), execution_id, 2)
            assert received(after_restart, 2) == [1, 2]


def test_one_reader_per_process_and_url(redis_url: str) -> None:
    assert fanout(redis_url) is fanout(redis_url)
    assert fanout(redis_url) is not fanout(redis_url + "?x=1")


GEVENT_FOLLOWERS = """
from gevent import monkey

monkey.patch_all()

import json
import sys

import gevent
import redis

from app.services.stream_fanout import StreamFanout
from app.services.streams import EventLog

url, streams, deltas = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
events = EventLog(redis.Redis.from_url(url), max_events=1000, retention_s=600)
readers = StreamFanout(url)
prefix = sys.argv[4]
got = {}


def follow(execution_id):
    ids = []
    with readers.subscribe(execution_id, 0) as subscription:
        while not ids or ids[-1] < deltas:
            batch = subscription.wait(10)
            if not batch:
                break
            ids.extend(event.id for event in batch)
    got[execution_id] = ids


followers = [gevent.spawn(follow, f"{prefix}-{n}") for n in range(streams)]
gevent.sleep(0.2)
for seq in range(deltas):
    for n in range(streams):
        events.emit(f"{prefix}-{n}", "delta", {"seq": seq})
gevent.joinall(followers, timeout=30)
print(json.dumps({"got": got, "patched": monkey.is_module_patched("threading")}))
"""


def test_followers_under_gevent_monkey_patching(redis_url: str) -> None:
    """The gunicorn gevent worker's setting: the reader and every follower are greenlets of one thread."""
    streams, deltas = 200, 10
    answer = subprocess.run([sys.executable, "-c", GEVENT_FOLLOWERS, redis_url, str(streams), str(deltas),
                             new_execution()], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(answer.stdout.strip().splitlines()[-1])
    assert len(result["got"]) == streams
    assert all(ids == list(range(1, deltas + 1)) for ids in result["got"].values())
    assert result["patched"]
