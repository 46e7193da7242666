"""The bare three-task chain (bench/bare_chain_tasks.py) on each worker pool: prefork, threads, gevent, and gevent
with the AMQP heartbeat off, to show where gevent's ~100 ms stall per task comes from (docs/performance.md).

    .venv/bin/python -m bench.pool_floor [--chains 200] [--pools prefork,threads,gevent,gevent-no-heartbeat]

Celery's synloop (the consumer loop of green pools) ends every cycle with `_quick_drain(event connection,
timeout=0.1)` when heartbeats and task events are both on: it waits up to 100 ms for a frame on the event
dispatcher's connection, which never gets one, and a cycle handles one delivery. So a gevent worker takes at most
about ten messages a second, whatever its concurrency.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import redis

from app import create_app
from bench.execute import bare_chains
from tests.support import services
from tests.support.worker import WorkerProcess

POOLS = {
    "prefork": ("prefork", 4, {}),
    "threads": ("threads", 100, {}),
    "gevent": ("gevent", 100, {}),
    "gevent-no-heartbeat": ("gevent", 100, {"BROKER_HEARTBEAT_S": "0"}),
}


def run(pools: list[str], chains: int) -> dict[str, float]:
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    rates: dict[str, float] = {}
    with (services.postgres_database(f"bench_{services.run_token()}") as database_url,
          tempfile.TemporaryDirectory() as tmp):
        for name in pools:
            pool, concurrency, env = POOLS[name]
            with services.rabbitmq_vhost(f"bench_{services.run_token()}") as broker_url:
                app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "BROKER_URL": broker_url,
                                  "REDIS_URL": redis_url})
                worker = WorkerProcess(database_url=database_url, broker_url=broker_url, redis_url=redis_url,
                                       log_path=Path(tmp) / f"{name}.log", concurrency=concurrency, pool=pool,
                                       queues="executions", include=["bench.bare_chain_tasks"],
                                       extra_env=env).start()
                try:
                    client = redis.Redis.from_url(redis_url)
                    bare_chains(app.extensions["celery"], client, 20, 8)  # warm up
                    rates[name] = bare_chains(app.extensions["celery"], client, chains, 8)
                finally:
                    worker.stop()
            print(f"{name}: {rates[name]:.1f} bare chains/s ({pool} -c {concurrency}, {env or 'defaults'})",
                  flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=200)
    parser.add_argument("--pools", default=",".join(POOLS))
    args = parser.parse_args()
    run(args.pools.split(","), args.chains)


if __name__ == "__main__":
    main()
