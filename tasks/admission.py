"""The admission dispatcher in the worker: a bootstep thread for upkeep, and a hook after each persist step that
frees the ended execution's slots and sends the next waiting executions at once."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, Task, bootsteps
from flask import Flask

from app.services import admission
from tasks.chain import PERSIST, enqueuer

log = logging.getLogger(__name__)


class DispatchAdmissions(bootsteps.StartStopStep):  # type: ignore[misc]
    """Every ADMISSION_DISPATCH_INTERVAL_S (0 turns it off): free slots of executions that ended by any path
    (cancel, sweep, denial), time out waits, resend dispatches a dead dispatcher left, dispatch what fits now
    (a rate window that moved, a lease that expired). A thread, like the sweep: it must not stall the pool's loop."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        celery_app: Celery = parent.app
        flask_app: Flask = celery_app.flask_app
        interval_s = float(flask_app.config["ADMISSION_DISPATCH_INTERVAL_S"])
        if interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._run, args=(celery_app, flask_app, interval_s),
                                        name="admission-dispatch", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, celery_app: Celery, flask_app: Flask, interval_s: float) -> None:
        enqueue = enqueuer(celery_app)
        while not self._stop.wait(interval_s):
            try:
                with flask_app.app_context():
                    admission.upkeep(enqueue)
            except Exception:  # noqa: BLE001 - Redis, the database or the broker is down: the next pass retries
                log.warning("admission upkeep failed", exc_info=True)


def after_persist(sender: Task | None = None, args: Any = None, retval: Any = None, **_: Any) -> None:
    """task_postrun of executions.persist: the execution ended (or a newer run owns it, then nothing is freed)."""
    if sender is None or sender.name != PERSIST:
        return
    previous = args[0] if args else {}
    execution_id = (retval if isinstance(retval, dict) else {}).get("execution_id") or (
        previous.get("execution_id") if isinstance(previous, dict) else None)
    if not execution_id:
        return
    try:
        with sender.app.flask_app.app_context():
            if admission.finished(str(execution_id)):
                admission.dispatch(enqueuer(sender.app))
    except Exception:  # noqa: BLE001 - the upkeep thread frees and dispatches it on its next pass
        log.warning("could not free admission slots of %s", execution_id, exc_info=True)
