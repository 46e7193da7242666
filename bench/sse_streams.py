"""Live SSE streams held by ONE web process (gunicorn, gevent worker, --workers 1): 100, 500, 1,000 clients each
follow an execution's GET /executions/{id}/events while the bench XADDs deltas straight into the executions'
Redis streams (through the same EventLog.emit the worker uses), so only the web process is measured.

    .venv/bin/python -m bench.sse_streams [--sizes 100,500,1000] [--deltas 20] [--rate 2]

Each stream gets `--deltas` deltas at `--rate` deltas/s (spread evenly over the streams), then its terminal
event. The clients run in a separate process (asyncio, raw HTTP/1.0 over loopback, no client library on the
hot path); every delta carries its XADD wall-clock time, so the lag is XADD -> parsed by the client. The bench
asserts every delta arrived once and in order (ids 1, 2, 3 ... and sequence numbers), then reports p50/p99 lag
and the web process's CPU, with the machine's load average (the box is shared: judge a run by CPU per delta
and by its load, not by one lag figure). Target: 1,000 streams, p99 < 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

NOFILE = 65_536


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (or NOFILE); children (gunicorn, clients) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else NOFILE
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- client process ----------------------------------------------------------------------------------------


TERMINAL = ("completed", "failed", "cancelled", "timed_out", "denied")


async def open_events(host: str, port: int, key: str,
                      execution_id: str) -> AsyncIterator[tuple[int, str, bytes, float]]:
    """GET /executions/{id}/events over raw HTTP/1.0: (id, event, data, time read) per event, to the terminal one."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        writer.write((f"GET /executions/{execution_id}/events HTTP/1.0\r\nHost: {host}\r\n"
                      f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n").encode())
        await writer.drain()
        status_line = await reader.readline()
        if b" 200 " not in status_line:
            rest = await reader.read(2000)
            raise RuntimeError(f"{execution_id}: {status_line!r} {rest[-400:]!r}")
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # headers
        event_id, name = 0, ""
        while line := await reader.readline():
            if line.startswith(b"id: "):
                event_id = int(line[4:])
            elif line.startswith(b"event: "):
                name = line[7:].strip().decode()
            elif line.startswith(b"data: "):
                yield event_id, name, line[6:], time.time()
                if name in TERMINAL:
                    return
    finally:
        writer.close()


async def _follow(host: str, port: int, key: str, execution_id: str, ready: asyncio.Event,
                  connected: list[int], total: int, out: dict[str, Any]) -> None:
    ids: list[int] = []
    seqs: list[int] = []
    lags: list[float] = []
    async for event_id, name, data, now in open_events(host, port, key, execution_id):
        ids.append(event_id)
        if name == "status":
            connected[0] += 1
            if connected[0] == total:
                ready.set()
        elif name == "delta":
            delta = json.loads(data)
            seqs.append(int(delta["seq"]))
            lags.append((now - float(delta["t"])) * 1000)
    out[execution_id] = {"ids": ids, "seqs": seqs, "lags": lags}


