"""LLM streams in flight on one worker host: N executions submitted through the API as fast as it takes them, each
LLM call streaming over real HTTP from a local OpenAI-compatible server (bench/llm_server.py) for about 10 s.

    .venv/bin/python -m bench.inflight [--sizes 100,1000] [--chunks 20] [--seconds 10] [--llm-concurrency 1000]

The stack runs as the Procfile runs it: gunicorn gevent x2 (web), a prefork worker -c 4 on `executions`
(governance, persistence), a threads worker on `executions.llm` (the LLM step), on a fresh PostgreSQL database and
RabbitMQ vhost. A client process (asyncio, raw HTTP) POSTs the executions over 16 keep-alive connections and follows
each one's GET /executions/{id}/events from the moment its POST is answered; every delta's text carries its sequence
number and the time the server wrote it, so the follower checks that every delta arrived once and in order and
measures each delta's lag from the provider to the client.

Printed per size: peak LLM streams in flight (counted at the server), wall time against the ideal (time to submit
plus one call), first-delta lag p50/p99 (server's first chunk -> the follower) and POST -> first delta, CPU per delta
by role, peak RSS per process by role, and peak PostgreSQL connections of the run's database (and how many were
idle inside a transaction). The box is shared: the load average is printed beside each size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from app.services import auth
from bench.execute import cpu_by_role, free_port, gunicorn, migrated_app, serving, wait_until
from bench.profile import recording
from bench.report import percentile, save, table
from bench.sse_streams import TERMINAL, open_events, raise_nofile
from tests.support import services
from tests.support.processes import stop_group
from tests.support.worker import GOVERNANCE_QUEUES, ROOT, WorkerProcess, llm_worker

SUBMITTERS = 16
HARNESS = ("llm server", "bench clients", "bench client")  # what a real deployment would not run on its box
# Per process role (each connects with its own application_name): connections, and sessions idle inside a
# transaction for over a second (a step holding a transaction while it waits on the network would show here).
CONNECTIONS = ("SELECT application_name, count(*), count(*) FILTER (WHERE state = 'idle in transaction' "
               "AND now() - state_change > interval '1 second') FROM pg_stat_activity "
               "WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY application_name")


# --- client process ----------------------------------------------------------------------------------------


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str, body: bytes) -> bytes:
    """One keep-alive HTTP/1.1 request; the answer's body (Content-Length)."""
    writer.write(head.encode() + body)
    await writer.drain()
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    payload = await reader.readexactly(length)
    if b" 503 " in status:
        return b""  # unavailable (a pool was busy): the caller retries, as the API asks
    if b" 200 " not in status:
        raise RuntimeError(f"POST answered {status!r}: {payload[:300]!r}")
    return payload


async def _follow(host: str, port: int, key: str, execution_id: str, posted_at: float, out: dict[str, Any]) -> None:
    """Read the execution's events to its terminal event; record every delta's lag and check the order."""
    ids: list[int] = []
    seqs: list[int] = []
    lags: list[float] = []
    texts: list[str] = []
    first_recv = 0.0
    terminal, output = "", None
    async for event_id, name, raw, now in open_events(host, port, key, execution_id):
        ids.append(event_id)
        data = json.loads(raw)
        if name == "delta":
            seq, _, sent = data["text"].strip().partition("@")
            seqs.append(int(seq))
            lags.append((now - float(sent)) * 1000)
            texts.append(data["text"])
            first_recv = first_recv or now
        elif name in TERMINAL:
            terminal, output = name, data.get("output")
            if name != "completed":
                out["errors"].append((data.get("error") or {}).get("message") or name)
    out["executions"].append({
        "id": execution_id, "terminal": terminal, "deltas": len(seqs), "ended_at": time.time(),
        "in_order": ids == list(range(1, len(ids) + 1)) and seqs == list(range(len(seqs))),
        "output_matches": output == "".join(texts),
        "first_lag_ms": lags[0] if lags else None,
        "post_to_first_ms": (first_recv - posted_at) * 1000 if first_recv else None,
    })
    out["lags"].extend(lags)


