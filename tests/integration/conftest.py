"""Integration tests that need a real prefork Celery worker share one per session, on PostgreSQL, RabbitMQ and Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from tests.support.api import ApiClient, new_workspace_client
from tests.support.worker import WorkerProcess


@pytest.fixture(scope="session")
def worker(pg_app: Flask, pg_url: str, broker_url: str, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker for the session; pg_app has migrated the schema it needs."""
    process = WorkerProcess(database_url=pg_url, broker_url=broker_url, redis_url=redis_url,
                            log_path=tmp_path_factory.mktemp("worker") / "worker.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def wapi(pg_app: Flask, worker: WorkerProcess) -> ApiClient:
    """A fresh workspace on the app the worker shares (PostgreSQL)."""
    return new_workspace_client(pg_app)


@pytest.fixture
def other_wapi(pg_app: Flask, worker: WorkerProcess) -> ApiClient:
    return new_workspace_client(pg_app)
