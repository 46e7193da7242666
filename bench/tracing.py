"""What tracing costs: executions/s and CPU per execution with tracing on (exporting OTLP/HTTP to a receiver)
against off, in the same run, on two identical stacks (gunicorn gevent x2 + a prefork worker each, own vhosts,
one PostgreSQL database), measured in alternating rounds so the shared machine's noise hits both alike.

    .venv/bin/python -m bench.tracing [--executions 300] [--rounds 3] [--clients 16]

CPU per execution counts every process of the run (web, worker, PostgreSQL backends of the run's database,
RabbitMQ, Redis, the load client) as bench/execute.py does; the receiver (it stands for a collector on another
host) is reported on its own line and not counted. "Off" is also checked by a micro-measurement of what the
off paths still run per execution (a context lookup per log line, a propagator call per message, flag checks).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import httpx
from flask_migrate import upgrade
from sqlalchemy import create_engine

from app import create_app
from bench.execute import (
    api_executions,
    cpu_by_role,
    cpu_per_item,
    free_port,
    gunicorn,
    make_tenant,
    ours,
    serving,
    wait_until,
)
from bench.report import median, save, table
from tests.support import services
from tests.support.worker import ROOT, WorkerProcess

RECEIVER = "otlp receiver"


FULL = "flask,celery,httpx,psycopg,redis"
MODES = {"off": None, "on": "", "on+db+redis": FULL}  # mode -> TRACING_INSTRUMENTATIONS ("" = the default)


def receiver_stats(base: str) -> dict[str, int]:
    """The receiver's counts, over a raw connection (an httpx client per poll would bill the client ms)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/stats")
        stats: dict[str, int] = json.loads(connection.getresponse().read())
        return stats
    finally:
        connection.close()


def settled(base: str, quiet_s: float = 1.5, timeout: float = 60.0) -> dict[str, int]:
    """Wait until the batch exporters have sent everything (no new span for quiet_s)."""
    deadline = time.monotonic() + timeout
    last, since = receiver_stats(base), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = receiver_stats(base)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    return last


def off_path_us_per_execution(log_lines: int, messages: int) -> float:
    """Microseconds the off paths cost per execution: the formatter's span lookup per log line, the message
    propagator per message, and the provider/chain/insert flag checks (tracing never installed here)."""
    from opentelemetry import propagate, trace

    from app import tracing
    from app.llm import traced

    assert not tracing.enabled()
    runs = 100_000
    lookup = timeit.timeit(lambda: trace.get_current_span().get_span_context().is_valid, number=runs) / runs
    inject = timeit.timeit(lambda: propagate.inject({}), number=runs) / runs
    flags = timeit.timeit(lambda: (tracing.enabled(), traced.wrap(None)), number=runs) / runs  # type: ignore[arg-type]
    return (lookup * log_lines + inject * messages + flags * 3) * 1e6


class Stack:
    """One web + worker pair on its own vhost; traced when `endpoint` is given."""

    def __init__(self, name: str, database_url: str, broker_url: str, redis_url: str, tmp: Path,
                 concurrency: int, endpoint: str | None, instrumentations: str = "") -> None:
        env = {"DATABASE_URL": database_url, "BROKER_URL": broker_url, "REDIS_URL": redis_url,
               "EXECUTION_SWEEP_INTERVAL_S": "0"}
        if endpoint:
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "500",
                        "TRACING_INSTRUMENTATIONS": instrumentations})
        else:  # the bench process itself may have them set: the untraced stack must not inherit them
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""})
        self.name = name
        self.worker = WorkerProcess(database_url=database_url, broker_url=broker_url, redis_url=redis_url,
                                    log_path=tmp / f"worker-{name}.log", concurrency=concurrency,
                                    extra_env=env).start()
        self.port = free_port()
        self.web = gunicorn("wsgi:app", self.port, env)
        self.base = f"http://127.0.0.1:{self.port}"

    def roles(self) -> dict[str, int]:
        assert self.worker.process is not None
        return {"worker": self.worker.process.pid, "web": self.web.pid}

    def stop(self) -> None:
        self.web.terminate()
        self.web.wait(timeout=20)
        self.worker.stop()


