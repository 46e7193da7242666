"""Executions per second through the HTTP API (gunicorn + gevent, a real prefork worker) against the floor of a
bare three-task Celery chain on the same broker and worker in the same run; and first-delta latency.

A third phase measures the HTTP floor: a bare Flask view on the same gunicorn setup that only sends the bare chain
(bench/floor_app.py). The API cannot beat it, so floor / bare is the most any implementation could score, and
API / floor is what our own work per execution (auth, rows, audit, stream, leases) costs. Both load phases use
the same lean keep-alive client (bench/http_client.py), whose CPU is on the same box as what it measures.

    .venv/bin/python -m bench.execute [--executions 400] [--clients 16] [--latency-runs 200]

Everything runs on a fresh PostgreSQL database and RabbitMQ vhost (removed afterwards) and Redis DB 13.
Throughput counts from the first request to the last execution completed; latency is from sending
POST /agents/{id}/execute (stream true) to reading the first `delta` event, one execution at a time.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import chain
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app import create_app
from app.services import auth
from bench.bare_chain_tasks import DONE_KEY
from bench.http_client import KeepAlive
from bench.profile import recording
from bench.report import percentile, save, table
from tests.support import services
from tests.support.worker import ROOT, WorkerProcess

# Completion is polled through the partial index on unfinished executions (migration 0003): a count over every
# completed row would cost PostgreSQL more CPU per poll as the table grows, and be billed to the API.
ANY_UNFINISHED = "SELECT EXISTS (SELECT 1 FROM executions WHERE status IN ('pending', 'running'))"
COMPLETED = "SELECT count(*) FROM executions WHERE status = 'completed'"
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVICES = {"beam.smp": "rabbitmq", "redis-server": "redis"}


def cpu_by_role(roles: dict[str, int], database: str) -> dict[str, float]:
    """CPU seconds so far by role: our process groups (worker, web), this bench process, the PostgreSQL backends
    of this run's database, RabbitMQ and Redis (shared), and everything else on the box (other sessions)."""
    ticks = os.sysconf("SC_CLK_TCK")
    by_pgid = {pgid: role for role, pgid in roles.items()}
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, _, rest = (entry / "stat").read_text().rpartition(")")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = rest.split()
        name = head.split("(", 1)[1]
        if int(entry.name) == os.getpid():
            role = "bench client"
        elif int(fields[2]) in by_pgid:
            role = by_pgid[int(fields[2])]
        elif name == "postgres" or command.startswith("postgres:"):
            role = "postgres (this run)" if database in command else "other"
        else:
            role = SERVICES.get(name, "other")
        totals[role] = totals.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return totals


def cpu_per_item(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """Milliseconds of CPU per item by role ("other" loses processes that exited in between)."""
    spent = {role: (after[role] - before.get(role, 0.0)) * 1000 / count for role in after}
    return {role: round(value, 2) for role, value in sorted(spent.items(), key=lambda kv: -kv[1]) if value > 0}


def address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def ours(by_role: dict[str, float]) -> float:
    """CPU per item of everything the run owns (all roles but other sessions' processes)."""
    return round(sum(ms for role, ms in by_role.items() if role != "other"), 2)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)  # the API side polls PostgreSQL: keep the poll itself out of the measurement
    raise RuntimeError(f"timed out waiting for {what}")


def bare_chains(celery_app: Any, redis_client: redis.Redis, count: int, clients: int) -> float:
    """Chains per second: `count` bare chains sent from `clients` threads, until the last one finished."""
    redis_client.delete(DONE_KEY)
    sig = [celery_app.signature(name) for name in ("bench.first", "bench.second", "bench.last")]

    def send(index: int) -> None:
        chain(sig[0].clone(args=(str(index),)), sig[1].clone(), sig[2].clone(), app=celery_app).apply_async()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(count)))
    wait_until(lambda: int(redis_client.get(DONE_KEY) or 0) >= count, 120, "bare chains")
    return count / (time.perf_counter() - started)


def api_executions(base: str, tenants: list[tuple[str, str]], engine: Any, count: int, clients: int) -> float:
    """Executions per second through POST /execute (stream false), until the last one completed."""
    with engine.connect() as conn:
        before = conn.execute(text(COMPLETED)).scalar_one()
    local = threading.local()

    def send(index: int) -> None:
        key, agent_id = tenants[index % len(tenants)]
        if not hasattr(local, "client"):
            local.client = KeepAlive(*address(base))
        local.client.post(f"/agents/{agent_id}/execute", {"message": f"bench {index}"},
                          {"Authorization": f"Bearer {key}"})

    def drained() -> bool:
        with engine.connect() as conn:
            return not conn.execute(text(ANY_UNFINISHED)).scalar_one()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(count)))
    posted = time.perf_counter() - started
    wait_until(drained, 120, "API executions")
    elapsed = time.perf_counter() - started
    with engine.connect() as conn:
        completed = int(conn.execute(text(COMPLETED)).scalar_one()) - int(before)
    if completed != count:
        raise RuntimeError(f"{count} executions requested, {completed} completed")
    print(f"  API: {count} POSTs answered after {posted:.2f}s, all completed after {elapsed:.2f}s", flush=True)
    return count / elapsed


