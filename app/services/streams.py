"""Per-execution event log in a Redis Stream: integer ids 1, 2, 3 ..., one terminal event, replay by id."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.services.process_local import per_process

TERMINAL_EVENTS = frozenset({"completed", "failed", "cancelled", "timed_out", "denied"})
EVENT_TYPES = frozenset({"status", "delta", "reset", "tool_call", "tool_result"}) | TERMINAL_EVENTS

# Appends atomically: refuses anything after the terminal event (so a redelivered step cannot emit a second
# one) and anything from an LLM run that lost its lease (a zombie of a killed worker); numbers events 1, 2, 3.
# Also reports the cancel flag, so the LLM step learns of a cancel with each chunk at no extra round trip,
# and drops the LLM run's lease with the terminal event (the execution is over).
# An accepted event of a run also extends its lease (ARGV[8] ms, '' for none): a streaming run needs no separate
# refresh round trip (issue 12: at 2 deltas/s per stream the refresh was one Redis call in five).
# KEYS: stream, seq counter, terminal marker, the lease naming the current run, cancel flag, last emit.
# ARGV: event, data, terminal?, run, maxlen, ttl, emit token, lease ms. Expiry is set on the first and the terminal
# event.
# Idempotent per emit token: when Redis dies after running the script but before its reply arrives, the
# client's retry (same token) gets the id already appended instead of appending the event a second time
# (a repeated delta found by tests/chaos/test_redis_restart.py).
# Each append is also PUBLISHed (its id) on the channel named like the stream key: the SSE fan-out reader
# subscribes to the streams it follows and reads only those it heard of (stream_fanout.py); ~1 us unheard.
_EMIT_LUA = """
local cancel = redis.call('EXISTS', KEYS[5])
local last = redis.call('GET', KEYS[6])
if last then
  local sep = string.find(last, ':', 1, true)
  if string.sub(last, 1, sep - 1) == ARGV[7] then return {tonumber(string.sub(last, sep + 1)), cancel} end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {-1, cancel} end
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then return {-2, cancel} end
local n = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], n .. '-0', 'event', ARGV[1], 'data', ARGV[2])
redis.call('PUBLISH', KEYS[1], n)
redis.call('SET', KEYS[6], ARGV[7] .. ':' .. n, 'EX', ARGV[6])
if ARGV[3] == '1' then
  redis.call('SET', KEYS[3], n)
  redis.call('DEL', KEYS[4])
elseif ARGV[4] ~= '' and ARGV[8] ~= '' then
  redis.call('PEXPIRE', KEYS[4], ARGV[8])
end
if n == 1 or ARGV[3] == '1' then
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
end
return {n, cancel}
"""

# Extends the LLM run's lease only while this run still holds it.
_REFRESH_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""

# Takes back a lease that lapsed while its run stalled (queued for a database connection or the audit lock, a
# starved thread: 1,000 LLM runs per process make that likely), but only if no run holds it now and no event was
# appended since this run's last one, so a run that another run replaced never resumes (issue 12).
# Also reports the cancel flag (the run's periodic check is then one round trip).
# KEYS: the lease, seq counter, terminal marker, cancel flag. ARGV: run, lease_ms, the seq this run last saw.
_RECLAIM_LUA = """
local cancel = redis.call('EXISTS', KEYS[4])
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return {1, cancel} end
if holder or redis.call('EXISTS', KEYS[3]) == 1 then return {0, cancel} end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then return {0, cancel} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, cancel}
"""

# Many runs' leases in one call (lease_keeper.py). KEYS: each run's lease and cancel keys, in pairs; ARGV: the lease
# in ms, then each run's token. Per run: 1 if the lease was its own (and is extended), plus 2 if a cancel is
# requested. It never takes a lapsed lease back: that stays with the run itself (reclaim_run).
_REFRESH_MANY_LUA = """
local out = {}
for i = 2, #ARGV do
  local held = 0
  if redis.call('GET', KEYS[2 * i - 3]) == ARGV[i] then
    redis.call('PEXPIRE', KEYS[2 * i - 3], ARGV[1])
    held = 1
  end
  out[i - 1] = held + 2 * redis.call('EXISTS', KEYS[2 * i - 2])
