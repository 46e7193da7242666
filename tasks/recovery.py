"""The workers sweep for executions nothing else would finish: pending ones whose chain no broker ever confirmed
(the web died in between), and running ones abandoned long past their deadline."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, bootsteps
from flask import Flask

from app.services.executions import sweeps
from tasks.chain import enqueuer

log = logging.getLogger(__name__)


class SweepExecutions(bootsteps.StartStopStep):  # type: ignore[misc]
    """A thread in the worker's main process that sweeps every EXECUTION_SWEEP_INTERVAL_S (0 turns it off).

    A thread, not the worker's timer: the sweep queries the database and publishes with confirms, which must not
    stall the event loop that feeds the pool.
    """

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        celery_app: Celery = parent.app
        flask_app: Flask = celery_app.flask_app
        interval_s = float(flask_app.config["EXECUTION_SWEEP_INTERVAL_S"])
        if interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._run, args=(celery_app, flask_app, interval_s),
                                        name="sweep-executions", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, celery_app: Celery, flask_app: Flask, interval_s: float) -> None:
        enqueue = enqueuer(celery_app)
        requeue_after_s = float(flask_app.config["EXECUTION_REQUEUE_AFTER_S"])
        abandoned_after_s = float(flask_app.config["EXECUTION_ABANDONED_AFTER_S"])
        while not self._stop.wait(interval_s):
            try:
                with flask_app.app_context():
                    sweeps.requeue_stranded(enqueue, older_than_s=requeue_after_s)
                    sweeps.end_abandoned(grace_s=abandoned_after_s)
            except Exception:  # noqa: BLE001 - the database, Redis or the broker is down: the next sweep retries
                log.warning("sweep for stranded executions failed", exc_info=True)
