"""Fault-injection fixtures: a private RabbitMQ node booted in the background, Celery's default app restored."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from celery import _state as celery_state

from tests.support.rabbit_node import RabbitNode, private_rabbitmq


class BackgroundRabbit:
    """Boots a private node in a thread (it takes ~15 s) so earlier chaos tests run while it starts."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._node: RabbitNode | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="private-rabbitmq", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with private_rabbitmq() as node:
                self._node = node
                self._ready.set()
                self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported to the test that waits for the node
            self._error = exc
            self._ready.set()

    def node(self, timeout_s: float = 120.0) -> RabbitNode:
        """The running node, waiting for its boot to finish."""
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"private RabbitMQ node not up after {timeout_s}s")
        if self._node is None:
            raise RuntimeError("private RabbitMQ node failed to start") from self._error
        return self._node

    def close(self) -> None:
        self._stop.set()
        self._thread.join(90)


@pytest.fixture(scope="session")
def background_rabbit() -> Iterator[BackgroundRabbit]:
    booting = BackgroundRabbit()
    yield booting
    booting.close()


@pytest.fixture(autouse=True)
def boot_private_rabbit_early(background_rabbit: BackgroundRabbit) -> None:
    """Every chaos test asks for it, so the node starts booting with the first one."""


@pytest.fixture
def rabbit_node(background_rabbit: BackgroundRabbit) -> RabbitNode:
    return background_rabbit.node()


@pytest.fixture(autouse=True)
def restore_celery_default() -> Iterator[None]:
    """build_app() makes its Celery app the process default; give the session's back afterwards."""
    previous = celery_state.default_app
    yield
    if previous is not None:
        previous.set_default()


@pytest.fixture(autouse=True)
def quiet_expected_warnings() -> Iterator[None]:
    """Faults make the app log a warning per refused request; with -s they would bury the counts."""
    loggers = [logging.getLogger(name) for name in ("app", "coordination")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
