"""An app on a PostgreSQL database of its own (the session's worker never runs its chains), and executions
recorded there without a broker: for tests that drive the steps themselves."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask

from app.extensions import db
from app.services import auth
from app.services.executions import requests
from app.services.executions.requests import Enqueue
from tests.conftest import build_app
from tests.support import services
from tests.support.api import ApiClient


@contextmanager
def own_database_app(prefix: str, broker_url: str, redis_url: str) -> Iterator[Flask]:
    """The app on a fresh database, dropped afterwards with its connections."""
    with services.postgres_database(f"{prefix}_{services.run_token()}") as url:
        app = build_app(url, broker_url, redis_url)
        yield app
        with app.app_context():
            db.engine.dispose()


def record_execution(app: Flask, api: ApiClient, agent_id: str, enqueue: Enqueue) -> str:
    """POST /execute's service call with the given enqueue (a no-op one: the chain is never sent)."""
    with app.app_context():
        principal = auth.authenticate(api.key)
        assert principal is not None
        body = requests.ExecutionRequest(message="hi", stream=False, action="chat", timeout_s=60, metadata=None)
        return requests.request(principal, agent_id, body, idempotency_key=None, enqueue=enqueue).id