end
return out
"""

MAX_BLOCK_MS = 30_000
# redis-py 8 caps a pool at 100 connections, which turned the 101st SSE stream into a 503 when each follower
# held one in XREAD BLOCK; followers now share one reader (stream_fanout.py), but a burst of requests still
# checks out one connection per greenlet.
MAX_CONNECTIONS = int(os.environ.get("REDIS_MAX_CONNECTIONS", "5000"))
POOL_TIMEOUT_S = float(os.environ.get("REDIS_POOL_TIMEOUT_S", "10"))
RECONNECT_TRIES = 8  # 0.05, 0.1, 0.2, 0.4, then 0.5 s: about 2.75 s of retrying before an error surfaces
CANCEL_CHANNEL = "exec:cancels"  # request_cancel publishes the execution id here (app/services/cancel_watch.py)
REFUSED_TERMINAL = -1
REFUSED_FENCED = -2


@dataclass(frozen=True)
class Event:
    """One SSE event as stored: integer id, type and JSON data."""

    id: int
    event: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


def stream_key(execution_id: str) -> str:
    return f"exec:{execution_id}:events"


def _keys(execution_id: str) -> list[str]:
    prefix = f"exec:{execution_id}"
    return [f"{prefix}:events", f"{prefix}:seq", f"{prefix}:terminal", f"{prefix}:run", f"{prefix}:cancel",
            f"{prefix}:last_emit"]


def cancel_key(execution_id: str) -> str:
    return _keys(execution_id)[4]


def queued_key(execution_id: str) -> str:
    """Set once the broker confirmed the execution's chain (see EventLog.mark_queued)."""
    return f"exec:{execution_id}:queued"


def client(url: str) -> redis.Redis:
    """One client (and connection pool) per process and URL; redis-py pools are greenlet and fork aware."""
    # Blocking: at the cap a thread or greenlet waits up to REDIS_POOL_TIMEOUT_S for a free connection (the LLM
    # worker's 1,000 threads hold one only per command), then fails like an outage would.
    return per_process("redis", (url,), lambda: redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
        url,
        timeout=POOL_TIMEOUT_S,
        socket_connect_timeout=2.0,
        socket_timeout=MAX_BLOCK_MS / 1000 + 30,  # above any XREAD BLOCK (redis-py's default is 5 s)
        socket_keepalive=True,
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
        # Ride out a Redis restart (~1 s) instead of failing in-flight executions: redis-py's default
        # (10 tries, jittered backoff from 10 ms) gave up after ~0.4 s (tests/chaos/test_redis_restart.py).
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), RECONNECT_TRIES),
    )))


