"""Cost as registered agents grow: 1,000 / 10,000 / 100,000 agents, 100 of them active, on a private RabbitMQ node.

For each size and design (the notified mailbox of this checkout, and the polling mailbox of POLLING_REF, a git
worktree made for the run, at the sizes up to --polling-max) it runs that design's web (gunicorn gevent) and
`flask mailbox run` on the same database and broker and reports:

- mailbox idle CPU: % of one core of the mailbox process (and of the broker) over an idle window;
- send -> stored without a reader: delivered_at - sent_at of messages sent through the API, p50/p99;
- send -> delivered on the inbox stream: POST returned -> event read by an SSE client, p50/p99;
- broker memory per registered agent (erlang:memory(total) of the private node over its empty baseline): inboxes
  are declared by the first send, so only the active ones have a queue; before the polling design runs (it asks
  every agent's queue) every inbox is declared (`flask agents declare-inboxes`' path, timed), and the memory
  per queue is measured then;
- agent creation rate: POST /agents through that design's web (8 client threads), and `flask agents import`'s
  path (create_many) for the bulk.

The floor is the same run's bare inbox declares (declare + bind, 8 connections): what the broker allows.
The node is private (no other session's queues or alarms) and removed afterwards, with the run's database.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from flask_migrate import upgrade
from sqlalchemy import Engine, create_engine, func, select, text

from app import create_app
from app.extensions import db
from app.services import agents as agents_service
from app.services import auth, inboxes
from app.services.auth import Principal
from bench.execute import free_port, serving, wait_until
from bench.report import percentile, save, table
from coordination import schema, topology
from coordination.broker import connect
from tests.support import services
from tests.support.rabbit_node import RabbitNode, private_rabbitmq

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POLLING_REF = "a1da062"  # the last commit whose mailbox polls every inbox (issue 16 replaced it)
ACTIVE = 100
CLIENTS = 8


# -- processes and measurements -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """CPU of every live process of a process group (gunicorn's workers, flask's child)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def node_eval(node: RabbitNode, expression: str) -> str:
    out = subprocess.run(["rabbitmqctl", "-n", node.name, "eval", expression], check=True, capture_output=True,
                         text=True, timeout=120)
    return out.stdout.strip().strip('"')


def node_memory_mb(node: RabbitNode) -> float:
    return int(node_eval(node, "erlang:memory(total).")) / 1e6


@dataclass
class Design:
    """One design's code: a checkout whose web and mailbox are started."""

    name: str
    root: Path


@dataclass
class Stack:
    """A running web and mailbox of one design."""

    web: subprocess.Popen[bytes]
    mailbox: subprocess.Popen[bytes]
    port: int
    mailbox_log: Path

    def stop(self) -> None:
        for process in (self.web, self.mailbox):
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for process in (self.web, self.mailbox):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(10)


