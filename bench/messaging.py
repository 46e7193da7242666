"""Confirmed agent messaging against the raw floor measured in the same run, on the same broker and vhost.

Throughput (messages/s, each one confirmed by the broker before it counts):
  raw_single     pika BlockingConnection, confirm_delivery, mandatory publish: one round trip per message
  social_single  SocialLayer.send_message: the same, plus validation, the envelope and the session pool
  raw_pipelined  aio-pika with publisher confirms, a window of publishes in flight
  social_batch   SocialLayer.send_many: a batch published first and confirmed afterwards (pipelined)
Targets: social_single >= 0.7x raw_single, social_batch >= 0.4x raw_pipelined.

Latency send -> readable (p50/p99 ms), from just before the send until the message is in the receiver's inbox:
  get_messages   send_message, then get_messages (drains the queue under the inbox lock and reads)
  mailbox        send_message, then poll the inbox table (no drain) while `python -m coordination.mailbox` runs
                 (at the default MAILBOX_POLL_INTERVAL 0.2 s and at 0.02 s; sends arrive at random points of a cycle)

Runs in a vhost and a PostgreSQL database of its own (both removed afterwards).
Usage: .venv/bin/python -m bench.messaging [--messages 3000] [--batch 100] [--latency 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import pika
from sqlalchemy import Engine, create_engine, select

from bench.report import median, percentile, save, table
from coordination import schema, topology
from coordination.envelope import dumps, new_id
from coordination.social import SocialLayer
from tests.support import services

ROOT = Path(__file__).resolve().parent.parent
BODY = {"text": "a short agent message of typical size", "n": 0}
RECEIVER = "bench-receiver"
SENDER = "bench-sender"


def purge(broker_url: str) -> None:
    """Empty the receiver's queue between runs, so every run starts from the same state."""
    params = pika.URLParameters(broker_url)
    with pika.BlockingConnection(params) as conn:
        conn.channel().queue_purge(topology.inbox_queue_name(RECEIVER))


