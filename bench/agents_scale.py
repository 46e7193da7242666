"""Cost as agents grow: inbox declare time, confirmed send rate and broker memory at 100 / 1,000 / 10,000 agents.

Runs in a vhost of its own (removed afterwards). The floor is the same run's send rate at the smallest size:
a ratio near 1.0 at 10,000 agents means the number of queues does not slow sends down.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from typing import Any

import httpx
from kombu import Connection
from sqlalchemy import create_engine

from bench.report import median, save, table
from coordination import schema, topology
from coordination.social import SocialLayer
from tests.support import services


def broker_memory_mb(api: httpx.Client) -> float:
    """Total memory of the RabbitMQ node(s), from the management API."""
    nodes = api.get("/api/nodes").raise_for_status().json()
    return sum(node.get("mem_used", 0) for node in nodes) / 1e6


def declare_inboxes(broker_url: str, agent_ids: list[str]) -> float:
    """Declare every inbox over one connection; returns seconds."""
    started = time.perf_counter()
    with Connection(broker_url) as conn:
        channel = conn.channel()
        topology.declare_topology_on(channel)
        for agent_id in agent_ids:
            topology.inbox_queue(agent_id)(channel).declare()
    return time.perf_counter() - started


def send_rate(social: SocialLayer, agent_ids: list[str], sends: int) -> float:
    """Confirmed single sends per second to random agents."""
    rng = random.Random(7)
    started = time.perf_counter()
    for index in range(sends):
        social.send_message(from_agent_id="bench", to_agent_id=rng.choice(agent_ids), message={"n": index})
    return sends / (time.perf_counter() - started)


def delete_inboxes(broker_url: str, agent_ids: list[str]) -> None:
    with Connection(broker_url) as conn:
        channel = conn.channel()
        for agent_id in agent_ids:
            channel.queue_delete(topology.inbox_queue_name(agent_id))


def run(sizes: list[int], sends: int, repeats: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    token = services.run_token()
    with services.rabbitmq_vhost(f"bench_{token}") as broker_url, services._management() as api:
        engine = create_engine("sqlite://")
        schema.metadata.create_all(engine)
        social = SocialLayer(broker_url, engine)
        baseline_mb = broker_memory_mb(api)
        for size in sizes:
            agent_ids = [uuid.uuid4().hex for _ in range(size)]
            declare_s = declare_inboxes(broker_url, agent_ids)
            rates = [send_rate(social, agent_ids, sends) for _ in range(repeats)]
            memory_mb = broker_memory_mb(api)
            rows.append({
                "agents": size,
                "declare_s": declare_s,
                "declares_per_s": size / declare_s,
                "sends_per_s": median(rates),
                "broker_mem_mb": memory_mb,
                "mem_per_queue_kb": (memory_mb - baseline_mb) * 1000 / size,
            })
            delete_inboxes(broker_url, agent_ids)
        social.close()
    floor = rows[0]["sends_per_s"]
    for row in rows:
        row["send_ratio"] = row["sends_per_s"] / floor
    return {"rows": rows, "floor": f"send rate at {sizes[0]} agents, same run", "sends": sends, "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--sends", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = run([int(s) for s in args.sizes.split(",")], args.sends, args.repeats)
    print(table(result["rows"], ["agents", "declare_s", "declares_per_s", "sends_per_s", "send_ratio",
                                 "broker_mem_mb", "mem_per_queue_kb"]))
    bars = {f"{row['agents']:,}": row["sends_per_s"] for row in result["rows"]}
    print(f"\nwritten: {save('agents_scale', result, bars, ylabel='confirmed sends/s')}")


if __name__ == "__main__":
    main()
