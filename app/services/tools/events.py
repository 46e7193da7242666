"""The tool loop's events on the execution's stream and the `executions.tools` task it sends after commit."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app

from app.models import Execution, ExecutionStatus, ToolCall
from app.services.tools.runner import result_event

log = logging.getLogger(__name__)

TOOLS_TASK = "executions.tools"  # tasks/chain.py names the same task
LEASE_MS = 10_000  # kept alive by a heartbeat while the run lives; a killed run's lease frees within this
HEARTBEAT_S = 2.0
CLAIM_POLL_S = 0.2
_REFRESH_LUA = ("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end "
                "return 0")


def event_log() -> Any:
    """The execution event log (imported late: app.services.executions imports this package)."""
    from app.services.executions.events import event_log as log_of_app

    return log_of_app()


def emit(execution_id: str, event: str, data: dict[str, Any]) -> None:
    """Append one event (refused once the execution ended, which is right for a late result)."""
    event_log().emit(execution_id, event, data)


def emit_calls(execution_id: str, rows: list[ToolCall]) -> None:
    """tool_call for each row, and tool_result at once for the ones settled without running (denied, invalid)."""
    for row in rows:
        emit(execution_id, "tool_call", {"tool_call_id": row.tool_call_id, "name": row.name,
                                         "arguments": row.arguments, "turn": row.turn})
    for row in rows:
        if row.finished_at is not None:
            emit(execution_id, "tool_result", result_event(row))


def send_tools(execution_id: str, turn: int) -> bool:
    """Queue the turn's tool runs after the commit that made them due (the task is idempotent), the confirm
    bounded by CONFIRM_TIMEOUT_S. A send that fails (broker down or blocking) is left to the workers' sweep
    (stranded.resend), so a resume already committed answers as done instead of hanging or failing late."""
    from app.services import chain_publish

    celery_app = current_app.extensions["celery"]
    try:
        chain_publish.send(celery_app, celery_app.signature(TOOLS_TASK, args=[execution_id, turn]),
                           timeout_s=float(current_app.config["CONFIRM_TIMEOUT_S"]))
    except Exception as exc:  # noqa: BLE001 - committed already: the sweep sends it once the broker takes it
        log.warning("tools task of %s not sent (%s): the workers' sweep sends it", execution_id,
                    type(exc).__name__, extra={"execution_id": execution_id})
        return False
    return True


def tools_run_held(execution_id: str) -> bool:
    """Whether a tools run holds the execution's lease (it is running the turn now)."""
    return bool(event_log().redis.exists(_lease_key(execution_id)))


def _lease_key(execution_id: str) -> str:
    return f"execution:{execution_id}:tools"


@contextmanager
def tools_lease(execution_id: str, status_of: Any) -> Iterator[bool]:
    """One tools run per execution at a time; a duplicate waits for the holder (or, if it died, its lease)."""
    redis = event_log().redis
    token = uuid.uuid4().hex
    key = _lease_key(execution_id)
    give_up = time.monotonic() + LEASE_MS / 1000 + 10
    while not redis.set(key, token, nx=True, px=LEASE_MS):
        status = status_of(execution_id)
        if status is None or ExecutionStatus(status).terminal or time.monotonic() > give_up:
            yield False
            return
        time.sleep(CLAIM_POLL_S)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                redis.eval(_REFRESH_LUA, 1, key, token, LEASE_MS)
            except Exception:  # noqa: BLE001 - Redis away for a moment: the next beat tries again
                log.warning("could not refresh the tools lease of %s", execution_id)

    beating = threading.Thread(target=heartbeat, name="tools-lease", daemon=True)
    beating.start()
    try:
        yield True
    finally:
        stop.set()
        beating.join(timeout=1)
        if redis.get(key) in (token, token.encode()):
            redis.delete(key)


def cancel_seen(execution: Execution) -> bool:
    """The cancel flag on Redis (set by POST /cancel) or on the row."""
    return execution.cancel_requested_at is not None or bool(event_log().cancel_requested(execution.id))