def parse_stream_id(raw: bytes | str) -> int:
    """Our ids are written as "N-0"; N is the event id clients see."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    return int(text.split("-", 1)[0])


def decode_entry(entry_id: Any, fields: Any) -> Event:
    """An entry as redis-py parses XRANGE / XREAD replies."""
    return Event(parse_stream_id(entry_id), fields[b"event"].decode(), json.loads(fields[b"data"]))


class EventLog:
    """Appends and reads one execution's events; shared by the API (readers) and the worker (writers)."""

    def __init__(self, redis_client: redis.Redis, *, max_events: int, retention_s: int) -> None:
        self.redis = redis_client
        self.max_events = max_events
        self.retention_s = retention_s
        self._emit = redis_client.register_script(_EMIT_LUA)
        self._refresh = redis_client.register_script(_REFRESH_LUA)
        self._reclaim = redis_client.register_script(_RECLAIM_LUA)
        self._refresh_many = redis_client.register_script(_REFRESH_MANY_LUA)

    def emit(self, execution_id: str, event: str, data: dict[str, Any], *, run: str = "") -> int:
        """Append one event; returns its id, or a negative REFUSED_* code (already ended, or a stale run)."""
        return self.emit_checking_cancel(execution_id, event, data, run=run)[0]

    def emit_checking_cancel(
        self, execution_id: str, event: str, data: dict[str, Any], *, run: str = "", lease_ms: int = 0
    ) -> tuple[int, bool]:
        """emit(), also answering whether a cancel was requested; an accepted event of `run` extends its lease."""
        args = self._emit_args(event, data, run)
        args.append(lease_ms or "")
        event_id, cancelled = self._emit(keys=_keys(execution_id), args=args)
        return int(event_id), bool(cancelled)

    def emit_on(self, pipe: Any, execution_id: str, event: str, data: dict[str, Any], *, run: str = "") -> None:
        """Queue the same append on a redis-py pipeline (benches: many emits in one round trip)."""
        self._emit(keys=_keys(execution_id), args=[*self._emit_args(event, data, run), ""], client=pipe)

    def _emit_args(self, event: str, data: dict[str, Any], run: str) -> list[Any]:
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event!r}")
        terminal = "1" if event in TERMINAL_EVENTS else "0"
        payload = json.dumps(data, separators=(",", ":"), default=str)
        return [event, payload, terminal, run, self.max_events, self.retention_s, uuid.uuid4().hex]

    def claim_run(self, execution_id: str, run: str, lease_ms: int) -> bool:
        """Become the only LLM run whose events are accepted, unless a live run holds the (short) lease."""
        return bool(self.redis.set(_keys(execution_id)[3], run, nx=True, px=lease_ms))

    def refresh_run(self, execution_id: str, run: str, lease_ms: int) -> bool:
        """Keep the lease while streaming; False means another run took over (we were presumed dead)."""
        return bool(self._refresh(keys=[_keys(execution_id)[3]], args=[run, lease_ms]))

    def refresh_runs(self, runs: Sequence[tuple[str, str]], lease_ms: int) -> list[tuple[bool, bool]]:
        """refresh_run() for many (execution id, run token) pairs in one round trip, each answering (held, cancel
        requested)."""
        if not runs:
            return []
        keys: list[str] = []
        for execution_id, _run in runs:
            found = _keys(execution_id)
            keys += [found[3], found[4]]
        codes = self._refresh_many(keys=keys, args=[lease_ms, *(run for _id, run in runs)])
        return [(bool(int(code) & 1), bool(int(code) & 2)) for code in codes]

    def reclaim_run(self, execution_id: str, run: str, lease_ms: int, last_seen_seq: int) -> bool:
        """Keep or take back the lease if it lapsed with nobody else on it and nothing emitted since last_seen_seq."""
        return self.reclaim_run_checking_cancel(execution_id, run, lease_ms, last_seen_seq)[0]

    def reclaim_run_checking_cancel(self, execution_id: str, run: str, lease_ms: int,
                                    last_seen_seq: int) -> tuple[bool, bool]:
        """reclaim_run(), also answering whether a cancel was requested."""
        keys = _keys(execution_id)
        held, cancelled = self._reclaim(keys=[keys[3], keys[1], keys[2], keys[4]], args=[run, lease_ms, last_seen_seq])
        return bool(held), bool(cancelled)

    def last_event_id(self, execution_id: str) -> int:
        """The id of the newest event appended (0 when none)."""
        value = self.redis.get(_keys(execution_id)[1])
        return int(value) if value is not None else 0

    def current_run(self, execution_id: str) -> str | None:
        value = self.redis.get(_keys(execution_id)[3])
        return value.decode() if isinstance(value, bytes) else value

    def end_run(self, execution_id: str) -> None:
        """Drop the lease once the execution is final."""
        self.redis.delete(_keys(execution_id)[3])

    def mark_queued(self, execution_id: str) -> None:
        """The broker confirmed the chain: a pending execution without this mark was never queued."""
        self.redis.set(queued_key(execution_id), "1", ex=self.retention_s)

    def claim_requeue(self, execution_id: str, claim_s: int = 300) -> bool:
        """Take the right to re-queue it unless it is marked queued (or claimed): True means send the chain now.

        The claim expires by itself, so a sweep that died between claiming and sending does not strand it.
        """
        return bool(self.redis.set(queued_key(execution_id), "claimed", nx=True, ex=claim_s))

    def queued_marks(self, execution_ids: list[str]) -> list[bool]:
        """Which of them carry the queued mark (or a re-queue claim), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for execution_id in execution_ids:
            pipe.exists(queued_key(execution_id))
        return [bool(found) for found in pipe.execute()]

    def unmark_queued(self, execution_id: str) -> None:
        self.redis.delete(queued_key(execution_id))

    def terminal_id(self, execution_id: str) -> int | None:
        """Id of the terminal event if one was emitted (and has not expired)."""
        value = self.redis.get(_keys(execution_id)[2])
        return int(value) if value is not None else None

    def exists(self, execution_id: str) -> bool:
        return bool(self.redis.exists(stream_key(execution_id)))

    def read_after(self, execution_id: str, after: int, count: int = 1000) -> list[Event]:
        """Stored events with id > after, oldest first."""
        entries: Any = self.redis.xrange(stream_key(execution_id), min=f"({after}-0", max="+", count=count)
        return [decode_entry(entry_id, fields) for entry_id, fields in entries]

    def request_cancel(self, execution_id: str) -> None:
        """Set the flag, and tell the LLM runs listening (cancel_watch) in the same round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(cancel_key(execution_id), "1", ex=self.retention_s)
        pipe.publish(CANCEL_CHANNEL, execution_id)
        pipe.execute()

    def cancel_requested(self, execution_id: str) -> bool:
        return bool(self.redis.exists(cancel_key(execution_id)))


def event_log(redis_url: str, *, max_events: int, retention_s: int) -> EventLog:
    """The event log on one Redis, once per process and settings (it registers its scripts once)."""
    return per_process("event_log", (redis_url, max_events, retention_s),
                       lambda: EventLog(client(redis_url), max_events=max_events, retention_s=retention_s))
