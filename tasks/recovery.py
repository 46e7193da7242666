"""The workers sweep for executions nothing else would finish: pending ones whose chain no broker ever confirmed
(the web died in between), and running ones abandoned long past their deadline."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery
from flask import Flask

from app.services.executions import sweeps
from app.services.tools import asks, pauses, stranded
from app.services.tools.events import send_tools
from tasks.chain import enqueuer
from tasks.periodic import PeriodicStep


class SweepExecutions(PeriodicStep):
    """Sweeps every EXECUTION_SWEEP_INTERVAL_S (0 turns it off), in a thread of the worker's main process."""

    interval_setting = "EXECUTION_SWEEP_INTERVAL_S"
    thread_name = "sweep-executions"

    def build_pass(self, celery_app: Celery, flask_app: Flask) -> Callable[[], None]:
        enqueue = enqueuer(celery_app)
        requeue_after_s = float(flask_app.config["EXECUTION_REQUEUE_AFTER_S"])
        abandoned_after_s = float(flask_app.config["EXECUTION_ABANDONED_AFTER_S"])

        def sweep() -> None:
            sweeps.requeue_stranded(enqueue, older_than_s=requeue_after_s)
            sweeps.end_abandoned(grace_s=abandoned_after_s)
            pauses.end_expired()  # tool-loop pauses past their wait_timeout_s end timed_out
            stranded.resend(send_tools, older_than_s=requeue_after_s)  # tool loops whose tools task was lost
            asks.answer_ended()  # asked executions that ended without their persist step answering the asker

        return sweep
