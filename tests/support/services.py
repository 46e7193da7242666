"""Per-run isolation on the real services: a fresh PostgreSQL database, a RabbitMQ vhost, a Redis DB."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import httpx
import psycopg
import redis

PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test")
AMQP_HOST = os.environ.get("TEST_AMQP_HOST", "127.0.0.1:5672")
AMQP_USER = os.environ.get("TEST_AMQP_USER", "guest")
AMQP_PASSWORD = os.environ.get("TEST_AMQP_PASSWORD", "guest")
MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")
REDIS_BASE = os.environ.get("TEST_REDIS_BASE", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "9"))


def run_token() -> str:
    """A short unique name so parallel or leftover runs never share state."""
    return uuid.uuid4().hex[:10]


@contextmanager
def postgres_database(token: str) -> Iterator[str]:
    """Create a fresh database for this run and drop it afterwards."""
    name = f"agentrt_test_{token}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _management() -> httpx.Client:
    url = httpx.URL(MANAGEMENT_URL)
    return httpx.Client(
        base_url=str(url.copy_with(username=None, password=None)),
        auth=(url.username or "guest", url.password or "guest"),
        timeout=30,
    )


@contextmanager
def rabbitmq_vhost(token: str) -> Iterator[str]:
    """Create a vhost for this run (management API) and delete it afterwards."""
    vhost = f"agentrt_test_{token}"
    with _management() as api:
        api.put(f"/api/vhosts/{quote(vhost, safe='')}").raise_for_status()
        api.put(
            f"/api/permissions/{quote(vhost, safe='')}/{AMQP_USER}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
    try:
        yield f"amqp://{AMQP_USER}:{AMQP_PASSWORD}@{AMQP_HOST}/{quote(vhost, safe='')}"
    finally:
        with _management() as api:
            api.delete(f"/api/vhosts/{quote(vhost, safe='')}")


@contextmanager
def redis_database(token: str | None = None) -> Iterator[str]:
    """Claim a Redis DB number of its own for this run (a lease in DB 0), flushed before and after.

    Parallel test sessions on one machine each get a different DB, so one never flushes another's streams.
    """
    token = token or run_token()
    claims = redis.Redis.from_url(f"{REDIS_BASE}/0")
    number = None
    for candidate in [REDIS_DB, *(n for n in range(1, 16) if n != REDIS_DB)]:
        if claims.set(f"agentrt:test-db:{candidate}", token, nx=True, ex=3 * 3600):
            number = candidate
            break
    if number is None:
        raise RuntimeError("every Redis test DB (1-15) is claimed by another running session")
    url = f"{REDIS_BASE}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        if claims.get(f"agentrt:test-db:{number}") == token.encode():
            claims.delete(f"agentrt:test-db:{number}")
        claims.close()
