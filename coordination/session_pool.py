"""A pool of broker sessions: each thread or greenlet publishes on a session of its own (kombu connections and
channels are not safe to share between threads, kombu #566, #1248), and a few idle ones are kept for reuse."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from coordination.broker import BrokerSession
from coordination.forksafe import ForkSafeLock


class SessionPool:
    """Hands each thread or greenlet a session of its own; keeps a few idle ones for reuse."""

    def __init__(
        self,
        broker_url: str,
        *,
        timeout_s: float = 5.0,
        max_idle: int = 8,
        factory: Callable[[], BrokerSession] | None = None,
        queue_type: str | None = "classic",
    ) -> None:
        self.broker_url = broker_url
        self.timeout_s = timeout_s
        self.max_idle = max_idle
        self._factory = factory or (lambda: BrokerSession(broker_url, timeout_s=timeout_s, queue_type=queue_type))
        self._idle: list[BrokerSession] = []
        self._lock = ForkSafeLock()

    def new_session(self) -> BrokerSession:
        """Open a fresh session (raises the connection error if the broker is unreachable)."""
        return self._factory()

    def _take(self) -> BrokerSession:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.new_session()

    def give_back(self, session: BrokerSession) -> None:
        """Return a healthy session to the pool, or close a broken one."""
        if session.broken:
            session.close()
            return
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(session)
                return
        session.close()

    @contextmanager
    def session(self) -> Iterator[BrokerSession]:
        """Check out a session for the duration of the block; errors inside mark it broken."""
        session = self._take()
        try:
            yield session
        except BaseException:
            session.broken = True
            raise
        finally:
            self.give_back(session)

    def close(self) -> None:
        """Close every idle session (sessions checked out are closed when given back)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()
