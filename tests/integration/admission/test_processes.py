"""Slots hold across processes, and a SIGKILLed holder leaks none once its leases expire."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from app.services.admission.state import AdmissionState
from tests.integration.admission.conftest import item

ROOT = Path(__file__).resolve().parents[3]


def _start(url: str, prefix: str, count: int, cap: int, lease_ms: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.integration.admission.holder", url, prefix, str(count),
                             str(cap), str(lease_ms)], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _admitted(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    ids = []
    for line in process.stdout:
        if line.strip() == "held":
            return ids
        ids.append(line.strip())
    raise AssertionError("holder exited before holding")


def _end(process: subprocess.Popen[str]) -> None:
    """SIGKILL, reap, and close its pipe."""
    process.kill()
    process.wait(timeout=10)
    assert process.stdout is not None
    process.stdout.close()


def _now() -> int:
    return int(time.time() * 1000)


def test_concurrent_processes_never_exceed_the_limit(state: AdmissionState, admission_redis_url: str) -> None:
    processes = [_start(admission_redis_url, f"p{n}-", 4, 3, 60_000) for n in range(4)]
    try:
        admitted = [i for p in processes for i in _admitted(p)]
    finally:
        for process in processes:
            _end(process)
    assert len(admitted) == 3
    assert state.live_count("adm:slots:ws:shared", now_ms=_now()) == 3
    assert state.live_count("adm:slots:cred:key", now_ms=_now()) == 3
    assert sum(state.queued_by_reason().values()) == 13


def test_a_sigkilled_holder_leaks_no_slot_after_its_leases_expire(state: AdmissionState,
                                                                  admission_redis_url: str) -> None:
    holder = _start(admission_redis_url, "k-", 2, 2, 1_500)
    held = _admitted(holder)
    _end(holder)  # SIGKILL: nothing runs to release
    assert len(held) == 2
    assert state.admit(item("after", "shared", cred="key", wscap=2, credcap=2), now_ms=_now(), capacity=1000) == \
        "workspace_concurrency"
    deadline = time.monotonic() + 5
    while state.live_count("adm:slots:ws:shared", now_ms=_now()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.live_count("adm:slots:ws:shared", now_ms=_now()) == 0
    assert state.live_count("adm:slots:cred:key", now_ms=_now()) == 0
    assert [i for i, _ in state.dispatch(now_ms=_now(), capacity=1000)] == ["after"]
    assert state.live_count("adm:slots:ws:shared", now_ms=_now()) == 1
