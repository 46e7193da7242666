"""One LLM run's hold on its execution: a short Redis lease, its deadline, and why it was told to stop.

The lease makes the LLM step idempotent: a redelivered task (worker killed, acks late) waits while a live run
holds it, and a run whose lease was taken over emits nothing more (the stream refuses it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import select

from app.extensions import db
from app.llm import Timeouts
from app.llm.stopping import POLL_INTERVAL_S
from app.models import Execution, ExecutionStatus
from app.services.cancel_watch import CancelWatch
from app.services.executions.lease_keeper import LeaseKeeper
from app.services.streams import REFUSED_FENCED, EventLog

LEASE_MS = 5000
REFRESH_EVERY_S = 1.0
CLAIM_POLL_S = 0.1
# Between emits (waits, hangs), only while the process's cancel watch is not subscribed (it hears cancels pushed);
# every emit reports the flag anyway. Tied to the stop poll (LLM_STOP_POLL_S).
CANCEL_POLL_S = max(0.01, POLL_INTERVAL_S)


class Lost(Exception):  # noqa: N818 - control flow
    """Another run owns the execution now, or it already ended: stop without writing anything."""


@dataclass(frozen=True)
class LlmSettings:
    """Retry and network limits for the LLM step, from the app config."""

    max_attempts: int
    retry_base_s: float
    retry_cap_s: float
    timeouts: Timeouts

    @classmethod
    def from_config(cls) -> LlmSettings:
        config = current_app.config
        return cls(
            max_attempts=int(config["LLM_MAX_ATTEMPTS"]),
            retry_base_s=float(config["LLM_RETRY_BASE_S"]),
            retry_cap_s=float(config["LLM_RETRY_CAP_S"]),
            timeouts=Timeouts(connect=float(config["LLM_CONNECT_TIMEOUT_S"]),
                              read=float(config["LLM_READ_TIMEOUT_S"])),
        )


@dataclass
class Run:
    """One LLM run's state: its lease token, deadline and why it was told to stop."""

    execution_id: str
    token: str
    events: EventLog
    deadline: float
    stop_reason: str | None = None
    last_refresh: float = 0.0
    last_cancel_check: float = 0.0
    cancel_seen: bool = False
    last_seq: int = 0  # the newest event id this run wrote or saw at its claim (for taking a lapsed lease back)
    watch: CancelWatch | None = None  # cancels pushed to this process; without it the flag is polled
    keeper: LeaseKeeper | None = None  # refreshes the lease with the process's other runs; without it, one call each
    lease_check_due: bool = False  # the keeper found the lease not ours: check it (take it back) from this thread
    refresh_error: Exception | None = None  # the keeper's round trip failed: raised here, as our own call would

    def should_stop(self) -> bool:
        """Polled between chunks and while waiting: timeout, lost lease, or the cancel flag."""
        now = time.monotonic()
        if now >= self.deadline:
            self.stop_reason = "timed_out"
            return True
        if self.refresh_error is not None:
            error, self.refresh_error = self.refresh_error, None
            raise error
        lease_due = now - self.last_refresh >= REFRESH_EVERY_S  # no event extended the lease for a while
        if self.lease_check_due or (lease_due and self.keeper is None):  # one round trip of our own
            self.lease_check_due = False
            self.last_refresh = self.last_cancel_check = now
            held, cancelled = self.events.reclaim_run_checking_cancel(self.execution_id, self.token, LEASE_MS,
                                                                      self.last_seq)
            self.cancel_seen = self.cancel_seen or cancelled
            if not held:
                self.stop_reason = "lost"
                return True
        elif lease_due and self.keeper is not None:  # asked from this thread: a hung run's lease still lapses
            self.last_refresh = self.last_cancel_check = now
            self.keeper.ask(self)
        elif not self.cancel_seen:
            heard = self.watch.cancelled(self.execution_id) if self.watch is not None else None
            if heard:
                self.cancel_seen = True
            elif heard is None and now - self.last_cancel_check >= CANCEL_POLL_S:
                self._check_cancel(now)
        if self.cancel_seen:
            self.stop_reason = "cancelled"
            return True
        return False

    def refreshed(self, held: bool, cancelled: bool) -> None:
        """The keeper's answer (its thread): a cancel is seen at the next poll; a lease not ours is checked there."""
        if cancelled:
            self.cancel_seen = True
        if not held:
            self.lease_check_due = True

    def refresh_failed(self, error: Exception) -> None:
        """The keeper's round trip failed (its thread): the next poll raises it."""
        self.refresh_error = error

    def _check_cancel(self, now: float) -> bool:
        self.last_cancel_check = now
        self.cancel_seen = self.events.cancel_requested(self.execution_id)
        return self.cancel_seen

    def emit(self, event: str, data: dict[str, Any]) -> int:
        """Append an event; the same round trip extends the lease and reports the cancel flag (no extra calls)."""
        event_id, cancelled = self.events.emit_checking_cancel(self.execution_id, event, data, run=self.token,
                                                               lease_ms=LEASE_MS)
        if event_id == REFUSED_FENCED and self.events.reclaim_run(self.execution_id, self.token, LEASE_MS,
                                                                 self.last_seq):
            # The lease lapsed while this run waited (a full pool, a starved thread), and nobody took over.
            event_id, cancelled = self.events.emit_checking_cancel(self.execution_id, event, data, run=self.token,
                                                                   lease_ms=LEASE_MS)
        if event_id < 0:
            raise Lost()
        self.last_seq = event_id
        self.last_refresh = self.last_cancel_check = time.monotonic()
        self.cancel_seen = self.cancel_seen or cancelled
        return event_id


def claim(events: EventLog, execution_id: str, token: str) -> bool:
    """Take the lease; while a live run holds it, wait (a duplicate delivery), unless the execution ends."""
    give_up: float | None = None
    while not events.claim_run(execution_id, token, LEASE_MS):
        found = db.session.execute(
            select(Execution.status, Execution.timeout_s).where(Execution.id == execution_id)
        ).one_or_none()
        db.session.rollback()
        if found is None or ExecutionStatus(found.status).terminal:
            return False
        give_up = give_up or time.monotonic() + found.timeout_s + 60
        if time.monotonic() > give_up:
            return False
        time.sleep(CLAIM_POLL_S)
    return True