def http_floor(base: str, redis_client: redis.Redis, count: int, clients: int) -> float:
    """Requests per second through a bare Flask view that only sends the bare chain (bench/floor_app.py), until
    the last chain finished: the most any HTTP API on this web server and broker can do."""
    redis_client.delete(DONE_KEY)
    local = threading.local()

    def send(index: int) -> None:
        if not hasattr(local, "client"):
            local.client = KeepAlive(*address(base))
        local.client.post(f"/floor/{index}")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(count)))
    wait_until(lambda: int(redis_client.get(DONE_KEY) or 0) >= count, 120, "floor chains")
    return count / (time.perf_counter() - started)


def first_delta_latencies(base: str, key: str, agent_id: str, runs: int) -> list[float]:
    """Milliseconds from sending POST (stream true) to reading the first delta event, sequentially."""
    samples: list[float] = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for index in range(runs):
            started = time.perf_counter()
            with client.stream("POST", f"/agents/{agent_id}/execute",
                               json={"message": f"latency {index}", "stream": True}) as response:
                lines = response.iter_lines()
                for line in lines:
                    if line == "event: delta":
                        samples.append((time.perf_counter() - started) * 1000)
                        break
                for _line in lines:
                    pass  # drain to the terminal event, so runs do not overlap
    return samples


def make_tenant(base: str, app: Any, name: str) -> tuple[str, str]:
    """A workspace key and a scripted agent in it."""
    with app.app_context():
        _key_row, key = auth.create_key(name)
    agent = httpx.post(f"{base}/agents", headers={"Authorization": f"Bearer {key}"},
                       json={"name": "bench", "maturity_level": "AUTONOMOUS",
                             "llm": {"provider": "scripted", "options": {"text": "one two three four"}}})
    return key, str(agent.raise_for_status().json()["id"])


def migrated_app(database_url: str, broker_url: str, redis_url: str) -> tuple[dict[str, str], Any]:
    """The app on a bench's fresh services, schema migrated; its URLs also exported for the processes it starts."""
    env = {"DATABASE_URL": database_url, "BROKER_URL": broker_url, "REDIS_URL": redis_url}
    os.environ.update(env)
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "BROKER_URL": broker_url, "REDIS_URL": redis_url})
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
    return env, app


