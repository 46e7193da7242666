"""A worker bootstep that runs one pass of work every N seconds in a thread of the worker's main process.

A thread, not the worker's timer: the passes query the database and publish with confirms, which must not stall
the event loop that feeds the pool. A failed pass (the database, Redis or the broker down) is logged, and the
next one retries.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps
from flask import Flask

log = logging.getLogger(__name__)


class PeriodicStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Subclasses name the interval's config key (0 turns it off), the thread, and build the pass."""

    interval_setting = ""
    thread_name = ""
    # After the pool: prefork children are forked before this thread exists, so none inherits a lock it holds
    # (a child forked mid-pass deadlocked on its first task).
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def build_pass(self, celery_app: Celery, flask_app: Flask) -> Callable[[], None]:
        """The work of one pass (called inside an app context)."""
        raise NotImplementedError

    def start(self, parent: Any) -> None:
        celery_app: Celery = parent.app
        flask_app: Flask = celery_app.flask_app
        interval_s = float(flask_app.config[self.interval_setting])
        if interval_s <= 0:
            return
        work = self.build_pass(celery_app, flask_app)
        self._thread = threading.Thread(target=self._run, args=(flask_app, work, interval_s),
                                        name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, flask_app: Flask, work: Callable[[], None], interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                with flask_app.app_context():
                    work()
            except Exception:  # noqa: BLE001 - a dependency is down: the next pass retries
                log.warning("%s pass failed", self.thread_name, exc_info=True)
