"""An execution's own Python CPU by phase, in one process: no Celery, no gunicorn, no broker.

    .venv/bin/python -m bench.steps [--executions 200] [--batches 4] [--threads 1]

POST /agents/{id}/execute through Flask's test client (the chain's send stubbed out, so no broker), then the three
steps called as the tasks call them (governance, llm with the scripted provider, persist), then a follower's
GET /executions/{id}/events (a replay, the execution having ended). CPU is this process's (time.process_time) per
execution and phase, the median over batches after a warm-up batch; PostgreSQL's and Redis's own CPU is not in it.
Much less noisy than bench.execute on a shared box (+-5% between runs), so it suits A/B runs of a change to what
an execution does; Celery's own cost per task and the web server's are what it leaves out.

--threads N runs each batch's executions in N threads at once (as the threads-pool LLM worker runs its steps): the
phases are then each thread's own CPU (time.thread_time), and "process" is the whole process's CPU per execution,
so the difference is what the threads cost each other (the GIL's handoffs, the pools' locks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask_migrate import upgrade

from app import create_app
from app.services import auth
from app.services.executions import governance_step, llm_step, persist_step
from app.services.executions.requests import ENQUEUE_EXTENSION
from tests.support import services
from tests.support.worker import ROOT

PHASES = ("post", "governance", "llm", "persist", "get")


def run(executions: int, batches: int, threads: int = 1) -> dict[str, list[float]]:
    """ms of CPU per execution, by phase (and for the whole process), for each measured batch."""
    token = services.run_token()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")  # keys are per execution
    with services.postgres_database(f"steps_{token}") as database_url:
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "BROKER_URL": "amqp://guest:guest@127.0.0.1//",
                          "REDIS_URL": redis_url, "DATABASE_POOL_SIZE": threads, "DATABASE_MAX_OVERFLOW": threads})
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"))
            _row, key = auth.create_key(f"steps-{token}")
        app.extensions[ENQUEUE_EXTENSION] = lambda execution_id, task_ids: None
        headers = {"Authorization": f"Bearer {key}"}
        agent = app.test_client().post("/agents", headers=headers, json={
            "name": "steps", "maturity_level": "AUTONOMOUS",
            "llm": {"provider": "scripted", "options": {"text": "one two three four"}}}).get_json()
        clock = time.process_time if threads == 1 else time.thread_time
        local = threading.local()

        def one(label: str) -> list[float]:
            """One execution through every phase; the CPU of each."""
            client = getattr(local, "client", None) or app.test_client()
            local.client = client
            marks = [clock()]
            answer = client.post(f"/agents/{agent['id']}/execute", headers=headers, json={"message": label})
            assert answer.status_code == 200, answer.get_data(as_text=True)
            execution_id = answer.get_json()["execution_id"]
            marks.append(clock())
            step: Any = execution_id
            for function in (governance_step.run, llm_step.run, persist_step.run):
                with app.app_context():
                    step = function(step)
                marks.append(clock())
            assert step.get("status") == "completed", step
            body = client.get(f"/executions/{execution_id}/events", headers=headers).get_data(as_text=True)
            assert "event: completed" in body
            marks.append(clock())
            return [after - before for before, after in zip(marks[:-1], marks[1:], strict=True)]

        results: dict[str, list[float]] = {phase: [] for phase in (*PHASES, "process")}
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for batch in range(batches + 1):  # the first batch warms up
                started = time.process_time()
                spent = [sum(phase) for phase in zip(*pool.map(one, [f"steps {batch} {index}"
                                                                     for index in range(executions)]), strict=True)]
                whole = time.process_time() - started
                if batch:
                    for phase, value in zip(PHASES, spent, strict=True):
                        results[phase].append(value * 1000 / executions)
                    results["process"].append(whole * 1000 / executions)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=200)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    results = run(args.executions, args.batches, args.threads)
    medians = {phase: round(statistics.median(values), 3) for phase, values in results.items()}
    print(f"ms of CPU per execution (median of batches, {args.threads} thread(s)):", medians,
          "total of the phases", round(sum(value for phase, value in medians.items() if phase != "process"), 3))
    print("batches:", {phase: [round(value, 2) for value in values] for phase, values in results.items()})


if __name__ == "__main__":
    main()
