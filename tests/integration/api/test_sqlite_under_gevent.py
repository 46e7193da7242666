"""The default install (SQLite) under the real gunicorn gevent web: many requests at once, each of whose
transactions takes SQLite's write lock, must all be answered. SQLite's busy wait blocks the whole gevent
process, so a second greenlet waiting for a lock its own process holds froze both web workers until gunicorn's
timeout killed them (app/database.py: _ProcessWriters)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import build_app
from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.web import WebProcess

REQUESTS = 60


def test_concurrent_executes_and_streams_on_sqlite(tmp_path: Path, redis_url: str) -> None:
    database_url = f"sqlite:///{tmp_path / 'agent_runtime.db'}"
    with services.rabbitmq_vhost(f"sqlite_{services.run_token()}") as vhost_url:  # no worker: they stay pending
        app = build_app(database_url, vhost_url, redis_url)
        api = new_workspace_client(app)
        agent_id = api.create_agent()["id"]
        web = WebProcess(database_url=database_url, broker_url=vhost_url, redis_url=redis_url,
                         log_path=tmp_path / "web.log", workers=2).start()
        headers = {"Authorization": f"Bearer {api.key}"}
        try:
            with httpx.Client(base_url=web.url, headers=headers, timeout=25.0) as client:

                def execute_and_follow(index: int) -> tuple[int, int]:
                    posted = client.post(f"/agents/{agent_id}/execute", json={"message": f"m{index}"})
                    execution_id = posted.json()["execution_id"]
                    seen = client.get(f"/executions/{execution_id}")
                    with client.stream("GET", f"/executions/{execution_id}/events",
                                       headers={"Accept": "text/event-stream"}) as events:
                        next(events.iter_lines())  # the stream opened (the execution stays pending)
                    return posted.status_code, seen.status_code

                with ThreadPoolExecutor(max_workers=30) as pool:
                    answers = list(pool.map(execute_and_follow, range(REQUESTS)))
        finally:
            web.stop()
        assert answers == [(200, 200)] * REQUESTS
        assert "WORKER TIMEOUT" not in (tmp_path / "web.log").read_text()
