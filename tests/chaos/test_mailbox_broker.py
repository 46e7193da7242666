"""Scenario 2: SIGKILL the mailbox and restart RabbitMQ (a private node: stop_app / start_app) while one
sequential sender sends through the REST API; check the inbox like a total-queue checker."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.chaos.checks import order_violations, report, wait_for
from tests.chaos.messaging import inbox_depth, stored_ids
from tests.conftest import build_app
from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.mailbox import MailboxProcess
from tests.support.rabbit_node import RabbitNode

SEND_DEADLINE_S = 90.0  # one message may wait out a whole broker restart
RETRY_PAUSE_S = 0.05  # retry policy of the sender, not synchronisation


def plan(total: int) -> dict[int, str]:
    """Faults by send index: the short run does each fault once, the long one twice, in different orders."""
    if total <= 200:
        return {total * 15 // 100: "kill_mailbox", total * 30 // 100: "start_mailbox",
                total * 50 // 100: "restart_broker"}
    return {total * 10 // 100: "kill_mailbox", total * 20 // 100: "start_mailbox",
            total * 35 // 100: "restart_broker", total * 55 // 100: "kill_mailbox",
            total * 60 // 100: "restart_broker", total * 80 // 100: "start_mailbox"}


@pytest.mark.parametrize("total", [pytest.param(200, id="quick"),
                                   pytest.param(1000, id="1000-sends", marks=pytest.mark.slow)])
def test_mailbox_kill_and_broker_restart_during_sends(total: int, rabbit_node: RabbitNode, redis_url: str,
                                                      tmp_path: Path) -> None:
    with services.postgres_database(f"chaos_{services.run_token()}") as database_url:
        app = build_app(database_url, rabbit_node.url, redis_url)
        api = new_workspace_client(app)
        sender = api.create_agent()
        receivers = [api.create_agent()["id"], api.create_agent()["id"]]
        engine = create_engine(database_url)
        mailbox = MailboxProcess(database_url=database_url, broker_url=rabbit_node.url,
                                 log_path=tmp_path / "mailbox.log").start()
        restarts: list[threading.Thread] = []
        confirmed: dict[str, list[str]] = {receiver: [] for receiver in receivers}
        attempts: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        responses: Counter[int] = Counter()
        slowest = 0.0
        faults = plan(total)
        run = uuid.uuid4().hex[:8]
        try:
            for i in range(total):
                if faults.get(i) == "kill_mailbox":
                    mailbox.kill()
                elif faults.get(i) == "start_mailbox":
                    mailbox.start()
                elif faults.get(i) == "restart_broker":
                    restarts.append(threading.Thread(target=rabbit_node.restart, daemon=True))
                    restarts[-1].start()
                    # The next sends must meet the restart: rabbitmqctl takes longer to begin than the rest of
                    # a quick run's sends take on a quiet machine.
                    wait_for(lambda: not rabbit_node.accepting(), timeout_s=60, what="the broker restart to begin")
                receiver, message_id = receivers[i % 2], f"{run}-{i:05d}"
                deadline = time.monotonic() + SEND_DEADLINE_S
                while True:  # the sequential sender: retry with the same message_id until confirmed
                    attempts[message_id] += 1
                    started = time.monotonic()
                    response = api.post(f"/agents/{sender['id']}/messages",
                                        json={"to_agent_id": receiver, "message": {"i": i}, "message_id": message_id})
                    slowest = max(slowest, time.monotonic() - started)
                    responses[response.status_code] += 1
                    if response.status_code == 201:
                        body = response.get_json()
                        assert (body["message_id"], body["status"]) == (message_id, "confirmed")
                        confirmed[receiver].append(message_id)
                        break
                    if response.status_code == 503:
                        assert response.get_json()["error"]["code"] == "unavailable"
                        errors[message_id] += 1
                    assert time.monotonic() < deadline, f"{message_id}: no confirm in {SEND_DEADLINE_S}s"
                    time.sleep(RETRY_PAUSE_S)
            for thread in restarts:
                thread.join(120)
            # Creating an agent after the restart must work at the first try (pooled connections were stale).
            late_agent = api.post("/agents", json={"name": "after-restart", "maturity_level": "STUDENT"}).status_code
            if mailbox.process is None or mailbox.process.poll() is not None:
                mailbox.start()
            wait_for(lambda: sum(len(stored_ids(engine, r)) for r in receivers) >= total
                     and all(inbox_depth(rabbit_node.url, r) == 0 for r in receivers),
                     timeout_s=60, what="the mailbox to store every queued message")
            mailbox_exit = mailbox.stop()
            stored = {receiver: stored_ids(engine, receiver) for receiver in receivers}
            with engine.connect() as db:
                audited = db.execute(text("select count(*) from audit_log where workspace_id = :ws and "
                                          "action = 'message.stored'"), {"ws": api.workspace_id}).scalar_one()
        finally:
            mailbox.kill()
            engine.dispose()

    sent_ids = {message_id for ids in confirmed.values() for message_id in ids}
    all_stored = [message_id for ids in stored.values() for message_id in ids]
    counts: dict[str, Any] = {
        "sends": total,
        "attempts": sum(attempts.values()),
        "confirmed": sum(len(ids) for ids in confirmed.values()),
        "unconfirmed_with_error": sum(errors.values()),
        "unconfirmed_without_error": sum(attempts.values()) - sum(errors.values()) - responses[201],
        "retried_messages": len(errors),
        "stored": len(all_stored),
        "lost": len(sent_ids - set(all_stored)),
        "duplicated": len(all_stored) - len(set(all_stored)),
        "out_of_order": sum(order_violations(confirmed[r], stored[r]) for r in receivers),
        "unexpected": len(set(all_stored) - sent_ids),
        "stored_audit_rows": audited,
        "audit_mismatch": abs(audited - len(set(all_stored))),
        "slowest_send_s": round(slowest, 2),
        "agent_create_after_restart_failed": int(late_agent != 201),
        "mailbox_exit": mailbox_exit,
        "responses": dict(responses),
    }
    report(f"mailbox-broker-{total}", counts,
           ["unconfirmed_without_error", "agent_create_after_restart_failed", "lost", "duplicated", "out_of_order",
            "unexpected", "audit_mismatch", "mailbox_exit"])
    assert counts["confirmed"] == total and counts["stored"] == total
    assert counts["unconfirmed_with_error"] > 0, "the broker restart did not hit any send"