async def _clients(host: str, port: int, key: str, execution_ids: list[str]) -> dict[str, Any]:
    ready = asyncio.Event()
    connected = [0]
    out: dict[str, Any] = {}
    tasks = []
    for index, execution_id in enumerate(execution_ids):
        tasks.append(asyncio.create_task(
            _follow(host, port, key, execution_id, ready, connected, len(execution_ids), out)))
        if index % 50 == 49:
            await asyncio.sleep(0.01)  # do not SYN-flood the listen backlog
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED, timeout=120)
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    if failed or not ready.is_set():
        print(f"FAILED {failed[0].exception() if failed else 'timeout'}", flush=True)
        sys.exit(1)
    print("READY", flush=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {"streams": out, "errors": errors[:20], "error_count": len(errors)}


def client_main(host: str, port: int, key: str, ids_file: Path, out_file: Path) -> None:
    raise_nofile()
    execution_ids = json.loads(ids_file.read_text())
    result = asyncio.run(_clients(host, port, key, execution_ids))
    out_file.write_text(json.dumps(result))


# --- the bench --------------------------------------------------------------------------------------------


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def one_size(app: Any, base_port: int, web_pid: int, key: str, workspace_id: str, agent_id: str, size: int,
             deltas: int, rate: float, tmp: Path, profile_dir: Path | None = None) -> dict[str, Any]:
    """Open `size` streams, stream `deltas` deltas into each, check delivery, measure lag."""
    from app.extensions import db
    from app.models import Execution
    from app.models.types import new_id
    from app.services.executions.events import event_log
    from app.timeutil import utcnow

    with app.app_context():
        execution_ids = [new_id() for _ in range(size)]
        db.session.execute(Execution.__table__.insert(), [
            {"id": eid, "workspace_id": workspace_id, "agent_id": agent_id, "status": "running", "action": "chat",
             "message": "sse bench", "stream": True, "timeout_s": 600, "prompt_tokens": 0, "completion_tokens": 0,
             "attempts": 1, "steps": [], "created_at": utcnow()}
            for eid in execution_ids])
        db.session.commit()
        events = event_log()
        pipe = events.redis.pipeline(transaction=False)
        for eid in execution_ids:
            events.emit_on(pipe, eid, "status", {"execution_id": eid, "status": "running"})
        pipe.execute()

    ids_file, out_file = tmp / f"ids-{size}.json", tmp / f"out-{size}.json"
    ids_file.write_text(json.dumps(execution_ids))
    client = subprocess.Popen(
        [sys.executable, "-m", "bench.sse_streams", "--client", "--port", str(base_port), "--key", key,
         "--ids", str(ids_file), "--out", str(out_file)],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True,
    )
    assert client.stdout is not None
    line = client.stdout.readline()
    if line.strip() != "READY":
        client.kill()
        raise RuntimeError(f"clients did not connect: {line!r}")
    worker_pids = _children(web_pid)
    connections = _redis_clients(app)
    cpu_before = sum(_process_cpu_s(pid) for pid in worker_pids)
    from bench.profile import recording

    spy = recording(web_pid, profile_dir / f"web-sse-{size}.txt" if profile_dir is not None else None)
    spy.__enter__()
    started = time.perf_counter()
    # Round r: every stream gets delta r; streams are spread evenly over the 1/rate interval.
    with app.app_context():
        events = event_log()
        gap = 1.0 / rate / size
        tick = time.perf_counter()
        batch = max(1, int(size * rate / 200))  # about 200 pipelines per second
        for seq in range(deltas):
            for start in range(0, size, batch):
                pipe = events.redis.pipeline(transaction=False)
                for eid in execution_ids[start:start + batch]:
                    events.emit_on(pipe, eid, "delta", {"text": f"w{seq} ", "seq": seq, "t": time.time()})
                pipe.execute()
                tick += gap * batch
                pause = tick - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
        for eid in execution_ids:
            events.emit(eid, "completed", {"execution_id": eid, "status": "completed", "output": ""})
    client.wait(timeout=300)
    elapsed = time.perf_counter() - started
    spy.__exit__(None, None, None)
    cpu = sum(_process_cpu_s(pid) for pid in worker_pids) - cpu_before
    result = json.loads(out_file.read_text())
    lags: list[float] = []
    lost = reordered = 0
    for eid in execution_ids:
        stream = result["streams"].get(eid)
        if stream is None:
            lost += deltas
            continue
        if stream["ids"] != list(range(1, len(stream["ids"]) + 1)):
            reordered += 1
        lost += deltas - len(stream["seqs"])
        if stream["seqs"] != sorted(stream["seqs"]) or len(set(stream["seqs"])) != len(stream["seqs"]):
            reordered += 1
        lags.extend(stream["lags"])
    from bench.report import percentile

    return {
        "streams": size, "deltas_each": deltas, "rate_per_stream": rate, "delivered": len(lags),
        "lost": lost, "out_of_order_streams": reordered, "client_errors": result["error_count"],
        "lag_p50_ms": percentile(lags, 50), "lag_p99_ms": percentile(lags, 99), "lag_max_ms": max(lags or [0]),
        "events_per_s": len(lags) / elapsed, "web_cpu_s": cpu, "web_cpu_us_per_delta": cpu * 1e6 / max(1, len(lags)),
        "redis_clients_during": connections, "load_avg_1m": os.getloadavg()[0],
    }


def _redis_clients(app: Any) -> int:
    with app.app_context():
        from app.services.executions.events import event_log

        return int(event_log().redis.info("clients")["connected_clients"])


def run(sizes: list[int], deltas: int, rate: float, profile_dir: Path | None = None) -> dict[str, Any]:
    import tempfile

    import httpx
    from flask_migrate import upgrade
    from sqlalchemy import select

    from app import create_app
    from app.extensions import db
    from app.models import Agent
    from app.services import auth
    from bench.execute import GUNICORN, free_port, serving, wait_until
    from tests.support import services
    from tests.support.worker import ROOT

    nofile = raise_nofile()
    token = services.run_token()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    rows = []
    with services.postgres_database(f"bench_sse_{token}") as database_url, tempfile.TemporaryDirectory() as tmp:
        env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
        os.environ.update(env)
        app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "REDIS_URL": redis_url})
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"))
            _row, key = auth.create_key("sse-bench")
        port = free_port()
        web = subprocess.Popen(
            [GUNICORN, "--worker-class", "gevent", "--workers", "1", "--worker-connections", str(max(sizes) + 500),
             "--backlog", "4096", "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "wsgi:app"],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp) / "web.log", "wb"),  # noqa: SIM115 - closed with the temporary directory
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: serving(base), 30, "gunicorn")
            headers = {"Authorization": f"Bearer {key}"}
            agent = httpx.post(f"{base}/agents", headers=headers, json={"name": "sse", "maturity_level": "AUTONOMOUS"})
            agent_id = agent.raise_for_status().json()["id"]
            with app.app_context():  # the API does not show an agent's workspace
                workspace_id = db.session.execute(select(Agent.workspace_id).where(Agent.id == agent_id)).scalar_one()
            for size in sizes:
                row = one_size(app, port, web.pid, key, workspace_id, agent_id, size, deltas, rate, Path(tmp),
                               profile_dir)
                rows.append(row)
                print(f"  {size} streams: p99 {row['lag_p99_ms']:.1f} ms, lost {row['lost']}", flush=True)
        except Exception:
            print((Path(tmp) / "web.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            web.terminate()
            try:
                web.wait(timeout=20)
            except subprocess.TimeoutExpired:
                web.kill()
                web.wait(timeout=10)
    return {"rows": rows, "setup": {"web": "gunicorn gevent, 1 worker", "clients": "1 asyncio process, HTTP/1.0",
                                     "nofile": nofile, "deltas_each": deltas, "rate_per_stream": rate}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,500,1000")
    parser.add_argument("--deltas", type=int, default=20, help="deltas per stream")
    parser.add_argument("--rate", type=float, default=2.0, help="deltas per second per stream")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy record the web process while deltas flow (raw stacks into DIR)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--ids", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main("127.0.0.1", args.port, args.key, args.ids, args.out)
        return
    from bench.report import save, table

    result = run([int(s) for s in args.sizes.split(",")], args.deltas, args.rate, args.profile)
    print(table(result["rows"], ["streams", "delivered", "lost", "out_of_order_streams", "client_errors",
                                 "lag_p50_ms", "lag_p99_ms", "lag_max_ms", "events_per_s",
                                 "web_cpu_us_per_delta", "redis_clients_during", "load_avg_1m"]))
    worst = result["rows"][-1]
    result["target_met"] = worst["lost"] == 0 and worst["out_of_order_streams"] == 0 and worst["lag_p99_ms"] < 200
    print(f"\n{worst['streams']} streams: p99 lag {worst['lag_p99_ms']:.1f} ms   target < 200 ms, nothing lost "
          f"-> {'met' if result['target_met'] else 'NOT met'}")
    bars = {f"{row['streams']} p99 ms": row["lag_p99_ms"] for row in result["rows"]}
    print(f"\nwritten: {save('sse_streams', result, bars, ylabel='delivery lag p99 (ms)')}")


if __name__ == "__main__":
    main()
