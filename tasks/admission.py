"""The admission dispatcher in the worker: a bootstep thread for upkeep, and a hook after each persist step that
frees the ended execution's slots and sends the next waiting executions at once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from flask import Flask

from app.services import admission
from tasks.chain import PERSIST, enqueuer
from tasks.periodic import PeriodicStep

log = logging.getLogger(__name__)


class DispatchAdmissions(PeriodicStep):
    """Every ADMISSION_DISPATCH_INTERVAL_S (0 turns it off): free slots of executions that ended by any path
    (cancel, sweep, denial), time out waits, resend dispatches a dead dispatcher left, dispatch what fits now
    (a rate window that moved, a lease that expired)."""

    interval_setting = "ADMISSION_DISPATCH_INTERVAL_S"
    thread_name = "admission-dispatch"

    def build_pass(self, celery_app: Celery, flask_app: Flask) -> Callable[[], None]:
        enqueue = enqueuer(celery_app)

        def upkeep() -> None:
            admission.upkeep(enqueue)

        return upkeep


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
