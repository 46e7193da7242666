"""One cache for the objects a process builds once per setting (Redis clients, event logs, stream readers).

Keys include the pid, so a forked child (gunicorn, prefork Celery) builds its own: sockets never cross a fork.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

from coordination.forksafe import ForkSafeLock

T = TypeVar("T")

_built: dict[tuple[Hashable, ...], Any] = {}
# Re-entrant: a build may ask for another object (an event log builds its Redis client).
_lock = ForkSafeLock(reentrant=True)


def per_process(kind: str, key: tuple[Hashable, ...], build: Callable[[], T]) -> T:
    """The object of `kind` for `key` in this process, built by `build()` on first use."""
    full_key = (os.getpid(), kind, *key)
    found = _built.get(full_key)
    if found is None:
        with _lock:
            found = _built.get(full_key)
            if found is None:
                found = _built[full_key] = build()
    return cast(T, found)
