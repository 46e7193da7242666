"""One reader per process over every followed execution stream, handed out to per-follower queues.

A follower blocking in its own XREAD cost a Redis connection and a round trip per delta per stream (1,000 live
SSE streams were 1,000 blocked connections; docs/performance.md). Here one reader thread (a greenlet under
gunicorn's gevent worker, whose monkey-patching makes threading and queue cooperative) reads every stream that
has a follower, each from its own last id, and puts each batch on the queue of every follower of that stream.

An XREAD costs Redis in proportion to the streams it names, so the reader names only those with news: every
append is also PUBLISHed on the channel named like the stream key (streams.py's emit script), and the reader
holds one pub/sub connection subscribed to the key of every followed stream and to a private wake channel. It
blocks on that connection, then (COALESCE_S later) takes every notification there, and XREADs (no BLOCK) just
the notified streams; a stream is also read once when its SUBSCRIBE is confirmed (from then on no append goes
unheard, and that read catches what came before), and every stream every FULL_READ_S (pub/sub is at most once).
A follower that adds a stream PUBLISHes to the wake channel, so the reader subscribes to it at once (see
docs/decisions.md, "SSE followers share one reader per process").
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

BLOCK_MS = 5_000  # the longest wait for news; an idle reader then notices whether anybody is left
COUNT_PER_STREAM = 100  # bounds one reply; a stream cut at this many is read again at once
# Once woken, wait this long before taking the messages, so that one XREAD carries more events (at 1,000 streams
# x 2 deltas/s: half the reads, about 10% less web CPU per delta, for ~5 ms more lag; docs/performance.md).
COALESCE_S = 0.005
FULL_READ_S = 1.0  # every followed stream is read this often, notified or not: pub/sub is at most once
RETRY_BASE_S = 0.05  # then doubling, up to RETRY_CAP_S: a restarted Redis (~1 s) is back before followers notice
RETRY_CAP_S = 0.5
CLIENT_NAME = "sse-fanout"  # both connections of the reader, as CLIENT LIST shows them
GIVE_UP_S = 2.75  # unreachable this long: followers end with the error (as long as the shared client retries)

Batch = list[Event] | BaseException  # what a follower's queue holds: events in id order, or why the reader failed


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _pack(*parts: bytes) -> bytes:
    return b"*%d\r\n%s" % (len(parts), b"".join(map(_bulk, parts)))


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
    """The reader of one process and Redis: register followers, read the streams with news with one XREAD."""

    def __init__(self, url: str, *, block_ms: int = BLOCK_MS, count_per_stream: int = COUNT_PER_STREAM,
                 full_read_s: float = FULL_READ_S, coalesce_s: float = COALESCE_S) -> None:
        self.block_ms = block_ms
        self.coalesce_s = coalesce_s
        self.count_per_stream = count_per_stream
        self.full_read_s = full_read_s
        self.wake_channel = f"sse:wake:{uuid.uuid4().hex}".encode()
        self._wake_client = client(url)
        # Connections of its own, without redis-py's retries: the loop below retries, and knows when to give up.
        # RESP2 so that a reply (and a pub/sub message) is plain nested lists; commands are packed here. One
        # connection for XREAD, one in subscribed mode; only the reader uses them.
        self._pool = redis.ConnectionPool.from_url(
            url, protocol=2, socket_connect_timeout=2.0, socket_timeout=10.0, socket_keepalive=True,
            max_connections=2, client_name=CLIENT_NAME)
        self._connection: Any = None
        self._pubsub: Any = None
        self._subscribed: set[bytes] | None = None  # channels the pub/sub connection is subscribed to; None: anew
        self._lock = threading.Lock()
        self._streams: dict[bytes, _Followed] = {}
        self._changed: set[bytes] = set()  # keys followed or dropped since the reader last looked (under the lock)
        self._fresh: set[bytes] = set()  # keys that got a new _Followed: read them once (under the lock)
        self._reader: threading.Thread | None = None
        self._wake_pending = False  # a wake-up was sent since the reader last took the changes
        self.reads = 0  # XREADs sent, and the streams they named in all (tests, metrics)
        self.streams_read = 0

    def subscribe(self, execution_id: str, after: int) -> Subscription:
        """Follow the stream from `after` on; the caller must close() the subscription (use it with `with`)."""
        key = stream_key(execution_id).encode()
        wake = False
        with self._lock:
            followed = self._streams.get(key)
            if followed is None:
                followed = self._streams[key] = _Followed(execution_id, key, after)
                self._changed.add(key)
                self._fresh.add(key)
                wake = not self._wake_pending
                self._wake_pending = True
            subscription = Subscription(self, execution_id, followed.position if followed.position > after else 0)
            followed.followers.add(subscription)
            start = self._reader is None
            if start:
                self._reader = threading.Thread(target=self._run, name="sse-fanout", daemon=True)
        if start:
            assert self._reader is not None
            self._reader.start()
        elif wake:
            self._wake()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop handing events to this follower; a stream nobody follows is unsubscribed by the reader's next turn."""
        key = stream_key(subscription.execution_id).encode()
        with self._lock:
            followed = self._streams.get(key)
            if followed is None:
                return
            followed.followers.discard(subscription)
            if not followed.followers:
                del self._streams[key]
                self._changed.add(key)
                self._fresh.discard(key)

    def followed(self) -> dict[str, int]:
        """Execution id -> the last id handed out, of every stream in the read set (tests, metrics)."""
        with self._lock:
            return {followed.execution_id: followed.position for followed in self._streams.values()}

    def _wake(self) -> None:
        """Interrupt the reader's wait so that it subscribes to (and reads) the stream just added."""
        try:
            self._wake_client.publish(self.wake_channel, b"1")
        except redis.RedisError:
            # The reader is failing too, and subscribes to and reads every followed stream when back.
            log.warning("could not wake the SSE fan-out reader", exc_info=True)

    def _run(self) -> None:
        """Read until no stream is followed; retry failures with backoff, and end the followers if it lasts."""
        failures = 0
        down_since = 0.0
        next_full = 0.0  # a full read at once: on start, and after every failure
        again: set[bytes] = set()  # streams whose last read was cut at count_per_stream
        while True:
            with self._lock:
                if not self._streams:
                    self._reader = None
                    self._disconnect()
                    return
                self._wake_pending = False
                keys = set(self._streams) if self._subscribed is None else self._changed
                changed = {key: key in self._streams for key in keys}
                self._changed = set()
                fresh, self._fresh = self._fresh, set()
            try:
                self._resubscribe(changed)
                now = time.monotonic()
                full = now >= next_full
                wait = 0.0 if full or fresh or again else min(self.block_ms / 1000, next_full - now)
                wanted = self._notified(wait) | fresh | again
                with self._lock:
                    if full:
                        next_full = time.monotonic() + self.full_read_s
                        snapshot = dict(self._streams)
                    else:
                        snapshot = {key: self._streams[key] for key in wanted if key in self._streams}
                answer = self._read(snapshot) if snapshot else []
            except Exception as exc:  # noqa: BLE001 - the reader must outlive any error; followers decide
                self._disconnect()
                next_full, again = 0.0, set()
                failures += 1
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since >= GIVE_UP_S or not isinstance(exc, (redis.RedisError, OSError)):
                    self._fail_followers(exc)
                log.warning("SSE fan-out read failed (%d in a row): %r", failures, exc)
                time.sleep(min(RETRY_CAP_S, RETRY_BASE_S * 2 ** min(failures - 1, 10)))
                continue
            failures, down_since = 0, 0.0
            again = self._dispatch(snapshot, answer)

    def _resubscribe(self, changed: dict[bytes, bool]) -> None:
        """SUBSCRIBE the pub/sub connection to the keys now followed, UNSUBSCRIBE it from those dropped."""
        if self._pubsub is None:
            self._pubsub = self._pool.get_connection()
        if self._subscribed is None:
            self._pubsub.send_packed_command([_pack(b"SUBSCRIBE", self.wake_channel)], check_health=False)
            self._subscribed = set()
        added = [key for key, followed in changed.items() if followed and key not in self._subscribed]
        dropped = [key for key, followed in changed.items() if not followed and key in self._subscribed]
        commands = []
        if added:
            commands.append(_pack(b"SUBSCRIBE", *added))
            self._subscribed.update(added)
        if dropped:
            commands.append(_pack(b"UNSUBSCRIBE", *dropped))
            self._subscribed.difference_update(dropped)
        if commands:
            self._pubsub.send_packed_command([b"".join(commands)], check_health=False)

    def _notified(self, wait_s: float) -> set[bytes]:
        """Wait up to wait_s for a message, then take every one already there: the keys they name.

        A stream's notification names it, and so does the confirmation of its SUBSCRIBE: from then on no append
        goes unheard, and the read it causes catches whatever was appended before.
        """
        keys: set[bytes] = set()
        connection = self._pubsub
        if not connection.can_read(timeout=wait_s):
            return keys
        if self.coalesce_s:
            time.sleep(self.coalesce_s)
        while True:
            message = connection.read_response()
            if isinstance(message, redis.ResponseError):
                raise message
            if message[0] in (b"message", b"subscribe"):
                keys.add(message[1])
            if not connection.can_read(timeout=0):
                break
        keys.discard(self.wake_channel)
        return keys

    def _command(self, snapshot: dict[bytes, _Followed]) -> bytes:
        """XREAD COUNT n STREAMS key... id..., packed from each stream's cached bytes."""
        header = [b"XREAD", b"COUNT", b"%d" % self.count_per_stream, b"STREAMS"]
        return b"".join([
            b"*%d\r\n" % (len(header) + 2 * len(snapshot)), *map(_bulk, header),
            *[followed.packed_key for followed in snapshot.values()],
            *[followed.packed_id for followed in snapshot.values()],
        ])

    def _read(self, snapshot: dict[bytes, _Followed]) -> list[Any]:
        """One XREAD over the given streams, each from its last id; [] when none has anything new."""
        if self._connection is None:
            self._connection = self._pool.get_connection()
        self.reads += 1
        self.streams_read += len(snapshot)
        self._connection.send_packed_command([self._command(snapshot)], check_health=False)
        answer: Any = self._connection.read_response()
        if isinstance(answer, redis.ResponseError):
            raise answer
        return answer or []

    def _disconnect(self) -> None:
        """Drop both connections; the next turn reconnects, subscribes to every followed stream and reads all."""
        for connection in (self._connection, self._pubsub):
            if connection is not None:
                connection.disconnect()
        self._subscribed = None

    def _dispatch(self, snapshot: dict[bytes, _Followed], answer: list[Any]) -> set[bytes]:
        """Put each stream's new events on its followers' queues, if the stream is still the one we read.

        Returns the streams cut at count_per_stream: they have more, read them again without waiting.
        """
        decoded: list[tuple[bytes, list[Event]]] = []
        again: set[bytes] = set()
        for key, entries in answer:
            if entries:
                decoded.append((key, [decode_entry(entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))
                                      for entry_id, fields in entries]))
                if len(entries) >= self.count_per_stream:
                    again.add(key)
        with self._lock:
            for key, events in decoded:
                followed = self._streams.get(key)
                # Dropped, or dropped and followed again from another id while we read: its position rules.
                if followed is None or followed is not snapshot.get(key):
                    continue
                followed.move_to(events[-1].id)
                for subscription in followed.followers:
                    subscription.put(events)
        return again

    def _fail_followers(self, error: BaseException) -> None:
        """Redis stayed unreachable: each follower ends with the error, as it did when it read alone."""
        with self._lock:
            for followed in self._streams.values():
                for subscription in followed.followers:
                    subscription.put(error)


def fanout(url: str) -> StreamFanout:
    """This process's reader for the Redis at `url`, made on first use (so a forked child makes its own)."""
    return per_process("stream_fanout", (url,), lambda: StreamFanout(url))
