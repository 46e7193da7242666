"""Keeps the leases of this process's waiting LLM runs alive in one Redis round trip per tick.

A run that emits nothing for a second (its provider has not answered yet, or streams slowly) must extend its
lease. Each run used to send its own round trip for that, which at 1,000 calls waiting on their providers was a
thousand round trips a second and about half of the LLM worker's CPU while the calls were idle
(docs/performance.md, section 7). Now the run asks from its own thread, so a hung or starved run still lets its
lease lapse. One keeper thread per process then sends every ask of the tick in one script call and hands each
answer back to its run. A lease that was not the run's own any more comes back as a check the run makes itself
at its next poll: it takes a lapsed lease back, or stops as replaced (llm_run.Run.should_stop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from app.services.process_local import per_process

log = logging.getLogger(__name__)

TICK_S = 0.2  # an ask waits at most this long: small against the 5 s lease and its 1 s refresh
BATCH = 500  # runs per script call (Redis runs a script alone: keep each one short)

Refresh = Callable[[Sequence[tuple[str, str]]], list[tuple[bool, bool]]]


class Refreshable(Protocol):
    """A run whose lease the keeper extends."""

    execution_id: str
    token: str

    def refreshed(self, held: bool, cancelled: bool) -> None: ...

    def refresh_failed(self, error: Exception) -> None: ...


class LeaseKeeper:
    """Gathers the lease refreshes asked for during a tick and sends them together."""

    def __init__(self, refresh: Refresh, tick_s: float = TICK_S) -> None:
        self._refresh = refresh
        self._tick_s = tick_s
        self._pending: dict[int, Refreshable] = {}
        self._lock = threading.Lock()
        self._asked = threading.Event()
        self._thread: threading.Thread | None = None

    def ask(self, run: Refreshable) -> None:
        """Extend this run's lease in the next batch; the answer comes back through run.refreshed()."""
        with self._lock:
            self._pending[id(run)] = run
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
                self._thread.start()
        self._asked.set()

    def _loop(self) -> None:
        while True:
            self._asked.wait()
            time.sleep(self._tick_s)  # let this tick's asks gather
            with self._lock:
                batch = list(self._pending.values())
                self._pending.clear()
                self._asked.clear()
            for start in range(0, len(batch), BATCH):
                self._send(batch[start:start + BATCH])

    def _send(self, runs: list[Refreshable]) -> None:
        try:
            answers = self._refresh([(run.execution_id, run.token) for run in runs])
        except Exception as exc:  # noqa: BLE001 - each run raises it in its own thread, as its own call would have
            log.warning("lease refresh of %d runs failed: %s", len(runs), exc)
            for run in runs:
                run.refresh_failed(exc)
            return
        for run, (held, cancelled) in zip(runs, answers, strict=True):
            run.refreshed(held, cancelled)


class Leases(Protocol):
    """What the keeper needs of the event log (streams.EventLog)."""

    def refresh_runs(self, runs: Sequence[tuple[str, str]], lease_ms: int) -> list[tuple[bool, bool]]: ...


def lease_keeper(events: Leases, lease_ms: int) -> LeaseKeeper:
    """This process's keeper for one event log (a per-process object itself, so its id is not reused: the keeper
    holds on to it)."""
    return per_process("lease_keeper", (id(events), lease_ms),
                       lambda: LeaseKeeper(lambda runs: events.refresh_runs(runs, lease_ms)))
