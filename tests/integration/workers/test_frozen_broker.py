"""A broker node that freezes (sockets open, nothing answered): Celery's publishes end and move to the next node.

BROKER_URL lists a proxy in front of the shared RabbitMQ first and the same vhost directly second; freezing the
proxy is what a SIGSTOPped cluster node looks like to a client. Before the fix, execute hung for ever in the
close handshake kombu sends before failing over, and the worker's event dispatcher waited on the frozen node
at every event. Each test would then hang: the timeout mark turns that into a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import amqp
import pytest
from flask import Flask
from kombu import Producer

from app.celery_failover import FailoverConnection, FailoverDispatcher
from tests.conftest import build_app
from tests.support import services
from tests.support.api import new_workspace_client
from tests.support.polling import wait_for
from tests.support.tcp_proxy import CuttableProxy, through

pytestmark = pytest.mark.timeout(90)


@dataclass
class FrozenFirstNode:
    """The app on `proxy;direct`, the proxy to freeze, and the direct URL."""

    app: Flask
    proxy: CuttableProxy
    direct_url: str


@pytest.fixture
def frozen_first(pg_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FrozenFirstNode]:
    monkeypatch.setenv("CONFIRM_TIMEOUT_S", "1")
    monkeypatch.setenv("BROKER_SOCKET_TIMEOUT_S", "1")
    with services.rabbitmq_vhost(f"frozen_{services.run_token()}") as direct_url:
        parts = urlsplit(direct_url)
        proxy = CuttableProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
        try:
            app = build_app(pg_url, f"{through(direct_url, proxy.port)};{direct_url}", redis_url)
            yield FrozenFirstNode(app, proxy, direct_url)
            app.extensions["celery"].pool.force_close_all()
        finally:
            proxy.close()


def test_execute_on_a_frozen_node_answers_503_and_the_retry_goes_to_the_next_node(
    frozen_first: FrozenFirstNode,
) -> None:
    api = new_workspace_client(frozen_first.app)
    agent = api.create_agent(llm={"provider": "scripted", "options": {"text": "ok"}})
    assert api.post(f"/agents/{agent['id']}/execute", json={"message": "before"}).status_code == 200
    frozen_first.proxy.freeze()
    frozen = api.post(f"/agents/{agent['id']}/execute", json={"message": "frozen"})
    assert frozen.status_code == 503, frozen.get_json()
    failed = api.get(f"/executions/{frozen.get_json()['error']['details']['execution_id']}").get_json()
    assert failed["status"] == "failed"
    retried = api.post(f"/agents/{agent['id']}/execute", json={"message": "frozen"})
    assert retried.status_code == 200, retried.get_json()


def test_a_publish_the_node_never_answers_moves_the_connection_to_the_next_node(
    frozen_first: FrozenFirstNode,
) -> None:
    """What Celery does with a chain's next step in a worker: a confirmed publish with no deadline of its own,
    retried on the same producer (revived) after an error. The retry must not land on the frozen node."""
    celery_app = frozen_first.app.extensions["celery"]
    with celery_app.producer_or_acquire() as producer:  # a pooled connection, as Celery's own publishes use
        connection = producer.connection
        assert isinstance(connection, FailoverConnection)
        producer.publish({"n": 1}, routing_key="frozen-test-nobody")  # through the proxy; confirmed, dropped
        frozen_first.proxy.freeze()
        with pytest.raises(TimeoutError):
            producer.publish({"n": 2}, routing_key="frozen-test-nobody")
        producer.revive(connection)
        producer.publish({"n": 3}, routing_key="frozen-test-nobody")
        assert connection.port == urlsplit(frozen_first.direct_url).port
    with celery_app.connection_for_write() as fresh:  # built from the first listed node, which is skipped now
        Producer(fresh).publish({"n": 4}, routing_key="frozen-test-nobody")
        assert fresh.port == urlsplit(frozen_first.direct_url).port


def test_the_event_dispatcher_leaves_a_frozen_node(frozen_first: FrozenFirstNode) -> None:
    celery_app = frozen_first.app.extensions["celery"]
    direct = urlsplit(frozen_first.direct_url)
    with celery_app.connection_for_write() as connection:
        dispatcher = celery_app.events.Dispatcher(connection, hostname="frozen-test", enabled=True)
        assert isinstance(dispatcher, FailoverDispatcher)
        dispatcher.send("worker-heartbeat")
        frozen_first.proxy.freeze()
        dispatcher.send("worker-heartbeat")  # waits out the socket timeout, buffered, the connection moves on
        assert connection.port == direct.port
        watcher = amqp.Connection(f"{direct.hostname}:{direct.port}", userid=direct.username,
                                  password=direct.password, virtual_host=direct.path[1:] or "/")
        watcher.connect()
        try:
            channel = watcher.channel()
            queue = channel.queue_declare(exclusive=True).queue
            channel.queue_bind(queue, exchange="celeryev", routing_key="worker.#")
            dispatcher.send("worker-heartbeat")
            assert wait_for(lambda: channel.basic_get(queue, no_ack=True), timeout=10, what="an event")
        finally:
            watcher.close()
        dispatcher.close()
