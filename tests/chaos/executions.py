"""Execution-side checks shared by the fault scenarios: exactly one end, one terminal event, one audit row each."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from app.llm.tokens import count_tokens
from app.services.streams import stream_key
from tests.chaos.checks import wait_for
from tests.support.api import ApiClient
from tests.support.sse import parse, text_of

TERMINAL = frozenset({"completed", "failed", "cancelled", "timed_out", "denied"})
TERMINAL_AUDIT = frozenset({f"execution.{name}" for name in ("completed", "failed", "cancelled", "timed_out")})
ONCE_AUDIT = TERMINAL_AUDIT | {"execution.requested", "llm.started", "llm.completed", "llm.failed"}


def execute(api: ApiClient, agent_id: str, message: str) -> str:
    response = api.post(f"/agents/{agent_id}/execute", json={"message": message})
    assert response.status_code == 200, response.get_json()
    execution_id: str = response.get_json()["execution_id"]
    return execution_id


def status_of(api: ApiClient, execution_id: str) -> str:
    response = api.get(f"/executions/{execution_id}")
    assert response.status_code == 200, response.get_json()
    status: str = response.get_json()["status"]
    return status


def raw_events(redis_url: str, execution_id: str) -> list[tuple[int, str]]:
    """(id, event) of everything in the execution's Redis Stream, read directly: the API stops at a terminal."""
    entries = redis.Redis.from_url(redis_url).xrange(stream_key(execution_id))
    return [(int(entry_id.decode().split("-")[0]), fields[b"event"].decode()) for entry_id, fields in entries]


def streaming_now(redis_url: str, execution_id: str, max_deltas: int, min_deltas: int = 2) -> bool:
    """True while the current LLM run is mid-stream: some deltas since its last reset, not all, and no end."""
    events = [event for _id, event in raw_events(redis_url, execution_id)]
    if any(event in TERMINAL for event in events):
        return False
    since = len(events) - events[::-1].index("reset") if "reset" in events else 0
    return min_deltas <= events[since:].count("delta") <= max_deltas


@dataclass
class EndTally:
    """Counts over executions in the shape of a total-queue checker."""

    started: int = 0
    ended_once: int = 0
    double_terminal: int = 0
    double_audit: int = 0
    stuck: int = 0
    bad_stream: int = 0
    wrong_output: int = 0
    wrong_usage: int = 0
    restarted: int = 0
    restarts: int = 0
    statuses: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "statuses"}, "statuses": dict(self.statuses)}


def tally(api: ApiClient, redis_url: str, executions: dict[str, tuple[str, str]]) -> EndTally:
    """Check every execution: {execution_id: (message, expected_output)}; completed ones must match exactly."""
    result = EndTally(started=len(executions))
    for execution_id, (message, expected) in executions.items():
        row = api.get(f"/executions/{execution_id}").get_json()
        result.statuses[row["status"]] += 1
        if row["status"] not in TERMINAL:
            result.stuck += 1
            continue
        result.restarted += row["attempts"] > 1
        result.restarts += row["attempts"] - 1
        terminals = [event for _id, event in raw_events(redis_url, execution_id) if event in TERMINAL]
        audit = api.get("/audit", query_string={"execution_id": execution_id, "limit": 200}).get_json()["items"]
        actions = Counter(item["action"] for item in audit)
        double_terminal = len(terminals) > 1
        double_audit = any(actions[name] > 1 for name in ONCE_AUDIT) or sum(actions[n] for n in TERMINAL_AUDIT) != 1
        response = api.get(f"/executions/{execution_id}/events")
        stream = parse(response.get_data(as_text=True)) if response.status_code == 200 else []
        ids_ok = [event.id for event in stream] == list(range(1, len(stream) + 1))
        ends = [event.event for event in stream if event.event in TERMINAL]
        bad_stream = not (ids_ok and ends == [row["status"]] and stream[-1].event == row["status"])
        result.double_terminal += double_terminal
        result.double_audit += double_audit
        result.bad_stream += bad_stream
        if row["status"] == "completed":
            usage = {"prompt_tokens": count_tokens(message), "completion_tokens": count_tokens(expected)}
            result.wrong_output += row["output"] != expected or text_of(stream) != expected
            result.wrong_usage += row["usage"] != usage or actions["llm.completed"] != 1
        if not (double_terminal or double_audit or bad_stream):
            result.ended_once += 1
    return result


def describe_stuck(api: ApiClient, redis_url: str, executions: dict[str, tuple[str, str]]) -> str:
    """Diagnostics for executions that did not end: row, audit trail and the tail of their event stream."""
    lines = []
    for execution_id in executions:
        row = api.get(f"/executions/{execution_id}").get_json()
        if row["status"] in TERMINAL:
            continue
        audit = api.get("/audit", query_string={"execution_id": execution_id, "limit": 200}).get_json()["items"]
        events = raw_events(redis_url, execution_id)
        lease = redis.Redis.from_url(redis_url).get(f"exec:{execution_id}:run")
        lines.append(f"STUCK {execution_id} status={row['status']} attempts={row['attempts']} "
                     f"audit={[item['action'] for item in sorted(audit, key=lambda item: item['id'])]} "
                     f"events={len(events)} tail={events[-4:]} lease={lease!r}")
    return "\n".join(lines)


def wait_until_all_ended(api: ApiClient, redis_url: str, executions: dict[str, tuple[str, str]], timeout_s: float,
                         what: str) -> None:
    """Poll until every execution is final; on the deadline, print what each stuck one was doing, then fail."""
    try:
        wait_for(lambda: all(status_of(api, e) in TERMINAL for e in executions), timeout_s=timeout_s, what=what)
    except AssertionError:
        print(describe_stuck(api, redis_url, executions))
        raise
