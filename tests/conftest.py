"""Session-wide real services: every run gets its own PostgreSQL database, RabbitMQ vhost and Redis DB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask_migrate import upgrade

from app import create_app
from tests.support import services
from tests.support.api import ApiClient, new_workspace_client

# Fixture modules registered once for the whole suite (the real LLM test servers; coordination's brokers and
# databases), instead of re-exported by a conftest in every folder that uses them.
pytest_plugins = ["tests.support.fake_llm_servers", "tests.integration.coordination.helpers", "tests.support.tracing",
                  "tests.support.webhook_receiver", "tests.support.tools"]

MIGRATIONS = str(Path(__file__).resolve().parent.parent / "migrations")


@pytest.fixture(scope="session")
def run_token() -> str:
    return services.run_token()


@pytest.fixture(scope="session")
def pg_url(run_token: str) -> Iterator[str]:
    with services.postgres_database(run_token) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'agent_runtime.db'}"


@pytest.fixture(scope="session")
def broker_url(run_token: str) -> Iterator[str]:
    with services.rabbitmq_vhost(run_token) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(run_token: str) -> Iterator[str]:
    with services.redis_database(run_token) as url:
        yield url


def build_app(database_url: str, broker_url: str, redis_url: str) -> Flask:
    """An app on the run's services with its schema migrated the way operators do it."""
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "BROKER_URL": broker_url,
            "REDIS_URL": redis_url,
        }
    )
    with app.app_context():
        upgrade(directory=MIGRATIONS)
    return app


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, broker_url: str, redis_url: str) -> Flask:
    """The API on each supported database; tests isolate themselves by workspace."""
    database_url = request.getfixturevalue(f"{'pg' if request.param == 'postgresql' else 'sqlite'}_url")
    return build_app(database_url, broker_url, redis_url)


@pytest.fixture(scope="session")
def pg_app(pg_url: str, broker_url: str, redis_url: str) -> Flask:
    """PostgreSQL only: for tests that share the database with worker processes."""
    return build_app(pg_url, broker_url, redis_url)


@pytest.fixture
def api(app: Flask) -> ApiClient:
    return new_workspace_client(app)


@pytest.fixture
def other_api(app: Flask) -> ApiClient:
    return new_workspace_client(app)
