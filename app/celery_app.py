"""Celery bound to the Flask app, so every task runs inside an app context."""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, Task
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import task_postrun, worker_process_init
from celery.worker.consumer import Consumer
from flask import Flask

from app.extensions import db
from app.logs import log_context
from app.services import chain_publish
from coordination import topology

EVENTS_FLUSH_S = 0.1


class QuorumReadyConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer without native delayed delivery, which Celery turns on whenever it sees a quorum queue.

    That step cannot serve the executions queue (a direct exchange: Celery warns that it does not support
    them), and on every reconnect it retries each node of a multi-node BROKER_URL, sleeping 1 + 3 + 5 s per
    dead node before the worker consumes again; measured here, those stalls outlasted the AMQP heartbeat, so
    the new connection was dropped and the worker did not consume until the dead node came back (137 s).
    Countdown retries stay what they are with classic queues: held by the worker until due.
    """

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps = [step for step in Consumer.Blueprint.default_steps if not step.endswith(":DelayedDelivery")]

    _events_flush_due = 0.0  # monotonic time the scheduled flush is due at, 0 for none

    def on_send_event_buffered(self) -> None:
        """Flush buffered task events EVENTS_FLUSH_S after the first, not on the next loop tick.

        Celery publishes the buffer (with a confirm) as soon as the loop turns, so at 90 executions/s nearly every
        event went out as a message of its own: a third of the prefork main process's CPU, and a confirm's round
        trip that held up its deliveries (py-spy, issue 12). Flower sees each task at most EVENTS_FLUSH_S later;
        a full buffer (Celery's 24 events) still goes at once. Prefork only, where every event is sent from the
        loop's own thread: a threads pool sends them from its threads, which then flushed full buffers far more
        often under the dispatcher's lock and a confirm, and the LLM worker's loop stalled past the AMQP heartbeat
        (docs/decisions.md); it keeps Celery's flush.
        """
        if not isinstance(self.pool, PreforkPool):
            super().on_send_event_buffered()
            return
        now = time.monotonic()
        # A flush due more than a second ago was lost with its timer (a reconnect builds a new hub): schedule again.
        if self.hub is None or (self._events_flush_due and now < self._events_flush_due + 1.0):
            return
        self._events_flush_due = now + EVENTS_FLUSH_S
        self.hub.call_soon(self._schedule_events_flush)  # call_later is not thread safe; the loop thread runs this

    def _schedule_events_flush(self) -> None:
        if self.hub is not None:
            self.hub.call_later(EVENTS_FLUSH_S, self._flush_buffered_events)

    def _flush_buffered_events(self) -> None:
        self._events_flush_due = 0.0
        self._flush_events()

    def shutdown(self) -> None:
        """The events still buffered go out first: Celery closes the dispatcher without flushing its buffer."""
        try:
            self._flush_events()
        except Exception:  # noqa: BLE001 - the broker may be gone; shutting down matters more than the events
            pass
        super().shutdown()


def celery_init_app(app: Flask) -> Celery:
    """Build the Celery app from celeryconfig, with the broker URL this Flask app was configured with."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context(), log_context(task_id=self.request.id):
                return self.run(*args, **kwargs)

    # Connections and the event dispatcher that leave a frozen node (app/celery_failover.py).
    celery_app = Celery(app.name, task_cls=FlaskTask, amqp="app.celery_failover:FailoverAMQP",
                        events="app.celery_failover:FailoverEvents")
    celery_app.config_from_object("celeryconfig")
    celery_app.conf.broker_url = app.config["BROKER_URL"]
    celery_app.conf.broker_heartbeat = app.config["BROKER_HEARTBEAT_S"]
    # Every Celery connection reports connection.blocked, so enqueues fail fast during a broker alarm, and no
    # socket read or write of one blocks longer than BROKER_SOCKET_TIMEOUT_S: a frozen node answers nothing, and
    # Celery's own confirms (task events, a chain's next step, heartbeats) and close handshakes wait with no
    # deadline (docs/decisions.md, "A frozen node").
    socket_timeout = app.config["BROKER_SOCKET_TIMEOUT_S"]
    celery_app.conf.broker_transport_options = {
        **celery_app.conf.broker_transport_options,
        **chain_publish.transport_callbacks(app.config["BROKER_URL"]),
        "read_timeout": socket_timeout,
        "write_timeout": socket_timeout,
    }
    # The executions queue comes from the one topology module: quorum with QUEUE_TYPE=quorum (Celery then turns
    # global QoS off by itself, worker_detect_quorum_queues), classic and argument-free otherwise.
    celery_app.conf.task_queues = topology.executions_queues(app.config["QUEUE_TYPE"])
    celery_app.conf.worker_consumer = f"{__name__}:QuorumReadyConsumer"
    celery_app.conf.update(app.config.get("CELERY", {}))
    if not app.config["CELERY_TASK_EVENTS"]:
        celery_app.conf.update(worker_send_task_events=False, task_send_sent_event=False)
    celery_app.set_default()
    celery_app.flask_app = app  # the worker's bootsteps run outside any task, and need the app's config
    from app.services.executions.requests import ENQUEUE_EXTENSION
    from tasks.admission import DispatchAdmissions, after_persist
    from tasks.chain import enqueuer
    from tasks.recovery import SweepExecutions  # tasks import app.services, which need this module loaded

    celery_app.steps["worker"].add(SweepExecutions)
    celery_app.steps["worker"].add(DispatchAdmissions)
    task_postrun.connect(after_persist, weak=False, dispatch_uid="admission-after-persist")
    app.extensions[ENQUEUE_EXTENSION] = enqueuer(celery_app)

    def forget_inherited_connections(**_: Any) -> None:
        """A pool child forked after the main process used the database (its sweep) must not share those sockets."""
        with app.app_context():
            db.engine.dispose(close=False)

    worker_process_init.connect(forget_inherited_connections, weak=False, dispatch_uid=f"dispose-{id(app)}")
    app.extensions["celery"] = celery_app
    return celery_app