def run(executions: int, clients: int, latency_runs: int, worker_concurrency: int, rounds: int,
        workspaces: int, profile_dir: Path | None = None, gil: bool = False) -> dict[str, Any]:
    token = services.run_token()
    # Not the tests' Redis DB: a concurrent test session flushes that one. Keys here are per execution.
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    with (
        services.postgres_database(f"bench_{token}") as database_url,
        services.rabbitmq_vhost(f"bench_{token}") as broker_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        env, app = migrated_app(database_url, broker_url, redis_url)
        worker = WorkerProcess(database_url=database_url, broker_url=broker_url, redis_url=redis_url,
                               log_path=Path(tmp) / "worker.log", concurrency=worker_concurrency,
                               include=["bench.bare_chain_tasks"]).start()
        port, floor_port = free_port(), free_port()
        web, floor_web = gunicorn("wsgi:app", port, env), gunicorn("bench.floor_app:app", floor_port, env)
        base, floor_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{floor_port}"
        try:
            wait_until(lambda: serving(base) and serving(floor_base), 30, "gunicorn")
            tenants = [make_tenant(base, app, f"bench-{index}") for index in range(workspaces)]
            key, agent_id = tenants[0]
            engine = create_engine(database_url)
            redis_client = redis.Redis.from_url(redis_url)
            celery_app = app.extensions["celery"]
            # Warm up both paths (connections, pools, imports) before measuring.
            bare_chains(celery_app, redis_client, 50, clients)
            http_floor(floor_base, redis_client, 50, clients)
            api_executions(base, tenants, engine, 50, clients)
            rows: list[dict[str, Any]] = []
            assert worker.process is not None
            roles = {"worker": worker.process.pid, "web": web.pid, "floor web": floor_web.pid}
            database = database_url.rsplit("/", 1)[1]
            for index in range(rounds):
                spy = profile_dir if index == rounds - 1 else None  # py-spy records the last round only
                box = cpu_by_role(roles, database)
                with recording(worker.process.pid, spy / "worker-bare.txt" if spy else None, gil=gil):
                    bare = bare_chains(celery_app, redis_client, executions, clients)
                bare_box = cpu_per_item(box, box := cpu_by_role(roles, database), executions)
                floor = http_floor(floor_base, redis_client, executions, clients)
                floor_box = cpu_per_item(box, box := cpu_by_role(roles, database), executions)
                with (recording(worker.process.pid, spy / "worker-api.txt" if spy else None, gil=gil),
                      recording(web.pid, spy / "web-api.txt" if spy else None, gil=gil)):
                    api = api_executions(base, tenants, engine, executions, clients)
                api_box = cpu_per_item(box, cpu_by_role(roles, database), executions)
                for name, spent in (("bare chain", bare_box), ("HTTP floor", floor_box), ("API execution", api_box)):
                    print(f"  round {index + 1} cpu ms per {name}: {spent}", flush=True)
                rows.append({"round": index + 1, "bare_chains_per_s": bare, "http_floor_per_s": floor,
                             "api_executions_per_s": api, "ratio": api / bare, "floor_ratio": floor / bare,
                             "bare_cpu_ms_each": ours(bare_box), "floor_cpu_ms_each": ours(floor_box),
                             "api_cpu_ms_each": ours(api_box), "bare_cpu_by_role_ms": bare_box,
                             "floor_cpu_by_role_ms": floor_box, "api_cpu_by_role_ms": api_box})
            latencies = first_delta_latencies(base, key, agent_id, latency_runs)
        finally:
            for server in (web, floor_web):
                server.terminate()
                server.wait(timeout=20)
            worker.stop()
    best = max(rows, key=lambda row: row["ratio"])
    median_row = sorted(rows, key=lambda row: row["ratio"])[len(rows) // 2]
    return {
        "rows": rows,
        "ratio_median": median_row["ratio"],
        "floor_ratio_median": sorted(row["floor_ratio"] for row in rows)[len(rows) // 2],
        "ratio_best": best["ratio"],
        "first_delta_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                           "min": min(latencies), "max": max(latencies), "runs": len(latencies)},
        "setup": {"executions_per_round": executions, "client_threads": clients,
                  "worker": f"prefork -c {worker_concurrency}", "workspaces": workspaces, "web": "gunicorn gevent x2",
                  "client": "http.client keep-alive, one connection per thread",
                  "provider": "scripted, no delay, 4 words"},
    }


def gunicorn(target: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The web as Procfile runs it (gevent, 2 workers), in its own process group for the CPU accounting."""
    return subprocess.Popen(
        [GUNICORN, "--worker-class", "gevent", "--workers", "2", "--worker-connections", "2000",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning", target],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def serving(base: str) -> bool:
    """The web at `base` answers /healthz (for waiting on a freshly started gunicorn)."""
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--worker-concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workspaces", type=int, default=1,
                        help="spread executions over N workspaces (audit chains are serialized per workspace)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy record the worker and gunicorn during the last round into DIR (raw stacks; "
                             "summarize with python -m bench.profile); its CPU includes py-spy's pauses")
    parser.add_argument("--profile-gil", action="store_true",
                        help="with --profile: keep only samples holding the GIL (Python CPU, not driver waits)")
    args = parser.parse_args()
    result = run(args.executions, args.clients, args.latency_runs, args.worker_concurrency, args.rounds,
                 args.workspaces, args.profile, args.profile_gil)
    print(table(result["rows"], ["round", "bare_chains_per_s", "http_floor_per_s", "api_executions_per_s", "ratio",
                                 "floor_ratio", "bare_cpu_ms_each", "floor_cpu_ms_each", "api_cpu_ms_each"]))
    print("(cpu ms each: every process of the run on the box, PostgreSQL, RabbitMQ, Redis and the client included)")
    latency = result["first_delta_ms"]
    print(f"\nratio (median of rounds): {result['ratio_median']:.2f}   target >= 0.5; "
          f"the HTTP floor scores {result['floor_ratio_median']:.2f}")
    print(f"first delta: p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms "
          f"(min {latency['min']:.1f}, max {latency['max']:.1f}, n={latency['runs']})   target p50 < 50 ms")
    bars = {"bare chain": result["rows"][-1]["bare_chains_per_s"], "API": result["rows"][-1]["api_executions_per_s"]}
    print(f"\nwritten: {save('execute', result, bars, ylabel='per second')}")


if __name__ == "__main__":
    main()
