"""Fixtures shared by the coordination integration and property tests: own vhost, own databases."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, func, select

from coordination import schema, topology
from coordination.social import SocialLayer
from tests.support import services


def new_agent_id(prefix: str = "agent") -> str:
    """Unique per test, so tests never see each other's queues or rows."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def count_rows(engine: Engine, agent_id: str) -> int:
    """Stored inbox rows of one agent."""
    table = schema.inbox_messages
    with engine.connect() as db:
        return int(db.execute(select(func.count()).where(table.c.to_agent_id == agent_id)).scalar_one())


def stored_ids(engine: Engine, agent_id: str) -> list[str]:
    """message_ids of an agent's inbox in seq order."""
    table = schema.inbox_messages
    with engine.connect() as db:
        query = select(table.c.message_id).where(table.c.to_agent_id == agent_id).order_by(table.c.seq)
        return [row.message_id for row in db.execute(query)]


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0, interval_s: float = 0.02) -> bool:
    """Poll a condition with a deadline (no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


@pytest.fixture(scope="session")
def coord_broker_url() -> Iterator[str]:
    """A vhost of our own: the mailbox lists every inbox of its vhost, so no other suite shares it."""
    with services.rabbitmq_vhost(f"coord_{services.run_token()}") as url:
        topology.declare_topology(url)
        yield url


@pytest.fixture(scope="session")
def coord_pg_url() -> Iterator[str]:
    """A PostgreSQL database of our own (the app's migrations own the run's pg_url)."""
    with services.postgres_database(f"coord_{services.run_token()}") as url:
        yield url


@pytest.fixture(scope="session")
def pg_engine(coord_pg_url: str) -> Iterator[Engine]:
    engine = create_engine(coord_pg_url, pool_size=10, max_overflow=10)
    schema.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def coord_sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('coordination') / 'coordination.db'}"


@pytest.fixture(scope="session")
def sqlite_engine(coord_sqlite_url: str) -> Iterator[Engine]:
    engine = create_engine(coord_sqlite_url, connect_args={"timeout": 15})
    schema.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each test that takes `engine` runs on SQLite and on PostgreSQL."""
    name = "pg_engine" if request.param == "postgresql" else "sqlite_engine"
    result: Engine = request.getfixturevalue(name)
    return result


@pytest.fixture
def agents(coord_broker_url: str) -> Iterator[Callable[..., str]]:
    """Factory of agents with a declared inbox; inboxes are deleted at the end of the test."""
    created: list[str] = []

    def make(prefix: str = "agent", queue_type: str = "classic", max_attempts: int = 5) -> str:
        agent_id = new_agent_id(prefix)
        topology.declare_agent_inbox(coord_broker_url, agent_id, queue_type=queue_type, max_attempts=max_attempts)
        created.append(agent_id)
        return agent_id

    yield make
    for agent_id in created:
        topology.delete_agent_inbox(coord_broker_url, agent_id)


@pytest.fixture
def social(coord_broker_url: str, engine: Engine) -> Iterator[SocialLayer]:
    layer = SocialLayer(coord_broker_url, engine)
    yield layer
    layer.close()


@pytest.fixture
def pg_social(coord_broker_url: str, pg_engine: Engine) -> Iterator[SocialLayer]:
    layer = SocialLayer(coord_broker_url, pg_engine)
    yield layer
    layer.close()
