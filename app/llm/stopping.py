"""Stop-aware waiting, so sleeps and hangs still honour cancel and timeout within one poll interval."""

from __future__ import annotations

import os
import time

from app.llm.base import ShouldStop, Stopped

POLL_INTERVAL_S = min(1.0, max(0.005, float(os.environ.get("LLM_STOP_POLL_S", "0.02"))))
"""How often should_stop is polled while waiting (a hang, a backoff, between chunks): the bound on how late a
cancel or timeout is noticed when no chunk arrives. 20 ms suits a few slots per process; the 1,000-thread LLM
worker sets LLM_STOP_POLL_S=0.25, because 1,000 threads waking every 20 ms cost a core (docs/performance.md)."""


def wait_or_stop(seconds: float, should_stop: ShouldStop) -> None:
    """Sleep for `seconds` while polling should_stop; raise Stopped as soon as it turns True."""
    deadline = time.monotonic() + max(0.0, seconds)
    while True:
        if should_stop():
            raise Stopped()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(POLL_INTERVAL_S, remaining))


def check_stop(should_stop: ShouldStop) -> None:
    """Raise Stopped if should_stop() says so; called between chunks."""
    if should_stop():
        raise Stopped()
