"""Session-wide real services: every run gets its own PostgreSQL database, RabbitMQ vhost and Redis DB."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import services


@pytest.fixture(scope="session")
def run_token() -> str:
    return services.run_token()


@pytest.fixture(scope="session")
def pg_url(run_token: str) -> Iterator[str]:
    with services.postgres_database(run_token) as url:
        yield url


@pytest.fixture(scope="session")
def broker_url(run_token: str) -> Iterator[str]:
    with services.rabbitmq_vhost(run_token) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with services.redis_database() as url:
        yield url
