"""Admission state in Redis, changed only by Lua scripts (atomic across every web and worker process).

- Concurrency slots are leases: a sorted set per scope (global, workspace, credential) of execution id -> expiry
  (ms). Expired members are purged before every count, so a SIGKILLed holder's slot frees itself.
- Rate limits are sliding one-minute windows: a sorted set of reservation id -> time with a hash of weights and a
  running sum (requests: weight 1; tokens: the estimate, corrected by the actual usage). A request that alone
  exceeds the limit is let through once the window is empty (hence "+ one request").
- A 429 sets the credential's shared not-before time, which every admission and provider call honours.
- Waiting executions sit in a FIFO list per workspace; a ring lists the workspaces with waiting work, and the
  dispatcher serves them round robin, one execution per turn, so one workspace's backlog never holds another's.

Keys are built inside the scripts (one Redis, not a cluster): see docs/decisions.md, "Admission control".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from app.services.admission import lua

WINDOW_MS = 60_000
REASONS = ("workspace_concurrency", "credential_concurrency", "capacity", "requests_per_minute", "tokens_per_minute")

@dataclass(frozen=True)
class Item:
    """What the dispatcher needs to start a waiting execution without reading the database."""

    id: str
    ws: str
    cred: str
    wscap: int
    credcap: int
    rpm: int
    tpm: int
    est: int
    lease: int
    deadline: int
    task_ids: list[str]

    def as_json(self) -> str:
        data: dict[str, Any] = {**self.__dict__, "task_ids": json.dumps(self.task_ids)}
        return json.dumps(data)


@dataclass(frozen=True)
class CallReservation:
    """A reservation in the credential's windows for one provider call ('' when the credential has none)."""

    member: str
    reason: str | None
    wait_ms: int
    credential_id: str = ""
    workspace_id: str = ""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AdmissionState:
    """The scripts bound to one Redis client; every method is one round trip."""

    def __init__(self, client: redis.Redis, *, window_ms: int = WINDOW_MS) -> None:
        self.redis = client
        self.window_ms = window_ms
        self._admit = client.register_script(lua.ADMIT)
        self._dispatch = client.register_script(lua.DISPATCH)
        self._finish = client.register_script(lua.FINISH)
        self._call = client.register_script(lua.CALL)
        self._correct = client.register_script(lua.CORRECT)
        self._pause = client.register_script(lua.PAUSE)
        self._expire = client.register_script(lua.EXPIRE)
        self._ended_held = client.register_script(lua.ENDED_HELD)

    def admit(self, item: Item, *, now_ms: int, capacity: int) -> str | None:
        """None if admitted now; else the reason it waits (it joined its workspace's queue)."""
        outcome, reason = self._admit(args=[now_ms, self.window_ms, capacity, item.as_json()])
        return None if _text(outcome) == "admitted" else _text(reason)

    def dispatch(self, *, now_ms: int, capacity: int, most: int = 100) -> list[tuple[str, list[str]]]:
        """Admit waiting executions in fair order; (id, task ids) of each, to be sent to the broker."""
        ids = [_text(i) for i in self._dispatch(args=[now_ms, self.window_ms, capacity, most])]
        if not ids:
            return []
        tasks = self.redis.hmget("adm:dispatching:tasks", ids)
        return [(i, json.loads(_text(t)) if t else []) for i, t in zip(ids, tasks, strict=True)]

    def sent(self, execution_id: str) -> None:
        """The broker confirmed the chain of a dispatched execution."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem("adm:dispatching", execution_id)
        pipe.hdel("adm:dispatching:tasks", execution_id)
        pipe.execute()

    def stale_dispatches(self, *, older_than_ms: int, now_ms: int) -> list[tuple[str, list[str]]]:
        """Dispatched but never confirmed sent (the dispatcher died): to send again."""
        ids = [_text(i) for i in self.redis.zrangebyscore("adm:dispatching", "-inf", now_ms - older_than_ms)]
        if not ids:
            return []
        tasks = self.redis.hmget("adm:dispatching:tasks", ids)
        return [(i, json.loads(_text(t)) if t else []) for i, t in zip(ids, tasks, strict=True)]

    def finish(self, execution_id: str, *, only_if_ended: bool) -> bool:
        """Free the execution's slots (only once its terminal event exists, if only_if_ended)."""
        return bool(self._finish(args=[execution_id, "1" if only_if_ended else "0"]))

    def reserve_call(self, execution_id: str, *, est: int, now_ms: int, expiry_ms: int) -> CallReservation:
        """Reserve one provider call on the execution's credential; extends its slots to expiry_ms."""
        member, reason, wait, cred, ws = self._call(args=[now_ms, self.window_ms, execution_id, est, expiry_ms])
        return CallReservation(_text(member), _text(reason) or None, int(wait), _text(cred), _text(ws))

    def correct(self, credential_id: str, member: str, actual_tokens: int) -> None:
        self._correct(args=[credential_id, member, actual_tokens])

    def pause(self, credential_id: str, *, until_ms: int, now_ms: int) -> int:
        """Nothing starts on the credential before until_ms (a 429's Retry-After); the later pause wins."""
        return int(self._pause(args=[credential_id, until_ms, now_ms]))

    def expire_waits(self, *, now_ms: int) -> list[str]:
        return [_text(i) for i in self._expire(args=[now_ms])]

    def ended_held_ids(self) -> list[str]:
        """Held executions that have ended (their terminal event exists), found in one round trip."""
        return [_text(i) for i in self._ended_held(args=[])]

    def held_ids(self) -> list[str]:
        return [_text(i) for i in self.redis.zrange("adm:slots:global", 0, -1)]

    def credential_of(self, execution_id: str) -> str:
        return _text(self.redis.hget(f"adm:held:{execution_id}", "cred") or "")

    def queued_reason(self, execution_id: str) -> str | None:
        value = self.redis.hget("adm:queued", execution_id)
        return _text(value) if value is not None else None

    def queued_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for value in self.redis.hvals("adm:queued"):
            counts[_text(value)] = counts.get(_text(value), 0) + 1
        return counts

    def slots_in_use(self, scope: str, *, now_ms: int) -> dict[str, int]:
        """Live slots per workspace or credential (scope 'ws' | 'cred')."""
        prefix = f"adm:slots:{scope}:"
        keys = [_text(k) for k in self.redis.scan_iter(match=prefix + "*", count=1000)]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.zcount(key, now_ms, "+inf")
        return {k[len(prefix):]: int(n) for k, n in zip(keys, pipe.execute(), strict=True) if n}

    def live_count(self, key: str, *, now_ms: int) -> int:
        return int(self.redis.zcount(key, now_ms + 1, "+inf"))

    def window_sum(self, kind: str, credential_id: str) -> int:
        return int(self.redis.get(f"adm:{kind}:{credential_id}:sum") or 0)
