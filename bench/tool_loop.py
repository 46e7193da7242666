"""A 3-turn tool loop (two webhook calls, then the answer) against a single-turn execution, in the same run:
executions per second through the HTTP API, and the latency each extra turn adds.

    .venv/bin/python -m bench.tool_loop [--executions 100] [--clients 8] [--latency-runs 30]

A fresh PostgreSQL database and RabbitMQ vhost (removed afterwards), Redis DB 13, a real prefork worker, gunicorn
(gevent) and a webhook receiver on loopback that answers at once. Throughput counts from the first POST to the
last execution completed; latency is POST -> completed seen by polling GET, one execution at a time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app import create_app
from app.services import auth
from bench.execute import free_port, gunicorn, serving, wait_until
from bench.report import median, percentile, save, table
from tests.support import services
from tests.support.webhook_receiver import WebhookReceiver
from tests.support.worker import ROOT, WorkerProcess

UNFINISHED = ("SELECT count(*) FROM executions WHERE agent_id = :agent AND status NOT IN "
              "('completed', 'failed', 'cancelled', 'timed_out', 'denied')")
COMPLETED = "SELECT count(*) FROM executions WHERE agent_id = :agent AND status = 'completed'"


def make_agent(base: str, key: str, receiver: WebhookReceiver, turns: int) -> str:
    """An AUTONOMOUS scripted agent whose first turns-1 turns each call the webhook tool once."""
    tool = {"name": "lookup", "action": "read", "kind": "webhook", "url": receiver.url, "timeout_s": 10}
    script: list[dict[str, Any]] = [{"tool_calls": [{"name": "lookup", "arguments": {"turn": index}}]}
                                    for index in range(turns - 1)]
    script.append({"text": "one two three four"})
    body = {"name": f"bench-{turns}", "maturity_level": "AUTONOMOUS", "tools": [tool] if turns > 1 else [],
            "llm": {"provider": "scripted", "options": {"turns": script}}}
    response = httpx.post(f"{base}/agents", headers={"Authorization": f"Bearer {key}"}, json=body)
    return str(response.raise_for_status().json()["id"])


def throughput(base: str, key: str, agent_id: str, engine: Any, count: int, clients: int) -> float:
    """Executions per second of one agent, from the first POST to the last completed."""
    with engine.connect() as conn:
        before = int(conn.execute(text(COMPLETED), {"agent": agent_id}).scalar_one())
    headers = {"Authorization": f"Bearer {key}"}

    def send(index: int) -> None:
        httpx.post(f"{base}/agents/{agent_id}/execute", headers=headers,
                   json={"message": f"bench {index}"}, timeout=30).raise_for_status()

    def drained() -> bool:
        with engine.connect() as conn:
            return int(conn.execute(text(UNFINISHED), {"agent": agent_id}).scalar_one()) == 0

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(count)))
    wait_until(drained, 300, "executions")
    elapsed = time.perf_counter() - started
    with engine.connect() as conn:
        done = int(conn.execute(text(COMPLETED), {"agent": agent_id}).scalar_one()) - before
    if done != count:
        raise RuntimeError(f"{count} executions requested, {done} completed")
    return count / elapsed


def latencies(base: str, key: str, agent_id: str, runs: int) -> list[float]:
    """POST -> completed, milliseconds, one at a time."""
    out: list[float] = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for index in range(runs):
            started = time.perf_counter()
            execution_id = client.post(f"/agents/{agent_id}/execute",
                                       json={"message": f"latency {index}"}).raise_for_status().json()["execution_id"]
            while client.get(f"/executions/{execution_id}").json()["status"] != "completed":
                time.sleep(0.005)
            out.append((time.perf_counter() - started) * 1000)
    return out


def run(executions: int, clients: int, latency_runs: int, worker_concurrency: int, rounds: int) -> dict[str, Any]:
    token = services.run_token()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    with (
        services.postgres_database(f"bench_{token}") as database_url,
        services.rabbitmq_vhost(f"bench_{token}") as broker_url,
        tempfile.TemporaryDirectory() as tmp,
        WebhookReceiver() as receiver,
    ):
        env = {"DATABASE_URL": database_url, "BROKER_URL": broker_url, "REDIS_URL": redis_url,
               "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}
        os.environ.update(env)
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "BROKER_URL": broker_url,
                          "REDIS_URL": redis_url})
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"))
            _row, key = auth.create_key("bench-tools")
        worker = WorkerProcess(database_url=database_url, broker_url=broker_url, redis_url=redis_url,
                               log_path=Path(tmp) / "worker.log", concurrency=worker_concurrency).start()
        port = free_port()
        web = gunicorn("wsgi:app", port, env)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: serving(base), 30, "gunicorn")
            single, loop = make_agent(base, key, receiver, 1), make_agent(base, key, receiver, 3)
            engine = create_engine(database_url)
            throughput(base, key, single, engine, 20, clients)  # warm up both paths
            throughput(base, key, loop, engine, 20, clients)
            rows: list[dict[str, Any]] = []
            for index in range(rounds):
                one = throughput(base, key, single, engine, executions, clients)
                three = throughput(base, key, loop, engine, executions, clients)
                rows.append({"round": index + 1, "single_turn_per_s": one, "three_turn_loop_per_s": three,
                             "ratio": three / one})
                print(f"  round {index + 1}: single {one:.1f}/s, 3-turn loop {three:.1f}/s", flush=True)
            single_ms = latencies(base, key, single, latency_runs)
            loop_ms = latencies(base, key, loop, latency_runs)
        finally:
            web.terminate()
            web.wait(timeout=20)
            worker.stop()
    added = (median(loop_ms) - median(single_ms)) / 2
    return {
        "rows": rows,
        "ratio_median": sorted(row["ratio"] for row in rows)[len(rows) // 2],
        "latency_ms": {"single_p50": median(single_ms), "single_p99": percentile(single_ms, 99),
                       "loop_p50": median(loop_ms), "loop_p99": percentile(loop_ms, 99), "runs": latency_runs},
        "added_ms_per_turn_p50": added,
        "setup": {"executions_per_round": executions, "client_threads": clients,
                  "worker": f"prefork -c {worker_concurrency}", "web": "gunicorn gevent x2",
                  "loop": "3 LLM turns (scripted, no delay), 2 webhook calls to a loopback receiver",
                  "machine": "2 cores shared with other sessions: figures are noisy"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--worker-concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = run(args.executions, args.clients, args.latency_runs, args.worker_concurrency, args.rounds)
    print(table(result["rows"], ["round", "single_turn_per_s", "three_turn_loop_per_s", "ratio"]))
    latency = result["latency_ms"]
    print(f"\n3-turn loop / single turn (median of rounds): {result['ratio_median']:.2f}")
    print(f"latency p50: single {latency['single_p50']:.0f} ms, 3-turn loop {latency['loop_p50']:.0f} ms "
          f"-> {result['added_ms_per_turn_p50']:.0f} ms added per turn (p99 {latency['single_p99']:.0f} / "
          f"{latency['loop_p99']:.0f} ms, n={latency['runs']})")
    bars = {"single turn": result["rows"][-1]["single_turn_per_s"],
            "3-turn loop": result["rows"][-1]["three_turn_loop_per_s"]}
    print(f"\nwritten: {save('tool_loop', result, bars, ylabel='executions per second')}")


if __name__ == "__main__":
    main()
