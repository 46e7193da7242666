"""Scenario 4b: PostgreSQL unreachable from the worker while executions run. A step that hits the dead database
is retried with backoff (every step is idempotent), so each execution still ends exactly once, completed, after
the database returns: none is stranded `pending` or `running`."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.chaos.checks import report, wait_for
from tests.chaos.executions import execute, status_of, streaming_now, tally, wait_until_all_ended
from tests.conftest import build_app
from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.tcp_proxy import CuttableProxy, through
from tests.support.worker import WorkerProcess

CHUNKS = [f"w{i} " for i in range(20)]
EXPECTED = "".join(CHUNKS)
PER_PHASE = 4  # executions started before the cut (some mid-stream when it comes) and during the outage


@pytest.mark.parametrize("outage_s", [pytest.param(3.0, id="quick"),
                                      pytest.param(20.0, id="20s", marks=pytest.mark.slow)])
def test_executions_ride_out_a_database_outage_in_the_worker(outage_s: float, redis_url: str, tmp_path: Path) -> None:
    with services.postgres_database(f"chaos_{services.run_token()}") as direct_url, \
            services.rabbitmq_vhost(f"chaos_{services.run_token()}") as vhost_url:
        app = build_app(direct_url, vhost_url, redis_url)  # migrates; the API itself keeps the direct connection
        api = new_workspace_client(app)
        agent = api.create_agent(llm={"provider": "scripted", "options": {"chunks": CHUNKS, "chunk_delay_ms": 40}})
        parts = urlsplit(direct_url)
        proxy = CuttableProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
        worker = WorkerProcess(database_url=through(direct_url, proxy.port), broker_url=vhost_url,
                               redis_url=redis_url, log_path=tmp_path / "worker.log", concurrency=4).start()
        executions: dict[str, tuple[str, str]] = {}
        try:
            for i in range(PER_PHASE):
                message = f"before the outage {i}"
                executions[execute(api, agent["id"], message)] = (message, EXPECTED)
            streaming = wait_for(lambda: [e for e in executions if streaming_now(redis_url, e, len(CHUNKS) - 4)],
                                 timeout_s=60, what="an execution streaming when the database goes")
            proxy.cut()
            cut_at = time.monotonic()
            for i in range(PER_PHASE):  # queued while the worker cannot reach the database
                message = f"during the outage {i}"
                executions[execute(api, agent["id"], message)] = (message, EXPECTED)
            stalled = wait_for(lambda: "OperationalError" in worker.log(), timeout_s=outage_s + 30,
                               what="a step to hit the dead database")
            time.sleep(max(0.0, outage_s - (time.monotonic() - cut_at)))  # the outage lasts outage_s
            during = {status_of(api, e) for e in executions}
            proxy.restore()
            wait_until_all_ended(api, redis_url, executions, timeout_s=120,
                                 what="every execution to end after the database returns")
        finally:
            worker.stop()
            proxy.close()
        result = tally(api, redis_url, executions)
        verify = api.get("/audit/verify").get_json()

    counts = {"outage_s": outage_s, "streaming_at_cut": len(streaming), "step_failed_on_db": int(bool(stalled)),
              "statuses_during_outage": sorted(during), **result.as_dict(),
              "audit_chain_broken": int(not verify["ok"])}
    report(f"database-outage-executions-{int(outage_s)}s", counts,
           ["stuck", "double_terminal", "double_audit", "bad_stream", "wrong_output", "wrong_usage",
            "audit_chain_broken"])
    assert result.ended_once == result.started == 2 * PER_PHASE
    assert result.statuses == {"completed": result.started}
