"""Scenario 4: PostgreSQL briefly unreachable (a TCP proxy in front of it is cut): the API answers 503
`unavailable` (never 500), the mailbox acks nothing it did not store, and both recover by themselves."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine

from app import create_app
from app.services import coordination_clients
from coordination.social import SocialLayer
from tests.chaos.checks import order_violations, report, wait_for
from tests.chaos.messaging import inbox_depth, stored_ids
from tests.conftest import build_app
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client
from tests.support.mailbox import MailboxProcess
from tests.support.tcp_proxy import CuttableProxy, through


@pytest.mark.parametrize("outage_s", [pytest.param(3.0, id="quick"),
                                      pytest.param(20.0, id="20s", marks=pytest.mark.slow)])
def test_database_outage_is_503_and_nothing_unstored_is_acked(outage_s: float, redis_url: str, tmp_path: Path) -> None:
    with services.postgres_database(f"chaos_{services.run_token()}") as direct_url, \
            services.rabbitmq_vhost(f"chaos_{services.run_token()}") as vhost_url:
        direct = build_app(direct_url, vhost_url, redis_url)  # migrates
        parts = urlsplit(direct_url)
        proxy = CuttableProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
        proxied_url = through(direct_url, proxy.port)
        app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": proxied_url, "BROKER_URL": vhost_url,
                          "REDIS_URL": redis_url})
        direct_api = new_workspace_client(direct)
        api = ApiClient(app.test_client(), direct_api.key, direct_api.workspace_id)
        sender, receiver = api.create_agent()["id"], api.create_agent()["id"]
        with direct.app_context():  # the bare SocialLayer below declares no inbox: the app's does (and marks it)
            coordination_clients.social().declare_inboxes([receiver])
        engine = create_engine(direct_url)
        layer = SocialLayer(vhost_url, engine)
        mailbox = MailboxProcess(database_url=proxied_url, broker_url=vhost_url, log_path=tmp_path / "mailbox.log")
        statuses: Counter[str] = Counter()
        try:
            mailbox.start()
            run = uuid.uuid4().hex[:8]
            batch = [{"from_agent_id": sender, "to_agent_id": receiver, "message": i, "message_id": f"{run}-{i:04d}"}
                     for i in range(300)]
            sent = [r["message_id"] for r in layer.send_many(batch)]
            wait_for(lambda: stored_ids(engine, receiver), what="the mailbox to start draining")
            proxy.cut()  # most likely in the middle of a drain transaction
            cut_at = time.monotonic()
            during = [layer.send_message(from_agent_id=sender, to_agent_id=receiver, message=i,
                                         message_id=f"{run}-{i:04d}")["message_id"] for i in range(300, 350)]
            sent += during
            unsaved_stored = len(stored_ids(engine, receiver))
            while time.monotonic() - cut_at < outage_s:  # the outage lasts outage_s; probe the API meanwhile
                for method, path, body in [
                    ("get", "/agents", None), ("post", "/agents", {"name": "x", "maturity_level": "STUDENT"}),
                    ("get", f"/agents/{receiver}/messages", None),
                    ("post", f"/agents/{sender}/messages", {"to_agent_id": receiver, "message": "x"}),
                    ("get", "/audit", None),
                ]:
                    response = getattr(api, method)(path, **({"json": body} if body else {}))
                    code = (response.get_json() or {}).get("error", {}).get("code")
                    statuses[f"{response.status_code} {code}" if code else str(response.status_code)] += 1
                statuses[f"healthz {api.get('/healthz').status_code}"] += 1  # the process is up
                statuses[f"readyz {api.get('/readyz').status_code}"] += 1  # but not ready
            queued_during_outage = inbox_depth(vhost_url, receiver)
            stored_during_outage = len(stored_ids(engine, receiver))
            proxy.restore()
            restored_at = time.monotonic()
            wait_for(lambda: api.get("/agents").status_code == 200, timeout_s=30, what="the API to recover")
            api_recovery_s = time.monotonic() - restored_at
            wait_for(lambda: len(stored_ids(engine, receiver)) >= len(sent) and inbox_depth(vhost_url, receiver) == 0,
                     timeout_s=60, what="the mailbox to store the backlog")
            mailbox_recovery_s = time.monotonic() - restored_at
            mailbox_exit = mailbox.stop()
            stored = stored_ids(engine, receiver)
        finally:
            mailbox.kill()
            layer.close()
            engine.dispose()
            proxy.close()

    unavailable = sum(n for key, n in statuses.items() if key == "503 unavailable")
    counts = {
        "outage_s": outage_s,
        "api_requests": sum(statuses.values()),
        "answered_503_unavailable": unavailable,
        "answered_500": sum(n for key, n in statuses.items() if key.startswith("500")),
        "answered_other": sum(n for key, n in statuses.items()
                              if key not in ("503 unavailable", "healthz 200", "readyz 503")),
        "healthz_ok": statuses["healthz 200"],
        "readyz_503": statuses["readyz 503"],
        "confirmed": len(sent),
        "stored_before_cut_or_in_flight": unsaved_stored,
        "stored_during_outage": stored_during_outage - unsaved_stored,
        "queued_during_outage": queued_during_outage,
        "acked_not_stored": len(sent) - stored_during_outage - queued_during_outage,
        "stored": len(stored),
        "lost": len(set(sent) - set(stored)),
        "duplicated": len(stored) - len(set(stored)),
        "out_of_order": order_violations(sent, stored),
        "unexpected": len(set(stored) - set(sent)),
        "api_recovery_s": round(api_recovery_s, 2),
        "mailbox_recovery_s": round(mailbox_recovery_s, 2),
        "mailbox_exit": mailbox_exit,
    }
    report(f"database-outage-{int(outage_s)}s", counts,
           ["answered_500", "answered_other", "stored_during_outage", "acked_not_stored", "lost", "duplicated",
            "out_of_order", "unexpected", "mailbox_exit"])
    assert unavailable > 0 and counts["healthz_ok"] > 0 and counts["readyz_503"] > 0
