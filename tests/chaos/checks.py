"""Shared helpers of the fault scenarios: deadline polling and a total-queue-checker style report."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
RESULTS = Path(os.environ.get("CHAOS_RESULTS", Path(__file__).resolve().parents[2] / "instance" / "chaos"))


def wait_for(predicate: Callable[[], T], timeout_s: float = 30.0, what: str = "condition",
             interval_s: float = 0.02) -> T:
    """Poll until predicate() is truthy and return it; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def report(scenario: str, counts: dict[str, Any], must_be_zero: Iterable[str]) -> None:
    """Print the counts on one line (and keep them as JSON for docs), then assert the zero goals."""
    zero = list(must_be_zero)
    line = " ".join(f"{key}={value}" for key, value in counts.items())
    print(f"\nCHAOS {scenario}: {line}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{scenario}.json").write_text(json.dumps({"scenario": scenario, **counts}, indent=1, default=str))
    bad = {key: counts[key] for key in zero if counts[key]}
    assert not bad, f"{scenario}: nonzero where the goal is zero: {bad} (all counts: {counts})"


def order_violations(expected: list[str], stored: list[str]) -> int:
    """Pairs of adjacent expected ids stored in the wrong relative order (each missing id is skipped)."""
    position = {message_id: index for index, message_id in enumerate(stored)}
    present = [position[message_id] for message_id in expected if message_id in position]
    return sum(1 for earlier, later in zip(present, present[1:], strict=False) if later < earlier)


def message_counts(confirmed: list[str], stored: list[str]) -> dict[str, int]:
    """Total-queue-checker counts of one receiver: what was confirmed against what its inbox holds, in order."""
    return {
        "confirmed": len(confirmed),
        "lost": len(set(confirmed) - set(stored)),
        "duplicated": len(stored) - len(set(stored)),
        "out_of_order": order_violations(confirmed, stored),
        "unexpected": len(set(stored) - set(confirmed)),
    }