def run(executions: int, clients: int, rounds: int, concurrency: int) -> dict[str, Any]:
    token = services.run_token()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    receiver_port = free_port()
    receiver_base = f"http://127.0.0.1:{receiver_port}"
    with (
        services.postgres_database(f"bench_{token}") as database_url,
        services.rabbitmq_vhost(f"bench_off_{token}") as off_broker,
        services.rabbitmq_vhost(f"bench_on_{token}") as on_broker,
        services.rabbitmq_vhost(f"bench_full_{token}") as full_broker,
        tempfile.TemporaryDirectory() as tmp,
    ):
        brokers = {"off": off_broker, "on": on_broker, "on+db+redis": full_broker}
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "BROKER_URL": off_broker, "REDIS_URL": redis_url})
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"))
        receiver = subprocess.Popen([sys.executable, "-m", "tests.support.otlp_receiver", "--port",
                                     str(receiver_port)], cwd=ROOT, start_new_session=True)
        stacks: dict[str, Stack] = {}
        try:
            for mode, names in MODES.items():
                stacks[mode] = Stack(mode.replace("+", "-"), database_url, brokers[mode], redis_url, Path(tmp),
                                     concurrency, None if names is None else receiver_base, names or "")
            wait_until(lambda: all(serving(s.base) for s in stacks.values()) and serving_receiver(receiver_base),
                       30, "gunicorn and the receiver")
            tenants = {mode: [make_tenant(stack.base, app, f"bench-{mode}")] for mode, stack in stacks.items()}
            engine = create_engine(database_url)
            for mode, stack in stacks.items():  # warm up both (connections, pools, imports, the exporter)
                api_executions(stack.base, tenants[mode], engine, 50, clients)
            settled(receiver_base)
            rows: list[dict[str, Any]] = []
            database = database_url.rsplit("/", 1)[1]
            for index in range(rounds):
                order = list(MODES) if index % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    stack = stacks[mode]
                    roles = {**stack.roles(), RECEIVER: receiver.pid}
                    spans_before = receiver_stats(receiver_base)["spans"]
                    before = cpu_by_role(roles, database)
                    rate = api_executions(stack.base, tenants[mode], engine, executions, clients)
                    spans = settled(receiver_base)["spans"] - spans_before  # waited for in every mode alike
                    by_role = cpu_per_item(before, cpu_by_role(roles, database), executions)
                    receiver_ms = by_role.pop(RECEIVER, 0.0)
                    print(f"  round {index + 1} tracing {mode}: {rate:.1f} exec/s, cpu ms each {by_role}", flush=True)
                    rows.append({"round": index + 1, "tracing": mode, "executions_per_s": rate,
                                 "cpu_ms_each": ours(by_role),
                                 "app_cpu_ms_each": round(by_role.get("web", 0.0) + by_role.get("worker", 0.0), 2),
                                 "spans_each": spans / executions, "receiver_cpu_ms_each": receiver_ms,
                                 "cpu_by_role_ms": by_role})
        finally:
            for stack in stacks.values():
                stack.stop()
            receiver.terminate()
            receiver.wait(timeout=10)
    return summarize(rows, executions, clients, concurrency)


def serving_receiver(base: str) -> bool:
    try:
        return httpx.get(f"{base}/stats", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def summarize(rows: list[dict[str, Any]], executions: int, clients: int, concurrency: int) -> dict[str, Any]:
    def med(mode: str, key: str) -> float:
        return median([row[key] for row in rows if row["tracing"] == mode])

    summary: dict[str, Any] = {"rows": rows, "modes": {}}
    for mode in MODES:
        figures = {key: med(mode, key) for key in ("executions_per_s", "cpu_ms_each", "app_cpu_ms_each",
                                                   "spans_each", "receiver_cpu_ms_each")}
        off = summary["modes"].get("off", figures)
        figures["cpu_overhead"] = figures["cpu_ms_each"] / off["cpu_ms_each"] - 1
        figures["app_cpu_overhead"] = figures["app_cpu_ms_each"] / off["app_cpu_ms_each"] - 1
        figures["throughput_ratio"] = figures["executions_per_s"] / off["executions_per_s"]
        summary["modes"][mode] = figures
    summary["cpu_overhead"] = summary["modes"]["on"]["cpu_overhead"]
    # About 20 JSON log lines and no agent message per execution of this workload (scripted, no replies).
    summary["off_path_us_each"] = off_path_us_per_execution(log_lines=20, messages=1)
    summary["off_path_share"] = summary["off_path_us_each"] / 1000 / summary["modes"]["off"]["cpu_ms_each"]
    summary["setup"] = {"executions_per_round": executions, "client_threads": clients,
                        "worker": f"prefork -c {concurrency}", "web": "gunicorn gevent x2",
                        "exporter": "OTLP/HTTP protobuf, BatchSpanProcessor (500 ms)",
                        "instrumentations": "on: flask, celery, httpx (default); on+db+redis: also psycopg, redis",
                        "provider": "scripted, no delay, 4 words"}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker-concurrency", type=int, default=4)
    args = parser.parse_args()
    result = run(args.executions, args.clients, args.rounds, args.worker_concurrency)
    print(table(result["rows"], ["round", "tracing", "executions_per_s", "cpu_ms_each", "app_cpu_ms_each",
                                 "spans_each", "receiver_cpu_ms_each"]))
    for mode, figures in result["modes"].items():
        print(f"{mode:>12}: {figures['executions_per_s']:.1f} exec/s, {figures['cpu_ms_each']:.2f} ms cpu each "
              f"(web+worker {figures['app_cpu_ms_each']:.2f}), {figures['spans_each']:.1f} spans each; "
              f"cpu {figures['cpu_overhead']:+.1%} (web+worker {figures['app_cpu_overhead']:+.1%}), "
              f"throughput x{figures['throughput_ratio']:.2f}")
    print("target: tracing on (default instrumentations) < +10% CPU per execution")
    print(f"tracing off: what still runs costs {result['off_path_us_each']:.1f} us per execution "
          f"({result['off_path_share']:.3%} of its CPU)")
    bars = {f"{mode} exec/s": figures["executions_per_s"] for mode, figures in result["modes"].items()}
    print(f"\nwritten: {save('tracing', result, bars, ylabel='per second')}")


if __name__ == "__main__":
    main()
