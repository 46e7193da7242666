"""Scenario: SIGKILL the worker again and again while tool loops call webhooks and wait for approvals.

Prints: executions ended twice, tool calls run twice per Idempotency-Key (a request for a call after its ledger
row completed, or a second effect at the receiver), pauses lost (an execution that never ended): all zero.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.checks import report, wait_for
from tests.chaos.executions import TERMINAL, raw_events
from tests.conftest import build_app
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client
from tests.support.redis_node import private_redis
from tests.support.webhook_receiver import Reply, WebhookReceiver
from tests.support.worker import WorkerProcess

# The workers' sweeps run every second, so a turn whose chain a kill stranded is re-sent within seconds.
SWEEP_OFTEN = {"EXECUTION_SWEEP_INTERVAL_S": "1", "EXECUTION_REQUEUE_AFTER_S": "3"}

NEW_PER_ROUND = 3


def loop_agent(api: ApiClient, receiver: WebhookReceiver, maturity: str, action: str, turns: int) -> dict[str, Any]:
    tool = {"name": "slow_lookup", "action": action, "kind": "webhook", "url": receiver.url, "timeout_s": 10}
    script: list[dict[str, Any]] = [{"tool_calls": [{"name": "slow_lookup", "arguments": {"turn": index}}]}
                                    for index in range(turns)]
    script.append({"text": "done"})
    return api.create_agent(maturity_level=maturity, tools=[tool],
                            llm={"provider": "scripted", "options": {"turns": script}})


def execution_views(api: ApiClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {execution_id: api.get(f"/executions/{execution_id}").get_json() for execution_id in ids}


def approve_waiting(api: ApiClient, ids: list[str]) -> int:
    approved = 0
    for execution_id, view in execution_views(api, ids).items():
        if view["status"] == "awaiting_approval" and view["pending_approval"]:
            approved += api.post(f"/executions/{execution_id}/approve").status_code == 202
    return approved


@pytest.mark.parametrize("kills", [pytest.param(2, id="quick"),
                                   pytest.param(12, id="12-kills", marks=pytest.mark.slow)])
def test_worker_sigkill_during_webhooks_and_approvals(kills: int, pg_url: str, tmp_path: Path) -> None:
    with (services.rabbitmq_vhost(f"chaos_{services.run_token()}") as vhost_url, private_redis() as redis_node,
          WebhookReceiver() as receiver):
        redis_url = redis_node.url
        app = build_app(pg_url, vhost_url, redis_url)
        app.config["WEBHOOK_ALLOWED_HOSTS"] = "127.0.0.1"
        api = new_workspace_client(app)
        receiver.behave(Reply(delay_s=0.6))  # every call is in flight long enough for a kill to land in it
        autonomous = loop_agent(api, receiver, "AUTONOMOUS", "read", turns=2)
        supervised = loop_agent(api, receiver, "INTERN", "create", turns=1)

        def new_worker() -> WorkerProcess:
            return WorkerProcess(database_url=pg_url, broker_url=vhost_url, redis_url=redis_url,
                                 log_path=tmp_path / "worker.log", concurrency=4, extra_env=SWEEP_OFTEN).start()

        ids: list[str] = []
        approvals = killed_in_call = 0
        worker = new_worker()
        try:
            for round_no in range(kills):
                for index in range(NEW_PER_ROUND):
                    agent = autonomous if index % 2 == 0 else supervised
                    response = api.post(f"/agents/{agent['id']}/execute",
                                        json={"message": f"round {round_no} #{index} {uuid.uuid4().hex[:6]}"})
                    assert response.status_code == 200, response.get_json()
                    ids.append(response.get_json()["execution_id"])
                seen = len(receiver.received)
                wait_for(lambda seen=seen: len(receiver.received) > seen, timeout_s=60,
                         what=f"a webhook call in flight before kill {round_no + 1}")
                approvals += approve_waiting(api, ids)
                worker.kill()
                killed_in_call += 1
                approvals += approve_waiting(api, ids)  # approved while no worker runs: the task waits on the broker
                worker = new_worker()

            def all_ended() -> bool:
                nonlocal approvals
                approvals += approve_waiting(api, ids)
                return all(view["status"] in TERMINAL for view in execution_views(api, ids).values())

            wait_for(all_ended, timeout_s=120 + 15 * kills, what="every execution to end", interval_s=0.5)
        finally:
            worker.stop()
        views = execution_views(api, ids)
        counts = tally(api, redis_url, views, receiver)

    report(f"tool-loop-worker-kill-{kills}", {"kills": kills, "killed_in_call": killed_in_call,
                                              "approvals": approvals, **counts},
           ["executions_ended_twice", "tool_calls_run_twice", "pauses_lost", "not_completed",
            "tool_calls_not_completed"])


def tally(api: ApiClient, redis_url: str, views: dict[str, dict[str, Any]],
          receiver: WebhookReceiver) -> dict[str, int]:
    """One terminal event and one terminal audit row each; no webhook request for a call after its row completed."""
    ended_twice = 0
    for execution_id in views:
        terminal_events = [event for _id, event in raw_events(redis_url, execution_id) if event in TERMINAL]
        rows = api.get("/audit", query_string={"execution_id": execution_id, "limit": 200}).get_json()["items"]
        ends = [row for row in rows if row["action"] in {"execution.completed", "execution.failed",
                                                          "execution.cancelled", "execution.timed_out"}]
        ended_twice += len(terminal_events) > 1 or len(ends) > 1
    completed_at = {row["tool_call_id"]: row["finished_at"] for view in views.values()
                    for row in view["tool_calls"] if row["status"] == "completed"}
    late = 0
    for request in receiver.received:
        key = request.headers.get("idempotency-key", "")
        finished = completed_at.get(key)
        if finished and request.at > datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp() + 0.001:
            late += 1
    return {
        "executions": len(views),
        "executions_ended_twice": ended_twice,
        "tool_calls_run_twice": late,
        "webhook_retries_same_key": sum(count - 1 for count in receiver.per_key.values() if count > 1),
        "pauses_lost": sum(1 for view in views.values() if view["status"] not in TERMINAL),
        "not_completed": sum(1 for view in views.values() if view["status"] != "completed"),
        "tool_calls_completed": len(completed_at),
        "tool_calls_not_completed": sum(1 for view in views.values() for row in view["tool_calls"]
                                        if row["status"] != "completed"),
        "not_completed_calls": sorted(f"{row['status']}:{(row['error'] or {}).get('code')}"
                                      for view in views.values() for row in view["tool_calls"]
                                      if row["status"] != "completed"),
    }
