"""Broker flow control on a private node: memory and disk alarms make RabbitMQ block publishers.

While a sequential client sends messages, starts executions and publishes events (retrying each 503 with the
same message_id or Idempotency-Key), a background thread raises and clears alarms and another polls /readyz.
Every 503 must come within CONFIRM_TIMEOUT_S + 1 s, /readyz must name the broker blocked during an alarm, and
afterwards every confirmed message is in the inbox once and in order, every accepted execution ends once,
and every execution answered 503 ended `failed` (unavailable) without running.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.chaos.checks import message_counts, report, wait_for
from tests.chaos.executions import tally, wait_until_all_ended
from tests.chaos.messaging import inbox_holding
from tests.conftest import build_app
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client
from tests.support.rabbit_node import RabbitNode
from tests.support.worker import WorkerProcess

CONFIRM_TIMEOUT_S = 2.0
BOUND_S = CONFIRM_TIMEOUT_S + 1.0
RETRY_PAUSE_S = 0.05  # the client's retry policy, not synchronisation
REPLY = "flow control ok"
DETECT_GRACE_S = 1.5  # the disk monitor and the memory check notice a changed limit within this


@dataclass
class Schedule:
    """Alarm windows: (kind, on_s, off_s) in order; records when each alarm was really on."""

    steps: list[tuple[str, float, float]]
    windows: list[tuple[str, float, float]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self, node: RabbitNode) -> None:
        try:
            for kind, on_s, off_s in self.steps:
                node.set_alarm(kind)
                raised = time.monotonic()
                time.sleep(on_s)  # the scenario's timeline: how long the alarm lasts
                cleared = time.monotonic()
                node.clear_alarm(kind)
                self.windows.append((kind, raised, cleared))
                time.sleep(off_s)
        finally:
            self.done.set()

    def inside(self, at: float) -> bool:
        """True if an alarm had been on for DETECT_GRACE_S at `at` and was not yet being cleared."""
        return any(raised + DETECT_GRACE_S <= at < cleared for _kind, raised, cleared in self.windows)


@dataclass
class Tally:
    """What the client saw: per endpoint the answers and the slowest 503."""

    answers: Counter[str] = field(default_factory=Counter)
    slowest_503_s: dict[str, float] = field(default_factory=dict)
    slowest_any: dict[str, float] = field(default_factory=dict)
    over_bound: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def saw(self, endpoint: str, status: int, seconds: float, body: Any) -> None:
        self.answers[f"{endpoint}_{status}"] += 1
        self.slowest_any[endpoint] = round(max(self.slowest_any.get(endpoint, 0.0), seconds), 3)
        self.over_bound += seconds > BOUND_S  # an accepted request that hung past the bound is as bad as a slow 503
        if status == 503:
            self.slowest_503_s[endpoint] = round(max(self.slowest_503_s.get(endpoint, 0.0), seconds), 3)
            self.reasons[str((body or {}).get("error", {}).get("details", {}).get("reason"))] += 1


def poll_readyz(app: Flask, stop: threading.Event, seen: list[tuple[float, int, bool, float]]) -> None:
    """(time, status, names the broker blocked, seconds) every 0.25 s until stopped."""
    client = app.test_client()
    while not stop.is_set():
        started = time.monotonic()
        response = client.get("/readyz")
        body = response.get_json()
        seen.append((started, response.status_code, body.get("blocked") == ["broker"], time.monotonic() - started))
        stop.wait(0.25)


def timed_post(api: ApiClient, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
               ) -> tuple[int, Any, float]:
    started = time.monotonic()
    response = api.post(path, json=body, headers=headers)
    return response.status_code, response.get_json(), time.monotonic() - started


@pytest.mark.parametrize("operations,steps", [
    pytest.param(60, [("memory", 8.0, 1.0)], id="quick"),  # long enough for every lane to meet it under load
    pytest.param(1500, [("memory", 8.0, 4.0), ("disk", 8.0, 4.0), ("memory", 5.0, 2.0), ("disk", 5.0, 2.0)],
                 id="long", marks=pytest.mark.slow),
])
def test_alarms_answer_503_in_time_and_lose_nothing(operations: int, steps: list[tuple[str, float, float]],
                                                    rabbit_node: RabbitNode, redis_url: str, tmp_path: Path) -> None:
    with services.postgres_database(f"chaos_{services.run_token()}") as database_url:
        app = build_app(database_url, rabbit_node.url, redis_url)
        app.config["CONFIRM_TIMEOUT_S"] = CONFIRM_TIMEOUT_S
        api = new_workspace_client(app)
        sender = api.create_agent(llm={"provider": "scripted", "options": {"text": REPLY}})
        receiver = api.create_agent()["id"]
        worker = WorkerProcess(database_url=database_url, broker_url=rabbit_node.url, redis_url=redis_url,
                               log_path=tmp_path / "worker.log", concurrency=4,
                               extra_env={"CONFIRM_TIMEOUT_S": str(CONFIRM_TIMEOUT_S)}).start()
        schedule = Schedule(steps)
        stop_polling = threading.Event()
        readyz: list[tuple[float, int, bool, float]] = []
        threads = [threading.Thread(target=schedule.run, args=(rabbit_node,), daemon=True),
                   threading.Thread(target=poll_readyz, args=(app, stop_polling, readyz), daemon=True)]
        seen = Tally()
        confirmed: list[str] = []
        accepted: dict[str, tuple[str, str]] = {}
        refused_executions: set[str] = set()
        run = uuid.uuid4().hex[:8]
        try:
            for thread in threads:
                thread.start()
            # Three sequential lanes, one attempt each per round, so every endpoint meets every alarm; a lane
            # retries its current operation (same message_id / Idempotency-Key) until it is accepted.
            position = {"message": 0, "execute": 0, "event": 0}
            pending_since: dict[str, float] = {}
            while sum(position.values()) < operations or not schedule.done.is_set():
                for kind, i in list(position.items()):
                    op_id = f"{run}-{kind}-{i:05d}"
                    if kind == "message":
                        status, body, seconds = timed_post(api, f"/agents/{sender['id']}/messages",
                                                           {"to_agent_id": receiver, "message": {"i": i},
                                                            "message_id": op_id})
                    elif kind == "execute":
                        status, body, seconds = timed_post(api, f"/agents/{sender['id']}/execute",
                                                           {"message": f"op {i}"}, headers={"Idempotency-Key": op_id})
                    else:
                        status, body, seconds = timed_post(api, "/events", {"event_type": "flow.test",
                                                                            "data": {"i": i}})
                    seen.saw(kind, status, seconds, body)
                    if status in (200, 201, 202):
                        if kind == "message":
                            confirmed.append(body["message_id"])
                        elif kind == "execute":
                            accepted[body["execution_id"]] = (f"op {i}", REPLY)
                        position[kind] += 1
                        pending_since.pop(kind, None)
                        continue
                    assert status == 503, body
                    assert body["error"]["code"] == "unavailable"
                    if kind == "execute":
                        refused_executions.add(body["error"]["details"]["execution_id"])
                    since = pending_since.setdefault(kind, time.monotonic())
                    assert time.monotonic() - since < 120, f"{op_id} not accepted within 120 s"
                time.sleep(RETRY_PAUSE_S)
            stop_polling.set()
            for thread in threads:
                thread.join(60)
            wait_until_all_ended(api, redis_url, accepted, timeout_s=120, what="every accepted execution to end")
            inbox = wait_for(lambda: inbox_holding(api, receiver, len(confirmed)), timeout_s=60,
                             what="every confirmed message in the inbox") or []
            ended = tally(api, redis_url, accepted)
            refused = tally(api, redis_url, {e: ("", "") for e in refused_executions})
            refused_rows = [api.get(f"/executions/{e}").get_json() for e in refused_executions]
        finally:
            stop_polling.set()
            schedule.done.wait(120)
            worker.stop()

    stored = [row["message_id"] for row in inbox]
    during = [entry for entry in readyz if schedule.inside(entry[0])]
    outside = [entry for entry in readyz if not any(raised - 0.5 <= entry[0] <= cleared + DETECT_GRACE_S + 1
                                                    for _k, raised, cleared in schedule.windows)]
    counts: dict[str, Any] = {
        "operations": sum(position.values()),
        "alarms": len(schedule.windows),
        **dict(sorted(seen.answers.items())),
        "slowest_503_s": seen.slowest_503_s,
        "over_bound_503": seen.over_bound,
        "reasons": dict(seen.reasons),
        "readyz_during_alarm": len(during),
        "readyz_ok_during_alarm": sum(1 for entry in during if entry[1] == 200),
        "readyz_503_not_naming_broker": sum(1 for entry in during if entry[1] == 503 and not entry[2]),
        "readyz_slowest_s": round(max((entry[3] for entry in readyz), default=0.0), 3),
        "readyz_503_outside_alarm": sum(1 for entry in outside if entry[1] != 200),
        **message_counts(confirmed, stored),
        "executions_accepted": len(accepted),
        "executions_ended_once": ended.ended_once,
        "executions_stuck": ended.stuck,
        "executions_double_end": ended.double_terminal + ended.double_audit,
        "executions_wrong_output": ended.wrong_output,
        "executions_refused_503": len(refused_executions),
        "refused_not_failed_unavailable": sum(1 for row in refused_rows if row["status"] != "failed"
                                              or (row["error"] or {}).get("code") != "unavailable"),
        "refused_ran_llm": sum(1 for row in refused_rows if row["attempts"] > 0 or row["output"]),
        "refused_double_end": refused.double_terminal + refused.double_audit,
    }
    report(f"flow-control-{operations}", counts,
           ["over_bound_503", "readyz_ok_during_alarm", "readyz_503_not_naming_broker", "lost", "duplicated",
            "out_of_order", "unexpected", "executions_stuck", "executions_double_end", "executions_wrong_output",
            "refused_not_failed_unavailable", "refused_ran_llm", "refused_double_end"])
    assert seen.answers["message_503"] and seen.answers["execute_503"] and seen.answers["event_503"]
    assert ended.ended_once == len(accepted) and ended.statuses == {"completed": len(accepted)}
    assert counts["readyz_during_alarm"] > 0
