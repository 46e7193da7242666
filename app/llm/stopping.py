"""Stop-aware waiting, so sleeps and hangs still honour cancel and timeout within one poll interval."""

from __future__ import annotations

import time

from app.llm.base import ShouldStop, Stopped

POLL_INTERVAL_S = 0.02
"""How often should_stop is polled while waiting; well under the 50 ms the LLM step relies on."""


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