async def _clients(host: str, port: int, tenants: list[tuple[str, str]], count: int) -> dict[str, Any]:
    out: dict[str, Any] = {"executions": [], "lags": [], "errors": [], "unavailable": 0}
    followers: list[asyncio.Task[None]] = []
    next_index = iter(range(count))
    # timeout_s above the default 120 s: with --hold the first calls wait while the rest are submitted.
    body_of = {i: json.dumps({"message": f"inflight {i}", "timeout_s": 900}).encode() for i in range(count)}

    async def submit() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        for index in next_index:
            key, agent_id = tenants[index % len(tenants)]
            body = body_of[index]
            head = (f"POST /agents/{agent_id}/execute HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
            posted_at = time.time()
            while not (payload := await _request(reader, writer, head, body)):
                out["unavailable"] += 1
                await asyncio.sleep(0.5)
            answer = json.loads(payload)
            followers.append(asyncio.create_task(_follow(host, port, key, answer["execution_id"], posted_at, out)))
        writer.close()

    out["started_at"] = time.time()
    await asyncio.gather(*(submit() for _ in range(SUBMITTERS)))
    out["submitted_at"] = time.time()
    # Bounded: executions that never end are counted as stuck instead of hanging the bench.
    _done, stuck = await asyncio.wait(followers, timeout=max(120.0, 6 * (time.time() - out["started_at"])))
    for task in stuck:
        task.cancel()
    out["stuck"] = len(stuck)
    out["ended_at"] = max([item["ended_at"] for item in out["executions"]] or [time.time()])
    out["cpu_s"] = time.process_time()
    return out


def client_main(port: int, tenants_file: Path, count: int, out_file: Path) -> None:
    print("started", flush=True)
    tenants = [(key, agent_id) for key, agent_id in json.loads(tenants_file.read_text())]
    out_file.write_text(json.dumps(asyncio.run(_clients("127.0.0.1", port, tenants, count))))


# --- the orchestrating process -----------------------------------------------------------------------------


class Sampler:
    """Every 0.25 s: RSS of every process of each role, the database's connections, the server's stream count."""

    def __init__(self, roles: dict[str, int], database_url: str, llm_base: str) -> None:
        self.roles = roles
        self.engine = create_engine(database_url)
        self.llm_base = llm_base
        self.rss_mb: dict[str, float] = {}
        self.connections = 0
        self.by_role: dict[str, int] = {}
        self.idle_in_transaction: dict[str, int] = {}
        self.in_flight_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.engine.dispose()

    def _run(self) -> None:
        by_pgid = {pgid: role for role, pgid in self.roles.items()}
        while not self._stop.wait(0.25):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    stat = (entry / "stat").read_text().rpartition(")")[2].split()
                    role = by_pgid.get(int(stat[2]))
                    if role is None:
                        continue
                    rss = int(stat[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
                except (OSError, IndexError, ValueError):
                    continue
                self.rss_mb[role] = max(self.rss_mb.get(role, 0.0), rss)
            if self.engine.dialect.name != "postgresql":
                continue
            with self.engine.connect() as conn:
                found = conn.execute(text(CONNECTIONS)).all()
            self.connections = max(self.connections, sum(int(row[1]) for row in found))
            for name, count, idle_tx in found:
                self.by_role[name] = max(self.by_role.get(name, 0), int(count))
                self.idle_in_transaction[name] = max(self.idle_in_transaction.get(name, 0), int(idle_tx))


def new_agent(base: str, app: Any, name: str, llm_base_url: str, model: str = "bench") -> tuple[str, str]:
    """A workspace key and an AUTONOMOUS agent using provider openai against the bench's server."""
    with app.app_context():
        _row, key = auth.create_key(name)
    headers = {"Authorization": f"Bearer {key}"}
    credential = httpx.post(f"{base}/credentials", headers=headers,
                            json={"provider": "openai", "api_key": "sk-bench", "base_url": llm_base_url})
    agent = httpx.post(f"{base}/agents", headers=headers, json={
        "name": name, "maturity_level": "AUTONOMOUS",
        "llm": {"provider": "openai", "model": model, "credential_id": credential.raise_for_status().json()["id"]}})
    return key, str(agent.raise_for_status().json()["id"])


# One client for the stats polls: httpx.get() builds a client each time, loading the CA bundle (28 ms of CPU), and
# the poll runs ten times a second: 28% of a core taken from the stack under test on a 2-core box.
_STATS = httpx.Client(timeout=5)


def llm_stats(llm_base: str) -> dict[str, int]:
    stats: dict[str, int] = _STATS.get(f"{llm_base}/stats").json()
    return stats


def one_size(app: Any, web_port: int, llm_base: str, roles: dict[str, int], database_url: str, size: int,
             chunks: int, seconds: float, workspaces: int, hold: bool = False) -> dict[str, Any]:
    model = f"hold-{size}" if hold else "bench"
    tenants = [new_agent(f"http://127.0.0.1:{web_port}", app, f"inflight-{size}-{index}-{time.time_ns()}",
                         f"{llm_base}/v1", model) for index in range(workspaces)]
    database = database_url.rsplit("/", 1)[1]
    before_stats = llm_stats(llm_base)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out_file, tenants_file = Path(tmp) / "out.json", Path(tmp) / "tenants.json"
        tenants_file.write_text(json.dumps(tenants))
        client = subprocess.Popen(
            [sys.executable, "-m", "bench.inflight", "--client", "--port", str(web_port), "--tenants",
             str(tenants_file), "--count", str(size), "--out", str(out_file)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert client.stdout is not None
        client.stdout.readline()
        cpu_before = cpu_by_role({**roles, "bench clients": client.pid}, database)
        with Sampler({**roles, "bench clients": client.pid}, database_url, llm_base) as sampler:
            peak = 0
            while client.poll() is None:
                peak = max(peak, llm_stats(llm_base)["in_flight"])
                time.sleep(0.1)
        cpu_after = cpu_by_role({**roles, "bench clients": client.pid}, database)
        if client.returncode != 0:
            raise RuntimeError(f"client process exited with {client.returncode}")
        result = json.loads(out_file.read_text())
    stats = llm_stats(llm_base)
    executions = result["executions"]
    deltas = sum(item["deltas"] for item in executions)
    cpu_after["bench clients"] = result["cpu_s"]  # it has exited: its own count of CPU seconds
    cpu_us = {role: round((cpu_after[role] - cpu_before.get(role, 0.0)) * 1e6 / max(1, deltas), 1)
              for role in cpu_after if role != "other" and cpu_after[role] > cpu_before.get(role, 0.0)}
    submit_s = result["submitted_at"] - result["started_at"]
    # 90% of N streams at chunks/seconds deltas/s each, at this run's box CPU per delta (per-execution work included):
    # the cores the bar needs, and how many of them the harness (provider server, followers) takes by itself.
    need = 0.9 * size * chunks / seconds / 1e6
    harness_us = sum(cpu_us.get(role, 0.0) for role in HARNESS)
    wall_s = result["ended_at"] - result["started_at"]
    first = [item["first_lag_ms"] for item in executions if item["first_lag_ms"] is not None]
    post_first = [item["post_to_first_ms"] for item in executions if item["post_to_first_ms"] is not None]
    return {
        "executions": size,
        "mode": "hold" if hold else "paced",
        "completed": sum(item["terminal"] == "completed" for item in executions),
        "stuck": result["stuck"],
        "post_503": result["unavailable"],
        "not_completed": dict(Counter(f"{item['terminal']}" for item in executions if item["terminal"] != "completed")),
        "errors": dict(Counter(result["errors"])),
        "in_order": sum(item["in_order"] and item["deltas"] == chunks and item["output_matches"]
                        for item in executions),
        "deltas": deltas,
        # The server's own peak since it started, and this size's polled peak: the same unless sizes overlapped.
        "peak_in_flight": max(peak, stats["peak"] if before_stats["peak"] < size else 0),
        "wall_s": round(wall_s, 2),
        "ideal_s": round(submit_s + seconds, 2),
        "submit_s": round(submit_s, 2),
        "wall_over_ideal": round(wall_s / (submit_s + seconds), 3),
        "first_delta_p50_ms": round(percentile(first, 50), 1),
        "first_delta_p99_ms": round(percentile(first, 99), 1),
        "post_to_first_delta_p50_ms": round(percentile(post_first, 50), 1),
        "post_to_first_delta_p99_ms": round(percentile(post_first, 99), 1),
        "delta_lag_p99_ms": round(percentile(result["lags"], 99), 1),
        "cpu_us_per_delta": cpu_us,
        "cores_for_90pct": round(need * sum(cpu_us.values()), 2),
        "cores_for_90pct_harness_only": round(need * harness_us, 2),
        "cores": os.cpu_count(),
        "peak_rss_mb": {role: round(mb, 1) for role, mb in sampler.rss_mb.items()},
        "pg_connections_peak": sampler.connections,
        "pg_connections_peak_by_role": sampler.by_role,
        "pg_idle_in_transaction_1s_peak": sampler.idle_in_transaction,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def process_env(role: str, database_url: str) -> dict[str, str]:
    """What the Procfile sets per process (pool sizes; keep in step with it), and a DATABASE_URL naming the role
    in pg_stat_activity."""
    pools = {"web": {"DATABASE_POOL_SIZE": "5", "DATABASE_MAX_OVERFLOW": "5"},
             "worker": {"DATABASE_POOL_SIZE": "1", "DATABASE_MAX_OVERFLOW": "1"},
             "worker-llm": {"DATABASE_POOL_SIZE": "8", "DATABASE_MAX_OVERFLOW": "4"}}.get(role, {})
    if database_url.startswith("sqlite"):
        return {**pools, "DATABASE_URL": database_url}
    return {**pools, "DATABASE_URL": f"{database_url}?application_name={role}"}


@contextmanager
def database(sqlite: bool, token: str) -> Iterator[str]:
    """A fresh PostgreSQL database, or with --sqlite a fresh SQLite file (the default install)."""
    if not sqlite:
        with services.postgres_database(f"bench_{token}") as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{tmp}/bench.db"


def run(sizes: list[int], chunks: int, seconds: float, llm_concurrency: int, stop_poll_s: float | None,
        profile_dir: Path | None, sqlite: bool = False, workspaces: int = 10, hold: bool = False,
        worker_pool: str = "prefork", worker_concurrency: int = 4, extra_env: dict[str, str] | None = None,
        ) -> dict[str, Any]:
    raise_nofile()
    token = services.run_token()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    rows: list[dict[str, Any]] = []
    with (
        database(sqlite, token) as database_url,
        services.rabbitmq_vhost(f"bench_{token}") as broker_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        env, app = migrated_app(database_url, broker_url, redis_url)
        env = {**env, **(extra_env or {})}
        llm_server = subprocess.Popen(
            [sys.executable, "-m", "bench.llm_server", "--chunks", str(chunks), "--seconds", str(seconds)],
            cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
        assert llm_server.stdout is not None
        llm_base = f"http://127.0.0.1:{llm_server.stdout.readline().split()[1].decode()}"
        worker = WorkerProcess(database_url=database_url, broker_url=broker_url, redis_url=redis_url,
                               log_path=Path(tmp) / "worker.log", concurrency=worker_concurrency, pool=worker_pool,
                               queues=GOVERNANCE_QUEUES,
                               extra_env={**process_env("worker", database_url),
                                          "EXECUTION_SWEEP_INTERVAL_S": "0", **(extra_env or {})}).start()
        llm_env = {**process_env("worker-llm", database_url), "EXECUTION_SWEEP_INTERVAL_S": "0",
                   **(extra_env or {})}
        if stop_poll_s is not None:
            llm_env["LLM_STOP_POLL_S"] = str(stop_poll_s)
        llm = llm_worker(database_url=database_url, broker_url=broker_url, redis_url=redis_url,
                         log_path=Path(tmp) / "llm-worker.log", concurrency=llm_concurrency,
                         extra_env=llm_env).start(timeout=120)
        port = free_port()
        web = gunicorn("wsgi:app", port, {**env, **process_env("web", database_url)})
        try:
            wait_until(lambda: serving(f"http://127.0.0.1:{port}"), 30, "gunicorn")
            assert worker.process is not None and llm.process is not None
            roles = {"worker (prefork)": worker.process.pid, "worker-llm (threads)": llm.process.pid,
                     "web": web.pid, "llm server": llm_server.pid}
            one_size(app, port, llm_base, roles, database_url, min(sizes[0], 50), chunks, min(seconds, 2.0), 1)
            for size in sizes:
                def spy(role: str, size: int = size) -> Path | None:
                    return profile_dir / f"{role}-{size}.txt" if profile_dir else None

                # The LLM worker's 1,000 threads at 20 Hz (py-spy pauses them all per sample); the others at 100.
                with (recording(llm.process.pid, spy("worker-llm"), rate=20),
                      recording(web.pid, spy("web"), rate=100), recording(worker.process.pid, spy("worker"), rate=100)):
                    row = one_size(app, port, llm_base, roles, database_url, size, chunks, seconds, workspaces,
                                   hold)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            stop_group(web, 20)  # SIGTERM, then SIGKILL: open SSE streams can outlast a graceful stop
            llm.stop()
            worker.stop()
            stop_group(llm_server, 10)
    return {"rows": rows, "setup": {
        "llm_worker": f"threads -c {llm_concurrency}, LLM_STOP_POLL_S={stop_poll_s or 'worker default'}",
        "worker": f"{worker_pool} -c {worker_concurrency} (governance, persist)", "env": extra_env or {},
        "web": "gunicorn gevent x2",
        "provider": f"openai over HTTP to bench/llm_server.py, {chunks} chunks over {seconds} s",
        "submitters": SUBMITTERS, "workspaces": workspaces, "database": "sqlite" if sqlite else "postgresql"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--llm-concurrency", type=int, default=1000)
    parser.add_argument("--stop-poll-s", type=float, default=None,
                        help="override the LLM worker's LLM_STOP_POLL_S (the Procfile sets 0.25)")
    parser.add_argument("--workspaces", type=int, default=10,
                        help="spread the executions over N workspaces, one agent each (a workspace's audit chain "
                             "serializes its writes: one workspace caps the rate at which calls can start)")
    parser.add_argument("--hold", action="store_true",
                        help="the server holds each call's first chunk until all N calls are open, then streams "
                             "them all at once: the worker's capacity, whatever rate the API takes executions at")
    parser.add_argument("--sqlite", action="store_true", help="run on a SQLite file instead of PostgreSQL")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy record the LLM worker, the web and the prefork worker during each size into DIR")
    parser.add_argument("--worker-pool", default="prefork", choices=["prefork", "threads"],
                        help="the pool of the worker on `executions` (governance, persist)")
    parser.add_argument("--worker-concurrency", type=int, default=4)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="set in the web's and both workers' environment (e.g. CELERY_TASK_EVENTS=0)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tenants", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup (finally) when told to stop
    if args.client:
        client_main(args.port, args.tenants, args.count, args.out)
        return
    result = run([int(size) for size in args.sizes.split(",")], args.chunks, args.seconds, args.llm_concurrency,
                 args.stop_poll_s, args.profile, args.sqlite, args.workspaces, args.hold, args.worker_pool,
                 args.worker_concurrency, dict(item.split("=", 1) for item in args.env))
    print(table(result["rows"], ["executions", "mode", "completed", "in_order", "peak_in_flight", "wall_s", "ideal_s",
                                 "first_delta_p50_ms", "first_delta_p99_ms", "post_to_first_delta_p99_ms",
                                 "pg_connections_peak", "load_before"]))
    for row in result["rows"]:
        print(f"\nN={row['executions']}: cpu us per delta {row['cpu_us_per_delta']}")
        print(f"N={row['executions']}: {0.9 * row['executions']:.0f} in flight at this CPU per delta needs "
              f"{row['cores_for_90pct']} cores ({row['cores_for_90pct_harness_only']} of them the bench's own: the LLM "
              f"server, the followers, this process); the box has {row['cores']}")
        print(f"N={row['executions']}: peak RSS MB per process {row['peak_rss_mb']}; "
              f"PostgreSQL connections peak {row['pg_connections_peak']} ({row['pg_connections_peak_by_role']}), "
              f"idle in a transaction for > 1 s {row['pg_idle_in_transaction_1s_peak']}")
    bars = {f"N={row['executions']}": float(row["peak_in_flight"]) for row in result["rows"]}
    print(f"\nwritten: {save('inflight', result, bars, ylabel='peak LLM streams in flight')}")


if __name__ == "__main__":
    main()
