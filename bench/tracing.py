"""What tracing costs: CPU per execution and executions/s with tracing on (exporting OTLP/HTTP to a receiver)
against off, in the same run. One stack per mode (gunicorn gevent x2 + a prefork worker on its own vhost, one
PostgreSQL database for all), all started at once and loaded side by side: every round posts the same number of
executions to every mode at the same moment, each mode from its own clients, and takes their CPU over the same
window, so whatever the shared machine does, it does to every mode (sequential rounds, one mode at a time, are
optional: --sequential N). Modes: off; off-2, a second untraced stack (the A/A pair: how far two identical stacks
differ in this run, the noise floor); on (the default instrumentations); on+db+redis (psycopg and redis too).

    .venv/bin/python -m bench.tracing [--executions 150] [--pair-rounds 5] [--modes off,off-2,on]

CPU per execution is web + worker (every process of each stack's group) per mode; what the modes share (this run's
PostgreSQL backends, RabbitMQ, Redis) is reported apart; the receiver (a collector on another host) is not counted.
The results file is rewritten after every round: an interrupted or failed run keeps what it measured. "Off" is also
checked by a micro-measurement of what its paths still run (a span lookup per log line, flag checks).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from flask_migrate import upgrade
from sqlalchemy import create_engine, text

from app import create_app
from bench.execute import address, cpu_by_role, cpu_per_item, free_port, gunicorn, make_tenant, serving, wait_until
from bench.http_client import KeepAlive
from bench.report import median, save, table
from tests.support import services
from tests.support.worker import ROOT, WorkerProcess

FULL = "flask,celery,httpx,psycopg,redis"
MODES = {"off": None, "off-2": None, "on": "", "on+db+redis": FULL}  # mode -> TRACING_INSTRUMENTATIONS ("" = default)
SHARED = ("rabbitmq", "redis", "postgres (this run)")
UNFINISHED_OF = "SELECT EXISTS (SELECT 1 FROM executions WHERE agent_id = :agent AND status IN ('pending', 'running'))"
TARGET = 1.10  # issue 17: on/off CPU per execution under +10%


def receiver_stats(base: str) -> dict[str, Any]:
    """The receiver's counts, over a raw connection (an httpx client per poll would bill the client ms)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/stats")
        stats: dict[str, Any] = json.loads(connection.getresponse().read())
        return stats
    finally:
        connection.close()


def settled(base: str, quiet_s: float = 6.0, timeout: float = 12.0) -> dict[str, Any]:
    """Wait until the batch exporters have sent the round's spans: no new span for longer than their 5 s delay, or
    two delays (with psycopg and redis, the idle worker's periodic queries never let the count rest)."""
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
    """CPU us per span, all in: created, batched, protobuf-encoded, posted (process_time counts the export thread)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(shutdown_on_exit=False)
    exporter = OTLPSpanExporter(endpoint=f"{receiver_base}/v1/traces")  # a queue for all: the SDK's 2048 drops
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=count))
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
    """One web + worker pair on its own vhost; traced when `endpoint` is given, as service `bench-<mode>`."""

    def __init__(self, mode: str, database_url: str, broker_url: str, redis_url: str, tmp: Path,
                 concurrency: int, endpoint: str | None, instrumentations: str = "") -> None:
        env = {"DATABASE_URL": database_url, "BROKER_URL": broker_url, "REDIS_URL": redis_url,
               "EXECUTION_SWEEP_INTERVAL_S": "0"}
        if endpoint:  # the SDK's default batching (5 s or 512 spans), as an operator would run it
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "TRACING_INSTRUMENTATIONS": instrumentations,
                        "OTEL_SERVICE_NAME": f"bench-{mode}"})
        else:  # the bench process itself may have them set: the untraced stack must not inherit them
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""})
        self.mode = mode
        self.worker = WorkerProcess(database_url=database_url, broker_url=broker_url, redis_url=redis_url,
                                    log_path=tmp / f"worker-{mode.replace('+', '-')}.log", concurrency=concurrency,
                                    extra_env=env).start()
        self.port = free_port()
        self.web = gunicorn("wsgi:app", self.port, env)
        self.base = f"http://127.0.0.1:{self.port}"

    def roles(self) -> dict[str, int]:
        assert self.worker.process is not None
        return {f"{self.mode} worker": self.worker.process.pid, f"{self.mode} web": self.web.pid}

    def stop(self) -> None:
        self.web.terminate()
        self.web.wait(timeout=20)
        self.worker.stop()


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


def finish_times(engine: Any, agents: dict[str, str], started: float, timeout: float = 180.0) -> dict[str, float]:
    """Seconds from `started` until each mode's executions all ended (every POST of the round already answered)."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(agents):
        if time.monotonic() > deadline:
            raise RuntimeError(f"executions of {sorted(set(agents) - set(done))} unfinished after {timeout}s")
        with engine.connect() as connection:
            for mode, agent in agents.items():
                if mode not in done and not connection.execute(text(UNFINISHED_OF), {"agent": agent}).scalar():
                    done[mode] = time.perf_counter() - started
        time.sleep(0.1)
    return done