def rate(count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def raw_single(broker_url: str, count: int) -> float:
    """The floor for one-at-a-time confirms: pika's blocking publish waits for its own basic.ack."""
    with pika.BlockingConnection(pika.URLParameters(broker_url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        body = dumps(BODY)

        def go() -> None:
            for _ in range(count):
                props = pika.BasicProperties(message_id=new_id(), delivery_mode=2, content_type="application/json",
                                             headers={"from_agent_id": SENDER, "to_agent_id": RECEIVER, "hop": 0})
                channel.basic_publish(topology.AGENTS_EXCHANGE, RECEIVER, body, props, mandatory=True)

        return rate(count, go)


def raw_pipelined(broker_url: str, count: int, window: int) -> float:
    """The floor for pipelined confirms: aio-pika keeps `window` publishes in flight and awaits their confirms."""

    async def main() -> float:
        connection = await aio_pika.connect(broker_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(topology.AGENTS_EXCHANGE)
            body = dumps(BODY)

            async def one() -> None:
                message = aio_pika.Message(body, message_id=new_id(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                           content_type="application/json",
                                           headers={"from_agent_id": SENDER, "to_agent_id": RECEIVER, "hop": 0})
                await exchange.publish(message, routing_key=RECEIVER, mandatory=True)

            started = time.perf_counter()
            for start in range(0, count, window):
                await asyncio.gather(*(one() for _ in range(min(window, count - start))))
            return count / (time.perf_counter() - started)

    return asyncio.run(main())


def social_single(social: SocialLayer, count: int) -> float:
    def go() -> None:
        for n in range(count):
            social.send_message(from_agent_id=SENDER, to_agent_id=RECEIVER, message={**BODY, "n": n})

    return rate(count, go)


def social_batch(social: SocialLayer, count: int, batch: int) -> float:
    def go() -> None:
        for start in range(0, count, batch):
            social.send_many([{"from_agent_id": SENDER, "to_agent_id": RECEIVER, "message": {**BODY, "n": n}}
                              for n in range(start, min(count, start + batch))])

    return rate(count, go)


def latency_get_messages(social: SocialLayer, samples: int) -> list[float]:
    """Send, then read through get_messages until the message is there (it always is on the first read)."""
    after, out = 0, []
    for n in range(samples):
        started = time.perf_counter()
        message_id = social.send_message(from_agent_id=SENDER, to_agent_id=RECEIVER, message={**BODY, "n": n})[
            "message_id"]
        while True:
            rows = social.get_messages(agent_id=RECEIVER, after=after, limit=1000)
            if rows:
                after = rows[-1]["seq"]
            if any(row["message_id"] == message_id for row in rows):
                break
        out.append((time.perf_counter() - started) * 1000)
    return out


def stored(engine: Engine, message_id: str) -> bool:
    table_ = schema.inbox_messages
    with engine.connect() as db:
        return db.execute(select(table_.c.seq).where(table_.c.message_id == message_id)).first() is not None


def latency_mailbox(social: SocialLayer, engine: Engine, broker_url: str, database_url: str, samples: int,
                    poll_interval_s: float) -> list[float]:
    """Send, then poll the table (no drain) while the mailbox process moves messages in the background."""
    env = {**os.environ, "BROKER_URL": broker_url, "DATABASE_URL": database_url,
           "MAILBOX_POLL_INTERVAL": str(poll_interval_s), "RABBITMQ_MANAGEMENT_URL": services.MANAGEMENT_URL}
    proc = subprocess.Popen([sys.executable, "-m", "coordination.mailbox"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        warm = social.send_message(from_agent_id=SENDER, to_agent_id=RECEIVER, message="warm-up")["message_id"]
        deadline = time.monotonic() + 30
        while not stored(engine, warm):
            if time.monotonic() > deadline:
                raise RuntimeError("the mailbox did not start")
            time.sleep(0.01)
        out, rng = [], random.Random(11)
        for n in range(samples):
            time.sleep(rng.uniform(0, poll_interval_s))  # arrive at a random point of the mailbox's poll cycle
            started = time.perf_counter()
            message_id = social.send_message(from_agent_id=SENDER, to_agent_id=RECEIVER, message={**BODY, "n": n})[
                "message_id"]
            while not stored(engine, message_id):
                time.sleep(0.0005)
            out.append((time.perf_counter() - started) * 1000)
        return out
    finally:
        proc.terminate()
        proc.wait(15)


def run(messages: int, batch: int, samples: int, repeats: int, poll_intervals: list[float]) -> dict[str, Any]:
    token = services.run_token()
    with services.rabbitmq_vhost(f"bench_{token}") as broker_url, services.postgres_database(f"bench_{token}") as db:
        engine = create_engine(db, pool_size=5)
        schema.metadata.create_all(engine)
        topology.declare_agent_inbox(broker_url, RECEIVER)
        social = SocialLayer(broker_url, engine)
        social.send_message(from_agent_id=SENDER, to_agent_id=RECEIVER, message="warm-up")  # pool a session
        runs: dict[str, list[float]] = {"raw_single": [], "social_single": [], "raw_pipelined": [], "social_batch": []}
        for _ in range(repeats):  # interleaved, so drift in the broker's state hits every variant alike
            for name, measure in (
                ("raw_single", lambda: raw_single(broker_url, messages)),
                ("social_single", lambda: social_single(social, messages)),
                ("raw_pipelined", lambda: raw_pipelined(broker_url, messages, batch)),
                ("social_batch", lambda: social_batch(social, messages, batch)),
            ):
                purge(broker_url)
                runs[name].append(measure())
        purge(broker_url)
        get_latency = latency_get_messages(social, samples)
        purge(broker_url)
        mailbox_latency = {interval: latency_mailbox(social, engine, broker_url, db, samples, interval)
                           for interval in poll_intervals}
        social.close()
        engine.dispose()
    rates = {name: median(values) for name, values in runs.items()}
    return {
        "messages": messages,
        "batch": batch,
        "repeats": repeats,
        "broker": urlsplit(broker_url).hostname,
        "vhost": unquote(urlsplit(broker_url).path.lstrip("/")),
        "rates_per_s": rates,
        "runs": runs,
        "single_ratio": rates["social_single"] / rates["raw_single"],
        "batch_ratio": rates["social_batch"] / rates["raw_pipelined"],
        "latency_ms": {
            "get_messages": {"p50": percentile(get_latency, 50), "p99": percentile(get_latency, 99)},
            **{f"mailbox_poll_{interval}s": {"p50": percentile(values, 50), "p99": percentile(values, 99)}
               for interval, values in mailbox_latency.items()},
        },
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100, help="send_many batch size and aio-pika window")
    parser.add_argument("--latency", type=int, default=300, help="latency samples per path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--poll-intervals", default="0.2,0.02", help="the mailbox's MAILBOX_POLL_INTERVAL values")
    args = parser.parse_args()
    result = run(args.messages, args.batch, args.latency, args.repeats,
                 [float(v) for v in args.poll_intervals.split(",")])
    rates = result["rates_per_s"]
    print(table([{"path": name, "msgs_per_s": value} for name, value in rates.items()], ["path", "msgs_per_s"]))
    print(f"\nsingle: SocialLayer / raw pika = {result['single_ratio']:.2f}x (target >= 0.7)")
    print(f"batch:  send_many / pipelined aio-pika = {result['batch_ratio']:.2f}x (target >= 0.4)")
    latency = result["latency_ms"]
    print(table([{"path": name, "p50_ms": v["p50"], "p99_ms": v["p99"]} for name, v in latency.items()],
                ["path", "p50_ms", "p99_ms"]))
    print(f"\nwritten: {save('messaging', result, rates, ylabel='confirmed messages/s')}")


if __name__ == "__main__":
    main()
