"""One XREAD BLOCK per process over every followed execution stream, handed out to per-follower queues.

A follower blocking in its own XREAD cost a Redis connection and a round trip per delta per stream (1,000 live
SSE streams were 1,000 blocked connections; docs/performance.md). Here one reader thread (a greenlet under
gunicorn's gevent worker, whose monkey-patching makes threading and queue cooperative) reads every stream that
has a follower, each from its own last id, and puts each batch on the queue of every follower of that stream.

A follower that joins while the reader is blocked is picked up at once: it XADDs to the reader's private wake-up
stream, which is part of every XREAD (see docs/decisions.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import redis

from app.services.process_local import per_process
from app.services.streams import Event, client, decode_entry, stream_key

log = logging.getLogger(__name__)

BLOCK_MS = 5_000  # an idle reader wakes this often; new followers wake it themselves
COUNT_PER_STREAM = 100  # bounds one reply (1,000 streams x 100 entries); a longer backlog takes more rounds
# Building, sending and serving an XREAD costs in proportion to the streams in it: under load, wait this long
# per followed stream between reads (5 ms at 1,000 streams), so each read carries more events.
PAUSE_PER_STREAM_S = 0.000_005
MAX_PAUSE_S = 0.02
WAKE_TTL_S = 3_600  # a wake-up stream outlives no process by more than this
RETRY_BASE_S = 0.05  # then doubling, up to RETRY_CAP_S: a restarted Redis (~1 s) is back before followers notice
RETRY_CAP_S = 0.5
GIVE_UP_S = 2.75  # unreachable this long: followers end with the error (as long as the shared client retries)

Batch = list[Event] | BaseException  # what a follower's queue holds: events in id order, or why the reader failed


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class Subscription:
    """One follower of one stream: the reader puts batches on its queue until it closes."""

    def __init__(self, fanout: StreamFanout, execution_id: str, catch_up_to: int) -> None:
        self.execution_id = execution_id
        # The reader had already handed out events up to this id when we joined: read them with XRANGE.
        self.catch_up_to = catch_up_to
        self._fanout = fanout
        self._queue: queue.Queue[Batch] = queue.Queue()

    def put(self, batch: Batch) -> None:
        self._queue.put(batch)

    def wait(self, timeout_s: float) -> list[Event]:
        """Events the reader handed out since the last call, waiting up to timeout_s; [] on timeout."""
        try:
            item: Batch | None = self._queue.get(timeout=max(0.001, timeout_s))
        except queue.Empty:
            return []
        events: list[Event] = []
        while item is not None:
            if isinstance(item, BaseException):
                raise item
            events.extend(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None
        return events

    def close(self) -> None:
        self._fanout.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


@dataclass(eq=False)
class _Followed:
    """A stream in the read set: the last id the reader handed out, who gets the next ones, its XREAD bytes."""

    execution_id: str
    key: bytes
    position: int
    followers: set[Subscription] = field(default_factory=set)
    packed_key: bytes = b""
    packed_id: bytes = b""

    def __post_init__(self) -> None:
        self.packed_key = _bulk(self.key)
        self.move_to(self.position)

    def move_to(self, position: int) -> None:
        self.position = position
        self.packed_id = _bulk(b"%d-0" % position)


class StreamFanout:
    """The reader of one process and Redis: register followers, read all their streams with one XREAD."""

    def __init__(self, url: str, *, block_ms: int = BLOCK_MS, count_per_stream: int = COUNT_PER_STREAM) -> None:
        self.block_ms = block_ms
        self.count_per_stream = count_per_stream
        self.wake_key = f"sse:wake:{uuid.uuid4().hex}"
        self._wake_client = client(url)
        # A connection of its own, without redis-py's retries: the loop below retries, and knows when to give up.
        # RESP2 so that a reply is plain nested lists; the command is packed here (see _command).
        self._pool = redis.ConnectionPool.from_url(
            url, protocol=2, socket_connect_timeout=2.0, socket_timeout=block_ms / 1000 + 10,
            socket_keepalive=True, max_connections=1)
        self._connection: Any = None
        self._wake_position = b"0-0"
        self._lock = threading.Lock()
        self._streams: dict[bytes, _Followed] = {}
        self._reader: threading.Thread | None = None
        self._wake_pending = False  # a wake-up was sent since the reader last took its snapshot

    def subscribe(self, execution_id: str, after: int) -> Subscription:
        """Follow the stream from `after` on; the caller must close() the subscription (use it with `with`)."""
        key = stream_key(execution_id).encode()
        with self._lock:
            followed = self._streams.get(key)
            if followed is None:
                followed = self._streams[key] = _Followed(execution_id, key, after)
            subscription = Subscription(self, execution_id, followed.position if followed.position > after else 0)
            followed.followers.add(subscription)
            start = self._reader is None
            if start:
                self._reader = threading.Thread(target=self._run, name="sse-fanout", daemon=True)
            wake = not start and not self._wake_pending
            self._wake_pending = self._wake_pending or wake
        if start:
            assert self._reader is not None
            self._reader.start()
        elif wake:
            self._wake()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop handing events to this follower; a stream nobody follows leaves the next XREAD."""
        key = stream_key(subscription.execution_id).encode()
        with self._lock:
            followed = self._streams.get(key)
            if followed is None:
                return
            followed.followers.discard(subscription)
            if not followed.followers:
                del self._streams[key]

    def followed(self) -> dict[str, int]:
        """Execution id -> the last id handed out, of every stream in the read set (tests, metrics)."""
        with self._lock:
            return {followed.execution_id: followed.position for followed in self._streams.values()}

    def _wake(self) -> None:
        """Interrupt the reader's XREAD so that its next one includes the stream just added."""
        try:
            pipe = self._wake_client.pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.expire(self.wake_key, WAKE_TTL_S)
            pipe.execute()
        except redis.RedisError:
            # The reader is failing too and retries with every followed stream; nothing waits on this wake-up.
            log.warning("could not wake the SSE fan-out reader", exc_info=True)

    def _run(self) -> None:
        """Read until no stream is followed; retry failures with backoff, and end the followers if it lasts."""
        failures = 0
        down_since = 0.0
        while True:
            with self._lock:
                if not self._streams:
                    self._reader = None
                    self._disconnect()
                    return
                self._wake_pending = False
                snapshot = dict(self._streams)
            started = time.monotonic()
            try:
                answer = self._read(snapshot)
            except Exception as exc:  # noqa: BLE001 - the reader must outlive any error; followers decide
                self._disconnect()
                failures += 1
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since >= GIVE_UP_S or not isinstance(exc, (redis.RedisError, OSError)):
                    self._fail_followers(snapshot, exc)
                log.warning("SSE fan-out read failed (%d in a row): %r", failures, exc)
                time.sleep(min(RETRY_CAP_S, RETRY_BASE_S * 2 ** min(failures - 1, 10)))
                continue
            failures, down_since = 0, 0.0
            self._dispatch(snapshot, answer)
            pause = min(MAX_PAUSE_S, len(snapshot) * PAUSE_PER_STREAM_S) - (time.monotonic() - started)
            if pause > 0:
                time.sleep(pause)

    def _command(self, snapshot: dict[bytes, _Followed]) -> bytes:
        """XREAD COUNT n BLOCK ms STREAMS wake key... wake-id id..., packed from each stream's cached bytes."""
        header = [b"XREAD", b"COUNT", b"%d" % self.count_per_stream, b"BLOCK", b"%d" % self.block_ms, b"STREAMS"]
        return b"".join([
            b"*%d\r\n" % (len(header) + 2 + 2 * len(snapshot)), *map(_bulk, header), _bulk(self.wake_key.encode()),
            *[followed.packed_key for followed in snapshot.values()], _bulk(self._wake_position),
            *[followed.packed_id for followed in snapshot.values()],
        ])

    def _read(self, snapshot: dict[bytes, _Followed]) -> list[Any]:
        """One XREAD over the wake-up stream and every followed stream from its last id; [] on timeout."""
        if self._connection is None:
            self._connection = self._pool.get_connection()
        self._connection.send_packed_command([self._command(snapshot)], check_health=False)
        answer: Any = self._connection.read_response()
        if isinstance(answer, redis.ResponseError):
            raise answer
        return answer or []

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()

    def _dispatch(self, snapshot: dict[bytes, _Followed], answer: list[Any]) -> None:
        """Put each stream's new events on its followers' queues, if the stream is still the one we read."""
        decoded: list[tuple[bytes, list[Event]]] = []
        wake_key = self.wake_key.encode()
        for key, entries in answer:
            if key == wake_key:
                self._wake_position = entries[-1][0]
            elif entries:
                decoded.append((key, [decode_entry(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))
                                      for entry_id, fields in entries]))
        with self._lock:
            for key, events in decoded:
                followed = self._streams.get(key)
                # Dropped, or dropped and followed again from another id while we read: its position rules.
                if followed is None or followed is not snapshot.get(key):
                    continue
                followed.move_to(events[-1].id)
                for subscription in followed.followers:
                    subscription.put(events)

    def _fail_followers(self, snapshot: dict[bytes, _Followed], error: BaseException) -> None:
        """Redis stayed unreachable: each follower ends with the error, as it did when it read alone."""
        with self._lock:
            for followed in snapshot.values():
                for subscription in followed.followers:
                    subscription.put(error)


def fanout(url: str) -> StreamFanout:
    """This process's reader for the Redis at `url`, made on first use (so a forked child makes its own)."""
    return per_process("stream_fanout", (url,), lambda: StreamFanout(url))
