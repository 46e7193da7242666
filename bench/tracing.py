"""What tracing costs: executions/s and CPU per execution with tracing on (exporting OTLP/HTTP to a receiver)
against off, in the same run: per round, one stack per mode (off; on with the default instrumentations; on with
psycopg and redis too), each gunicorn gevent x2 + a prefork worker on its own vhost, one PostgreSQL database,
started one at a time in alternating order; then side by side: all modes loaded at once by their own clients and
measured over the same window, which the shared machine's noise cannot favour one mode in.

    .venv/bin/python -m bench.tracing [--executions 200] [--rounds 2] [--pair-rounds 3] [--clients 8]

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
import threading
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app import create_app
from bench.execute import (
    ANY_UNFINISHED,
    address,
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
from bench.http_client import KeepAlive
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


def settled(base: str, quiet_s: float = 6.0, timeout: float = 90.0) -> dict[str, int]:
    """Wait until the batch exporters have sent everything (no new span for longer than their 5 s delay)."""
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


def span_cost_us(receiver_base: str, count: int = 20_000) -> float:
    """CPU microseconds per span, all in: start, attributes, end, batching, protobuf encoding and the OTLP/HTTP
    post to the receiver (time.process_time counts the export thread too). Times the spans of an execution, it
    models the overhead without the wall-time noise of a shared machine."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver_base}/v1/traces")))
    tracer = provider.get_tracer("bench")
    attributes: dict[str, Any] = {"messaging.message.id": "0" * 36, "celery.task_name": "executions.llm",
                                  "celery.state": "SUCCESS", "messaging.destination": "executions",
                                  "celery.hostname": "worker@host", "retries": 0}
    started = time.process_time()
    for index in range(count // 10):
        with tracer.start_as_current_span("parent", attributes=attributes):
            for _ in range(9):
                with tracer.start_as_current_span("child", attributes={**attributes, "index": index}):
                    pass
    provider.force_flush()
    spent = time.process_time() - started
    provider.shutdown()
    return spent / count * 1e6


class Stack:
    """One web + worker pair on its own vhost; traced when `endpoint` is given."""

    def __init__(self, name: str, database_url: str, broker_url: str, redis_url: str, tmp: Path,
                 concurrency: int, endpoint: str | None, instrumentations: str = "") -> None:
        env = {"DATABASE_URL": database_url, "BROKER_URL": broker_url, "REDIS_URL": redis_url,
               "EXECUTION_SWEEP_INTERVAL_S": "0"}
        if endpoint:
            # The SDK's default batching (export every 5 s or 512 spans): a shorter delay multiplies the exports,
            # each an HTTP POST per process (measured side by side: 500 ms batches to a receiver closing each connection
            # cost +21% web+worker CPU per execution, the defaults with keep-alive +12%).
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "TRACING_INSTRUMENTATIONS": instrumentations})
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


def run(executions: int, clients: int, rounds: int, concurrency: int, pair_rounds: int) -> dict[str, Any]:
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
        engine = create_engine(database_url)
        rows: list[dict[str, Any]] = []
        database = database_url.rsplit("/", 1)[1]
        try:
            wait_until(lambda: serving_receiver(receiver_base), 30, "the receiver")
            for index in range(rounds):
                order = list(MODES) if index % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    # One stack at a time: three idle ones would hold PostgreSQL connections the shared server
                    # (max_connections 100) cannot spare, and add their idle CPU to the noise.
                    names = MODES[mode]
                    stack = Stack(f"{mode.replace('+', '-')}-{index}", database_url, brokers[mode], redis_url,
                                  Path(tmp), concurrency, None if names is None else receiver_base, names or "")
                    try:
                        wait_until(lambda stack=stack: serving(stack.base), 30, "gunicorn")  # type: ignore[misc]
                        tenants = [make_tenant(stack.base, app, f"bench-{mode}-{index}")]
                        api_executions(stack.base, tenants, engine, 30, clients)  # warm up: pools, imports, exporter
                        settled(receiver_base)
                        rows.append(measure(stack, mode, index, tenants, engine, executions, clients,
                                            receiver.pid, receiver_base, database))
                    finally:
                        stack.stop()
            paired = side_by_side(app, database_url, brokers, redis_url, Path(tmp), concurrency, receiver_base,
                                  engine, database, executions, clients, pair_rounds)
            span_us = span_cost_us(receiver_base)
        finally:
            receiver.terminate()
            receiver.wait(timeout=10)
    summary = summarize(rows, executions, clients, concurrency, span_us)
    summary["side_by_side"] = summarize_pairs(paired)
    return summary