def load_round(stacks: dict[str, Stack], tenants: dict[str, tuple[str, str]], engine: Any, database: str,
               receiver_base: str, count: int, clients: int, rotate: int = 0) -> dict[str, Any]:
    """`count` executions to every stack at once (clients started in rotated order); CPU, spans each, exec/s."""
    roles = {role: pid for stack in stacks.values() for role, pid in stack.roles().items()}
    order = list(stacks)[rotate % len(stacks):] + list(stacks)[:rotate % len(stacks)]
    spans_before = receiver_stats(receiver_base)["services"]
    before = cpu_by_role(roles, database)
    started = time.perf_counter()
    threads = [threading.Thread(target=post_all, args=(stacks[mode].base, tenants[mode], count, clients))
               for mode in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = finish_times(engine, {mode: tenants[mode][1] for mode in stacks}, started)
    spans_after = settled(receiver_base)["services"]  # the last batches exported: their CPU is in the window
    spent = cpu_per_item(before, cpu_by_role(roles, database), count)
    row: dict[str, Any] = {"seconds": round(max(done.values()), 2), "load_avg_1m": round(os.getloadavg()[0], 2)}
    for mode in stacks:
        row[mode] = round(spent.get(f"{mode} web", 0.0) + spent.get(f"{mode} worker", 0.0), 2)
        row[f"{mode} web"], row[f"{mode} worker"] = spent.get(f"{mode} web", 0.0), spent.get(f"{mode} worker", 0.0)
        row[f"{mode} exec/s"] = round(count / done[mode], 1)
        service = f"bench-{mode}"
        row[f"{mode} spans each"] = round((spans_after.get(service, 0) - spans_before.get(service, 0)) / count, 2)
    row["shared_ms_each"] = round(sum(ms for role, ms in spent.items() if role in SHARED), 2)
    if "off" in stacks:
        for mode in stacks:
            if mode != "off":
                row[f"{mode}/off"] = round(row[mode] / row["off"], 3)
    return row


def summarize(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    """Per mode, the median over rounds of CPU per execution, exec/s and spans, and the median of per-round ratios."""
    figures: dict[str, Any] = {}
    for mode in modes:
        mine = [row for row in rows if mode in row]
        figures[mode] = {"cpu_ms_each": median([row[mode] for row in mine]),
                         "executions_per_s": median([row[f"{mode} exec/s"] for row in mine]),
                         "spans_each": median([row[f"{mode} spans each"] for row in mine])}
        ratios = [row[f"{mode}/off"] for row in mine if f"{mode}/off" in row]
        if ratios:
            figures[mode]["ratio_to_off_median"] = median(ratios)
            figures[mode]["ratio_to_off_rounds"] = ratios
    return figures


def run(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """Fill `record` round by round, writing the results file after each."""
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = set(modes) - set(MODES)
    if unknown or "off" not in modes:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; known {list(MODES)}; 'off' is required")
    token = services.run_token()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    receiver_base = f"http://127.0.0.1:{free_port()}"
    record["setup"] = {"modes": modes, "executions_per_round": args.executions, "client_threads_per_mode": args.clients,
                       "worker": f"prefork -c {args.worker_concurrency}", "web": "gunicorn gevent x2",
                       "exporter": "OTLP/HTTP protobuf, BatchSpanProcessor (SDK defaults: 5 s, 512 spans)",
                       "instrumentations": "on: flask, celery, httpx (default); on+db+redis: also psycopg, redis",
                       "provider": "scripted, no delay, 4 words", "cpus": os.cpu_count()}
    with ExitStack() as cleanup:
        database_url = cleanup.enter_context(services.postgres_database(f"bench_{token}"))
        brokers = {mode: cleanup.enter_context(services.rabbitmq_vhost(f"bench_{mode.replace('+', '_')}_{token}"))
                   for mode in modes}
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "BROKER_URL": brokers["off"],
                          "REDIS_URL": redis_url})
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"))
        receiver = subprocess.Popen([sys.executable, "-m", "tests.support.otlp_receiver", "--port",
                                     receiver_base.rsplit(":", 1)[1]], cwd=ROOT, start_new_session=True)
        cleanup.callback(receiver.wait, 10)
        cleanup.callback(receiver.terminate)
        engine = create_engine(database_url)
        cleanup.callback(engine.dispose)
        database = database_url.rsplit("/", 1)[1]
        wait_until(lambda: serving(receiver_base), 30, "the receiver")  # it answers any GET with its counts
        record["span_cost_us"] = span_cost_us(receiver_base)
        # About 20 JSON log lines and no agent message per execution of this workload (scripted, no replies).
        record["off_path_us_each"] = off_path_us_per_execution(log_lines=20, messages=1)
        stacks: dict[str, Stack] = {}
        cleanup.callback(stop_all, stacks)
        for mode in modes:  # all at once: the same idle cost for every mode while another one is loaded
            names = MODES[mode]
            stacks[mode] = Stack(mode, database_url, brokers[mode], redis_url, tmp, args.worker_concurrency,
                                 None if names is None else receiver_base, names or "")
        wait_until(lambda: all(serving(stack.base) for stack in stacks.values()), 30, "gunicorn")
        tenants = {mode: make_tenant(stack.base, app, f"bench-{mode}") for mode, stack in stacks.items()}
        load_round(stacks, tenants, engine, database, receiver_base, 30, args.clients)  # warm-up, not recorded
        for index in range(args.sequential):  # one mode at a time, alternating order (optional: noisy)
            for mode in modes if index % 2 == 0 else reversed(modes):
                row = load_round({mode: stacks[mode]}, tenants, engine, database, receiver_base, args.executions,
                                 args.clients)
                record["sequential"].append({"round": index + 1, "mode": mode, **row})
                print(f"  sequential {index + 1} {mode}: {row[mode]} ms web+worker each, {row[f'{mode} exec/s']} "
                      f"exec/s, load {row['load_avg_1m']}", flush=True)
                checkpoint(record)
        for index in range(args.pair_rounds):
            row = {"round": index + 1, **load_round(stacks, tenants, engine, database, receiver_base,
                                                    args.executions, args.clients, rotate=index)}
            record["side_by_side"].append(row)
            record["modes"] = summarize(record["side_by_side"], modes)
            ratios = ", ".join(f"{key} {value:.3f}" for key, value in row.items() if key.endswith("/off"))
            print(f"  side by side {index + 1}: web+worker ms each "
                  + ", ".join(f"{mode} {row[mode]}" for mode in modes)
                  + f"; {ratios}; load {row['load_avg_1m']}", flush=True)
            checkpoint(record)


def stop_all(stacks: dict[str, Stack]) -> None:
    for stack in stacks.values():
        stack.stop()


def checkpoint(record: dict[str, Any]) -> Path:
    """The results file as measured so far (the chart only once the run is complete)."""
    bars = {f"{mode} ms": figures["cpu_ms_each"] for mode, figures in record["modes"].items()}
    return save("tracing", record, bars if record["complete"] else None, ylabel="web+worker CPU ms per execution")


def report(record: dict[str, Any]) -> None:
    """The tables and the verdict, from whatever rounds completed."""
    modes = record["setup"]["modes"]
    rows = record["side_by_side"]
    if not rows:
        print("no side-by-side round completed")
        return
    print(table(rows, ["round", "seconds", "load_avg_1m", *modes, *[f"{m}/off" for m in modes if m != "off"],
                       "shared_ms_each"]))
    for mode, figures in record["modes"].items():
        ratio = figures.get("ratio_to_off_median")
        print(f"{mode:>12}: {figures['cpu_ms_each']:.2f} ms web+worker CPU each, {figures['executions_per_s']:.1f} "
              f"exec/s, {figures['spans_each']:.1f} spans each" + (f"; {mode}/off median {ratio:.3f}" if ratio else ""))
    print(f"one span costs {record['span_cost_us']:.0f} us of CPU (created, batched, encoded, posted)")
    print(f"tracing off: what still runs costs {record['off_path_us_each']:.1f} us per execution")
    if "on" in record["modes"]:
        on = record["modes"]["on"]["ratio_to_off_median"]
        print(f"target: on/off CPU per execution < {TARGET:.2f} in the median: {on:.3f} "
              f"({'met' if on < TARGET else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=150, help="per mode per round")
    parser.add_argument("--clients", type=int, default=4, help="client threads per mode")  # PostgreSQL is shared
    parser.add_argument("--pair-rounds", type=int, default=5, help="side-by-side rounds (every mode loaded at once)")
    parser.add_argument("--sequential", type=int, default=0, help="rounds loading one mode at a time")
    parser.add_argument("--modes", default="off,off-2,on", help=f"a subset of {','.join(MODES)}, with off")
    parser.add_argument("--worker-concurrency", type=int, default=4)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the stacks stopped, what was measured kept
    record: dict[str, Any] = {"complete": False, "sequential": [], "side_by_side": [], "modes": {}}
    try:
        run(args, record)
        record["complete"] = True
    finally:
        if "setup" in record:
            path = checkpoint(record)
            report(record)
            print(f"\nwritten: {path}" + ("" if record["complete"] else " (incomplete run)"))


if __name__ == "__main__":
    main()