def start_stack(design: Design, env: dict[str, str], logs: Path) -> Stack:
    port = free_port()
    environ = {**os.environ, **env, "PYTHONPATH": str(design.root), "LOG_LEVEL": "INFO"}
    web = subprocess.Popen(
        [str(BIN / "gunicorn"), "--worker-class", "gevent", "--workers", "2", "--worker-connections", "2000",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "wsgi:app"],
        cwd=design.root, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    mailbox_log = logs / f"mailbox-{design.name}-{port}.log"
    with mailbox_log.open("wb") as out:
        mailbox = subprocess.Popen([str(BIN / "flask"), "--app", "wsgi", "mailbox", "run"], cwd=design.root,
                                   env=environ, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: serving(f"http://127.0.0.1:{port}"), 60, "gunicorn")
    return Stack(web, mailbox, port, mailbox_log)


class Api:
    """A keep-alive JSON client of one web (one per thread)."""

    def __init__(self, port: int, key: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    def post(self, path: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
        self.connection.request("POST", path, json.dumps(body).encode(), self.headers)
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != expect:
            raise RuntimeError(f"POST {path}: {response.status} {payload[:300]!r}")
        result: dict[str, Any] = json.loads(payload)
        return result


def postgres_cpu_seconds(database: str) -> float:
    """CPU of the PostgreSQL backends serving this run's database."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if command.startswith("postgres:") and database in command:
                    total += cpu_seconds(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return total


def api_create(port: int, key: str, count: int) -> tuple[list[str], float]:
    """POST /agents from CLIENTS threads; the new ids and agents per second."""
    ids: list[str] = []
    lock = threading.Lock()

    def create(n: int) -> None:
        api = Api(port, key)
        for i in range(n):
            try:
                agent = api.post("/agents", {"name": f"scale-{i}", "maturity_level": "STUDENT"}, 201)
            except RuntimeError as exc:  # a 503 (the shared PostgreSQL out of connections): counted, not fatal
                print(f"create failed: {exc}", flush=True)
                api = Api(port, key)
                continue
            with lock:
                ids.append(agent["id"])

    threads = [threading.Thread(target=create, args=(count // CLIENTS,)) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids, len(ids) / (time.perf_counter() - started)


def bulk_create(app: Any, principal: Principal, count: int, node: RabbitNode, max_mb: float,
                batch: int = 1000) -> tuple[int, float]:
    """The `flask agents import` path (create_many): agents made and per second; stops at max_mb of broker memory."""
    started = time.perf_counter()
    made = 0
    with app.app_context():
        for start in range(0, count, batch):
            made += len(agents_service.create_many(
                principal, [{"name": f"bulk-{start + i}", "maturity_level": "STUDENT", "llm": {"provider": "scripted"}}
                            for i in range(min(batch, count - start))]))
            if made % (batch * 10) == 0 and node_memory_mb(node) > max_mb:
                print(f"broker memory over {max_mb} MB after {made} more agents: stopping the growth", flush=True)
                break
    return made, made / (time.perf_counter() - started)


def declare_all(app: Any) -> float:
    """Declare every agent's missing inbox (what the polling design needs: it created them with the agent); per s."""
    with app.app_context():
        started = time.perf_counter()
        declared = inboxes.declare_undeclared()
        elapsed = time.perf_counter() - started
    return declared / elapsed if declared else 0.0


def bare_declares(broker_url: str, count: int) -> float:
    """The floor: declare + bind inboxes from CLIENTS connections, one round trip after another; per second."""
    def declare(n: int) -> None:
        conn = connect(broker_url, timeout_s=30)
        channel = conn.connection.channel()
        names = [f"floor-{uuid.uuid4().hex}" for _ in range(n)]
        for name in names:
            topology.declare_inbox_on(channel, name)
        for name in names:
            channel.queue_delete(topology.inbox_queue_name(name))
        conn.release()

    threads = [threading.Thread(target=declare, args=(count // CLIENTS,)) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count / ((time.perf_counter() - started) / 2)  # deletes cost about what declares do


def wait_mailbox_ready(stack: Stack, design: Design, timeout_s: float) -> float:
    """Seconds until the mailbox is settled: the notified design logs its first (unthrottled) sweep round."""
    started = time.monotonic()
    if design.name == "polling":
        time.sleep(3.0)  # its agent list is read at once; a few passes
        return time.monotonic() - started
    wait_until(lambda: "sweep round done" in stack.mailbox_log.read_text(errors="replace"), timeout_s,
               "the mailbox's first sweep round")
    return time.monotonic() - started


def idle_cpu(stack: Stack, node_pid: int, seconds: float) -> dict[str, float]:
    """% of one core of the mailbox (its process group) and the broker while nothing is sent."""
    mailbox0, broker0, t0 = group_cpu_seconds(stack.mailbox.pid), cpu_seconds(node_pid), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {"mailbox_idle_cpu_pct": 100 * (group_cpu_seconds(stack.mailbox.pid) - mailbox0) / elapsed,
            "broker_idle_cpu_pct": 100 * (cpu_seconds(node_pid) - broker0) / elapsed}


def send_to_stored(stack: Stack, key: str, engine: Engine, sender: str, active: list[str], count: int) -> list[float]:
    """Sequential sends through the API, no reader: delivered_at - sent_at of each, in ms."""
    api = Api(stack.port, key)
    rng = random.Random(16)
    ids = []
    for i in range(count):
        body = api.post(f"/agents/{sender}/messages", {"to_agent_id": rng.choice(active), "message": {"n": i}}, 201)
        ids.append(body["message_id"])
        time.sleep(0.01)  # about 50 sends/s: latency, not throughput
    table_ = schema.inbox_messages

    def rows() -> list[Any]:
        with engine.connect() as conn:
            query = select(table_.c.sent_at, table_.c.delivered_at).where(table_.c.message_id.in_(ids))
            return list(conn.execute(query))

    wait_until(lambda: len(rows()) == count, 120, "every message stored by the mailbox")
    return [(row.delivered_at - row.sent_at).total_seconds() * 1000 for row in rows()]


def last_seq(engine: Engine, agent_id: str) -> int:
    table_ = schema.inbox_messages
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(table_.c.seq), 0))
                                .where(table_.c.to_agent_id == agent_id)).scalar_one())


@dataclass
class Follower:
    """An SSE client of one inbox: message_id -> monotonic time the event was read."""

    agent_id: str
    seen: dict[str, float] = field(default_factory=dict)
    response: Any = None


def follow(port: int, key: str, follower: Follower, after: int, ready: threading.Event) -> None:
    """Read one inbox stream until closed, stamping each message event; reconnects after a 503 (busy database)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                      timeout=httpx.Timeout(10, read=None)) as client:
        for _attempt in range(20):
            try:
                with client.stream("GET", f"/agents/{follower.agent_id}/messages/stream",
                                   params={"after": after}) as response:
                    if response.status_code != 200:
                        print(f"stream answered {response.status_code}; reconnecting", flush=True)
                        time.sleep(0.5)
                        continue
                    follower.response = response
                    ready.set()
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            follower.seen[json.loads(line[6:])["message_id"]] = time.monotonic()
                    return
            except (httpx.HTTPError, ValueError, RuntimeError):
                return


def stream_delivery(stack: Stack, key: str, engine: Engine, sender: str, active: list[str], streams: int,
                    count: int) -> list[float]:
    """POST returned -> event read on the receiver's inbox stream, in ms (streams followers, count sends)."""
    followers = [Follower(agent_id) for agent_id in active[:streams]]
    threads = []
    for follower in followers:
        ready = threading.Event()
        thread = threading.Thread(target=follow, args=(stack.port, key, follower, last_seq(engine, follower.agent_id),
                                                       ready), daemon=True)
        thread.start()
        ready.wait(30)
        threads.append(thread)
    time.sleep(1.0)  # every follower has replayed (nothing: after = its last seq) and is waiting
    api = Api(stack.port, key)
    returned: dict[str, tuple[Follower, float]] = {}
    for i in range(count):
        target = followers[i % len(followers)]
        body = api.post(f"/agents/{sender}/messages", {"to_agent_id": target.agent_id, "message": {"s": i}}, 201)
        returned[body["message_id"]] = (target, time.monotonic())
        time.sleep(0.02)
    wait_until(lambda: all(mid in f.seen for mid, (f, _) in returned.items()), 60, "every event on its stream")
    for follower in followers:
        if follower.response is not None:
            follower.response.close()
    return [(f.seen[mid] - at) * 1000 for mid, (f, at) in returned.items()]


# -- the run ------------------------------------------------------------------------------------------------------


@contextmanager
def polling_checkout(ref: str) -> Iterator[Path]:
    """A detached worktree of the polling design, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="agents-scale-polling-"))
    shutil.rmtree(path)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)


def node_pid(node: RabbitNode) -> int:
    return int(node_eval(node, "list_to_integer(os:getpid())."))


def measure(design: Design, size: int, env: dict[str, str], logs: Path, node: RabbitNode, key: str, engine: Engine,
            sender: str, active: list[str], args: argparse.Namespace) -> dict[str, Any]:
    stack = start_stack(design, env, logs)
    try:
        settle_s = wait_mailbox_ready(stack, design, timeout_s=600)
        idle = idle_cpu(stack, node_pid(node), args.idle_s)
        stored = send_to_stored(stack, key, engine, sender, active, args.sends)
        delivered = stream_delivery(stack, key, engine, sender, active, args.streams, args.stream_sends)
        database = env["DATABASE_URL"].rsplit("/", 1)[1]
        broker_pid = node_pid(node)
        before = (group_cpu_seconds(stack.web.pid), cpu_seconds(broker_pid), postgres_cpu_seconds(database))
        created, rate = api_create(stack.port, key, args.api_creates)
        after = (group_cpu_seconds(stack.web.pid), cpu_seconds(broker_pid), postgres_cpu_seconds(database))
        per_create = [round((b - a) * 1000 / max(1, len(created)), 2) for a, b in zip(before, after, strict=True)]
    finally:
        stack.stop()
    row = {
        "design": design.name, "agents": size, "first_sweep_s": round(settle_s, 1), **idle,
        "stored_p50_ms": percentile(stored, 50), "stored_p99_ms": percentile(stored, 99),
        "stream_p50_ms": percentile(delivered, 50), "stream_p99_ms": percentile(delivered, 99),
        "stored_slowest_ms": sorted(stored)[-3:], "stream_slowest_ms": sorted(delivered)[-3:],
        "api_creates_per_s": rate, "create_cpu_ms_web": per_create[0], "create_cpu_ms_broker": per_create[1],
        "create_cpu_ms_postgres": per_create[2],
    }
    print(json.dumps(row), flush=True)
    return row | {"created": created}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    sizes = [int(s) for s in args.sizes.split(",")]
    token = services.run_token()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    with (
        private_rabbitmq() as node,
        services.postgres_database(f"scale_{token}") as database_url,
        polling_checkout(args.polling_ref) as polling_root,
        tempfile.TemporaryDirectory() as tmp,
    ):
        env = {"DATABASE_URL": database_url, "BROKER_URL": node.url, "REDIS_URL": redis_url,
               "MAILBOX_SWEEP_RATE": str(args.sweep_rate)}
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "BROKER_URL": node.url, "REDIS_URL": redis_url})
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"))
            _key_row, key = auth.create_key("scale")
            workspace_id = _key_row.workspace_id
        principal = Principal(workspace_id=workspace_id, key_id="", actor="bench")
        engine = create_engine(database_url)
        topology.declare_topology(node.url)
        baseline_mb = node_memory_mb(node)
        floor = bare_declares(node.url, args.floor_declares)
        print(f"floor: {floor:.0f} bare inbox declares/s", flush=True)
        designs = [Design("notified", ROOT), Design("polling", polling_root)]
        registered = 0
        bulk_rates: list[float] = []
        active: list[str] = []
        sender = ""
        for size in sizes:
            missing = size - registered
            if missing > 0:
                _made, rate = bulk_create(app, principal, missing, node, args.max_broker_mb)
                bulk_rates.append(rate)
            with engine.connect() as conn:
                registered = int(conn.execute(text("select count(*) from agents")).scalar_one())
                if not active:
                    ids = list(conn.execute(text("select id from agents order by created_at limit :n"),
                                            {"n": ACTIVE + 1}).scalars())
                    sender, active = ids[0], ids[1:]
            memory_mb = node_memory_mb(node)
            print(f"{registered} agents registered; broker {memory_mb:.0f} MB", flush=True)
            for design in designs:
                if design.name == "polling" and size > args.polling_max:
                    continue
                declare_rate = None
                if design.name == "polling":
                    declare_rate = declare_all(app)
                    memory_mb = node_memory_mb(node)
                    print(f"every inbox declared ({declare_rate:.0f}/s); broker {memory_mb:.0f} MB", flush=True)
                row = measure(design, registered, env, Path(tmp), node, key, engine, sender, active, args)
                registered += len(row.pop("created"))
                row["broker_mem_mb"] = memory_mb
                row["mem_per_agent_kb"] = (memory_mb - baseline_mb) * 1000 / size
                row["declare_all_per_s"] = declare_rate
                row["bulk_creates_per_s"] = bulk_rates[-1] if bulk_rates else None
                row["api_create_ratio"] = row["api_creates_per_s"] / floor
                rows.append(row)
            if memory_mb > args.max_broker_mb:
                print(f"broker memory {memory_mb:.0f} MB > {args.max_broker_mb}: stopping here", flush=True)
                break
        engine.dispose()
        with app.app_context():
            db.engine.dispose()
    return {"rows": rows, "floor_declares_per_s": floor, "floor": "bare inbox declares (declare + bind) from "
            f"{CLIENTS} connections, same run", "active": ACTIVE, "sends": args.sends, "streams": args.streams,
            "stream_sends": args.stream_sends, "idle_s": args.idle_s, "sweep_rate": args.sweep_rate,
            "polling_ref": args.polling_ref, "broker": "private RabbitMQ node (rabbitmq-server 3.10), removed after"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--polling-max", type=int, default=10_000, help="largest size the polling design runs at")
    parser.add_argument("--polling-ref", default=POLLING_REF)
    parser.add_argument("--sends", type=int, default=200)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--stream-sends", type=int, default=100)
    parser.add_argument("--api-creates", type=int, default=800)
    parser.add_argument("--floor-declares", type=int, default=2000)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--sweep-rate", type=float, default=100.0)
    parser.add_argument("--max-broker-mb", type=float, default=6000.0)
    args = parser.parse_args()
    result = run(args)
    print(table(result["rows"], ["design", "agents", "first_sweep_s", "mailbox_idle_cpu_pct", "broker_idle_cpu_pct",
                                 "stored_p50_ms", "stored_p99_ms", "stream_p50_ms", "stream_p99_ms",
                                 "api_creates_per_s", "api_create_ratio", "create_cpu_ms_web",
                                 "create_cpu_ms_broker", "create_cpu_ms_postgres", "bulk_creates_per_s",
                                 "mem_per_agent_kb", "declare_all_per_s"]))
    print(f"floor: {result['floor_declares_per_s']:.0f} bare inbox declares/s")
    bars = {f"{row['design']} {row['agents']:,}": row["mailbox_idle_cpu_pct"] for row in result["rows"]}
    print(f"\nwritten: {save('agents_scale', result, bars, ylabel='mailbox idle CPU, % of one core')}")


if __name__ == "__main__":
    main()
