"""The LLM step's stream loop alone, in one process: CPU per delta without Celery, the database or the web.

    .venv/bin/python -m bench.stream_loop [--streams 200] [--chunks 20] [--seconds 10] [--no-watch] [--no-keeper]

N threads each stream one call from bench/llm_server.py through OpenAIProvider.stream (each thread reads its own
response, as in the LLM worker) and emit every delta with Run.emit, under a claimed lease, on a scratch Redis DB.
Prints the process's CPU (user and system) per delta; run it with LLM_STOP_POLL_S=0.25 to match `worker-llm`.
--no-watch runs without the process's cancel watch (the runs then poll the cancel flag, as before it existed);
--no-keeper without its lease keeper (each run then refreshes its own lease).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid

from app.llm import Delta, Timeouts
from app.llm.openai import OpenAIProvider
from app.services import streams
from app.services.cancel_watch import CancelWatch, cancel_watch
from app.services.executions.lease_keeper import LeaseKeeper, lease_keeper
from app.services.executions.llm_run import LEASE_MS, Run
from tests.support.worker import ROOT


def one_stream(events: streams.EventLog, base_url: str, watch: CancelWatch | None, counted: list[int],
               keeper: LeaseKeeper | None = None) -> None:
    """What llm_step._stream_once does with a call, minus metrics and the database."""
    execution_id, token = f"stream-loop-{uuid.uuid4().hex}", uuid.uuid4().hex
    assert events.claim_run(execution_id, token, LEASE_MS)
    now = time.monotonic()
    run = Run(execution_id, token, events, deadline=now + 300, last_refresh=now, watch=watch, keeper=keeper)
    provider = OpenAIProvider(api_key="sk-bench", base_url=base_url, timeouts=Timeouts(connect=5, read=60))
    for item in provider.stream(system_prompt=None, message="hi", model="bench", options={},
                                should_stop=run.should_stop, attempt=1):
        if isinstance(item, Delta):
            run.emit("delta", {"text": item.text})
            counted.append(1)
    events.emit(execution_id, "completed", {"output": ""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-watch", action="store_true")
    parser.add_argument("--no-keeper", action="store_true", help="each run refreshes its own lease (as before)")
    args = parser.parse_args()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.llm_server", "--chunks", str(args.chunks), "--seconds", str(args.seconds)],
        cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert server.stdout is not None
        base_url = f"http://127.0.0.1:{server.stdout.readline().split()[1].decode()}/v1"
        events = streams.EventLog(streams.client(redis_url), max_events=1000, retention_s=60)
        watch = None if args.no_watch else cancel_watch(redis_url)
        keeper = None if args.no_keeper else lease_keeper(events, LEASE_MS)
        one_stream(events, base_url, watch, [], keeper)  # warm up: first-use imports and connections are not counted
        counted: list[int] = []
        threads = [threading.Thread(target=one_stream, args=(events, base_url, watch, counted, keeper))
                   for _ in range(args.streams)]
        before, started = os.times(), time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after, wall = os.times(), time.monotonic() - started
        user, system = after.user - before.user, after.system - before.system
        deltas = max(1, len(counted))
        print(f"streams={args.streams} deltas={len(counted)} wall={wall:.1f}s user={user:.2f}s sys={system:.2f}s "
              f"cpu per delta={(user + system) * 1e6 / deltas:.0f} us load={os.getloadavg()[0]:.1f}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
