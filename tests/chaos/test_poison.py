"""Scenario 5: a message no store can take lands in agents.dead, then dead_letters and the API, after
MAILBOX_MAX_ATTEMPTS tries; the good messages around it are stored once, in order."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import create_engine

from coordination.topology import DEAD_QUEUE
from tests.chaos.checks import report, wait_for
from tests.chaos.messaging import inbox_depth, publish_raw, queue_depth, stored_ids
from tests.conftest import build_app
from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.mailbox import MailboxProcess

MAX_ATTEMPTS = 3


def test_poison_message_is_dead_lettered_after_the_configured_attempts(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    with services.rabbitmq_vhost(f"chaos_{services.run_token()}") as vhost_url:
        app = build_app(pg_url, vhost_url, redis_url)
        api = new_workspace_client(app)
        alice, bob = api.create_agent(), api.create_agent()
        engine = create_engine(pg_url)
        mailbox = MailboxProcess(database_url=pg_url, broker_url=vhost_url, log_path=tmp_path / "mailbox.log",
                                 extra_env={"MAILBOX_MAX_ATTEMPTS": str(MAX_ATTEMPTS)})
        try:
            def send(message: str) -> str:
                response = api.post(f"/agents/{alice['id']}/messages",
                                    json={"to_agent_id": bob["id"], "message": message})
                assert response.status_code == 201, response.get_json()
                message_id: str = response.get_json()["message_id"]
                return message_id

            good = [send("before")]
            poison_id = f"poison-{uuid.uuid4().hex}"
            publish_raw(vhost_url, bob["id"], b"{not json", poison_id,
                        {"from_agent_id": alice["id"], "to_agent_id": bob["id"], "workspace_id": api.workspace_id,
                         "hop": 0})
            good.append(send("after"))
            mailbox.start()
            listing = wait_for(
                lambda: api.get(f"/agents/{bob['id']}/dead-letters").get_json()["items"],
                timeout_s=30, what="the poison message in the dead-letters listing",
            )
            wait_for(lambda: len(stored_ids(engine, bob["id"])) >= 2, what="the good messages stored")
            wait_for(lambda: queue_depth(vhost_url, DEAD_QUEUE) == 0, what="agents.dead drained into the table")
            stored = stored_ids(engine, bob["id"])
            depth = inbox_depth(vhost_url, bob["id"])
            audit = api.get("/audit", query_string={"action": "message.dead_lettered", "limit": 200}).get_json()
        finally:
            exit_code = mailbox.stop()
            engine.dispose()
    log = mailbox.log()
    failures = log.count(f"storing message {poison_id} failed")
    counts = {
        "max_attempts": MAX_ATTEMPTS,
        "store_failures": failures,
        "dead_letter_rows": sum(1 for item in listing if item["message_id"] == poison_id),
        "dead_lettered_audit": sum(1 for row in audit["items"] if row["details"].get("message_id") == poison_id),
        "good_sent": len(good),
        "good_stored": len([m for m in stored if m in good]),
        "lost": len(set(good) - set(stored)),
        "duplicated": len(stored) - len(set(stored)),
        "out_of_order": int([m for m in stored if m in good] != good),
        "unexpected": len(set(stored) - set(good)),
        "left_in_inbox_queue": depth,
        "mailbox_exit": exit_code,
    }
    report("poison", counts,
           ["lost", "duplicated", "out_of_order", "unexpected", "left_in_inbox_queue", "mailbox_exit"])
    assert failures == MAX_ATTEMPTS
    assert counts["dead_letter_rows"] == 1 and counts["dead_lettered_audit"] == 1
    assert listing[0]["reason"] == "rejected" and listing[0]["body"] == "{not json"