def side_by_side(app: Any, database_url: str, brokers: dict[str, str], redis_url: str, tmp: Path, concurrency: int,
                 receiver_base: str, engine: Any, database: str, executions: int, clients: int,
                 rounds: int) -> list[dict[str, Any]]:
    """All modes loaded at once, each by its own clients, CPU taken over the same window: whatever the shared
    machine does to one mode, it does to the others at the same moment (the sequential rounds cannot promise that)."""
    stacks = {mode: Stack(f"pair-{mode.replace('+', '-')}", database_url, brokers[mode], redis_url, tmp, concurrency,
                          None if names is None else receiver_base, names or "") for mode, names in MODES.items()}
    rows: list[dict[str, Any]] = []
    try:
        wait_until(lambda: all(serving(stack.base) for stack in stacks.values()), 30, "gunicorn")
        tenants = {mode: make_tenant(stack.base, app, f"pair-{mode}") for mode, stack in stacks.items()}
        roles = {f"{mode} {role}": pid for mode, stack in stacks.items() for role, pid in stack.roles().items()}
        for index in range(rounds + 1):  # the first is the warm-up
            count = executions if index else 30
            before = cpu_by_role(roles, database)
            started = time.perf_counter()
            threads = [threading.Thread(target=post_all, args=(stack.base, tenants[mode], count, max(1, clients // 2)))
                       for mode, stack in stacks.items()]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wait_until(lambda: drained(engine), 180, "executions")
            elapsed = time.perf_counter() - started
            settled(receiver_base)
            spent = cpu_per_item(before, cpu_by_role(roles, database), count)
            if not index:
                continue
            row: dict[str, Any] = {"round": index, "seconds": round(elapsed, 2)}
            for mode in MODES:
                row[mode] = round(spent.get(f"{mode} web", 0.0) + spent.get(f"{mode} worker", 0.0), 2)
            row["shared_ms_each"] = round(sum(ms for role, ms in spent.items()
                                              if role in ("rabbitmq", "redis", "postgres (this run)")), 2)
            print(f"  side by side {index}: web+worker cpu ms each {row}", flush=True)
            rows.append(row)
    finally:
        for stack in stacks.values():
            stack.stop()
    return rows


def post_all(base: str, tenant: tuple[str, str], count: int, clients: int) -> None:
    """`count` POST /execute from `clients` keep-alive connections."""
    key, agent_id = tenant
    local = threading.local()

    def send(index: int) -> None:
        if not hasattr(local, "client"):
            local.client = KeepAlive(*address(base))
        local.client.post(f"/agents/{agent_id}/execute", {"message": f"pair {index}"},
                          {"Authorization": f"Bearer {key}"})

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(count)))


def drained(engine: Any) -> bool:
    with engine.connect() as connection:
        return not connection.execute(text(ANY_UNFINISHED)).scalar_one()


def summarize_pairs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode, the median over rounds of web+worker CPU per execution, and its overhead against off."""
    medians = {mode: median([row[mode] for row in rows]) for mode in MODES}
    per_round = {mode: median([row[mode] / row["off"] - 1 for row in rows]) for mode in MODES}
    return {"rows": rows, "app_cpu_ms_each": medians,
            "app_cpu_overhead": {mode: medians[mode] / medians["off"] - 1 for mode in MODES},
            "app_cpu_overhead_median_of_rounds": per_round}


def measure(stack: Stack, mode: str, index: int, tenants: list[tuple[str, str]], engine: Any, executions: int,
            clients: int, receiver_pid: int, receiver_base: str, database: str) -> dict[str, Any]:
    """One measured phase: `executions` through the API, then the exporters drained (waited for in every mode)."""
    roles = {**stack.roles(), RECEIVER: receiver_pid}
    spans_before = receiver_stats(receiver_base)["spans"]
    before = cpu_by_role(roles, database)
    rate = api_executions(stack.base, tenants, engine, executions, clients)
    spans = settled(receiver_base)["spans"] - spans_before
    by_role = cpu_per_item(before, cpu_by_role(roles, database), executions)
    receiver_ms = by_role.pop(RECEIVER, 0.0)
    print(f"  round {index + 1} tracing {mode}: {rate:.1f} exec/s, cpu ms each {by_role}", flush=True)
    return {"round": index + 1, "tracing": mode, "executions_per_s": rate, "cpu_ms_each": ours(by_role),
            "app_cpu_ms_each": round(by_role.get("web", 0.0) + by_role.get("worker", 0.0), 2),
            "spans_each": spans / executions, "receiver_cpu_ms_each": receiver_ms, "cpu_by_role_ms": by_role}


def serving_receiver(base: str) -> bool:
    try:
        return httpx.get(f"{base}/stats", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def summarize(rows: list[dict[str, Any]], executions: int, clients: int, concurrency: int,
              span_us: float) -> dict[str, Any]:
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
        # The model: spans per execution times the measured cost of one span, against off's web+worker CPU.
        figures["modelled_app_cpu_overhead"] = figures["spans_each"] * span_us / 1000 / off["app_cpu_ms_each"]
        summary["modes"][mode] = figures
    summary["cpu_overhead"] = summary["modes"]["on"]["cpu_overhead"]
    summary["span_cost_us"] = span_us
    # About 20 JSON log lines and no agent message per execution of this workload (scripted, no replies).
    summary["off_path_us_each"] = off_path_us_per_execution(log_lines=20, messages=1)
    summary["off_path_share"] = summary["off_path_us_each"] / 1000 / summary["modes"]["off"]["app_cpu_ms_each"]
    summary["setup"] = {"executions_per_round": executions, "client_threads": clients,
                        "worker": f"prefork -c {concurrency}", "web": "gunicorn gevent x2",
                        "exporter": "OTLP/HTTP protobuf, BatchSpanProcessor (SDK defaults: 5 s, 512 spans)",
                        "instrumentations": "on: flask, celery, httpx (default); on+db+redis: also psycopg, redis",
                        "provider": "scripted, no delay, 4 words"}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)  # PostgreSQL is shared: fewer connections held
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=4)
    parser.add_argument("--pair-rounds", type=int, default=3, help="rounds with every mode loaded at once")
    args = parser.parse_args()
    result = run(args.executions, args.clients, args.rounds, args.worker_concurrency, args.pair_rounds)
    print(table(result["rows"], ["round", "tracing", "executions_per_s", "cpu_ms_each", "app_cpu_ms_each",
                                 "spans_each", "receiver_cpu_ms_each"]))
    for mode, figures in result["modes"].items():
        print(f"{mode:>12}: {figures['executions_per_s']:.1f} exec/s, {figures['cpu_ms_each']:.2f} ms cpu each "
              f"(web+worker {figures['app_cpu_ms_each']:.2f}), {figures['spans_each']:.1f} spans each; "
              f"cpu {figures['cpu_overhead']:+.1%} (web+worker {figures['app_cpu_overhead']:+.1%}), "
              f"throughput x{figures['throughput_ratio']:.2f}; modelled web+worker "
              f"{figures['modelled_app_cpu_overhead']:+.1%}")
    pairs = result["side_by_side"]
    print(table(pairs["rows"], ["round", "seconds", *MODES, "shared_ms_each"]))
    print("side by side, web+worker cpu ms per execution (median): " + ", ".join(
        f"{mode} {pairs['app_cpu_ms_each'][mode]:.2f} ({pairs['app_cpu_overhead'][mode]:+.1%})" for mode in MODES))
    print(f"one span costs {result['span_cost_us']:.0f} us of CPU (created, batched, encoded, posted)")
    print("target: tracing on (default instrumentations) < +10% CPU per execution")
    print(f"tracing off: what still runs costs {result['off_path_us_each']:.1f} us per execution "
          f"({result['off_path_share']:.3%} of its web+worker CPU)")
    bars = {f"{mode} exec/s": figures["executions_per_s"] for mode, figures in result["modes"].items()}
    print(f"\nwritten: {save('tracing', result, bars, ylabel='per second')}")


if __name__ == "__main__":
    main()
