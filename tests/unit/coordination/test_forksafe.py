"""A lock held by another thread at fork time is free in the child, so the child's first use does not hang."""

from __future__ import annotations

import os
import threading

from coordination.forksafe import ForkSafeLock


def test_a_child_forked_while_the_lock_is_held_can_take_it() -> None:
    lock = ForkSafeLock()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: take the lock with a bound, report by exit code
        acquired = lock._lock.acquire(timeout=2)
        os._exit(0 if acquired else 1)
    release.set()
    holder.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_reentrant_lock_can_be_taken_twice_by_its_thread() -> None:
    lock = ForkSafeLock(reentrant=True)
    with lock, lock:
        pass
