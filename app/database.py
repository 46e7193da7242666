"""Engine tuning: SQLite gets WAL, a busy timeout and write-locking transactions; PostgreSQL gets TCP keepalives
and a server-side limit on sessions left idle inside a transaction."""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, event, exc
from sqlalchemy.engine import make_url

from coordination.forksafe import ForkSafeLock


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # let the begin hook below issue BEGIN itself
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


BUSY_TIMEOUT_S = 30.0
_HOLDS = "sqlite_write_lock"


class _ProcessWriters:
    """One transaction per process at a time on a SQLite file, waited for cooperatively.

    Every transaction takes SQLite's write lock (BEGIN IMMEDIATE), and a connection that finds it taken waits
    inside SQLite's C code (busy_timeout). Under gevent that wait blocks the whole process: when the holder is a
    greenlet of the same process, parked on the network (Redis, the broker) before its commit, it can never run
    again, and both gunicorn workers froze until their 30 s timeout killed them (bench/inflight.py --sqlite). So
    a process first takes this lock (a gevent lock once monkey-patched, a thread lock otherwise), and SQLite's
    busy wait is left to writers of other processes, which do progress meanwhile.
    """

    def __init__(self) -> None:
        self._lock = ForkSafeLock()

    def begin(self, connection: Any) -> None:
        if not self._lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise exc.OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(
                f"database is locked: another transaction of this process held it for {BUSY_TIMEOUT_S:.0f}s"))
        connection.info[_HOLDS] = True
        try:
            # IMMEDIATE takes the write lock up front, so two writers never both read the audit chain head.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self.end(connection)
            raise

    def end(self, connection: Any) -> None:
        if connection.info.pop(_HOLDS, False):
            self._lock.release()

    def returned(self, _dbapi_connection: Any, record: Any, *_args: Any) -> None:
        """A connection back in the pool or invalidated without its commit or rollback event still frees it."""
        self.end(record)


def _postgres_connect_args(idle_in_transaction_timeout_s: float) -> dict[str, Any]:
    """A client that vanished mid-transaction (a partition, a frozen process) must not hold its locks (the inbox
    drain's advisory lock, the audit chain head) for the hours TCP takes to notice: the server ends such a session
    after the timeout, and keepalives find a dead peer within about a minute."""
    args: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                            "keepalives_count": 3}
    if idle_in_transaction_timeout_s > 0:
        args["options"] = f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_timeout_s * 1000)}"
    return args


def pool_options(database_uri: str, *, size: int, max_overflow: int, timeout_s: float) -> dict[str, Any]:
    """QueuePool sizing per process from config; an in-memory SQLite database keeps its single shared connection.

    A thread or greenlet that finds every connection busy waits up to timeout_s for one (then the step retries),
    instead of opening more than size + max_overflow connections to the server.
    """
    url = make_url(database_uri)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return {}
    return {"pool_size": size, "max_overflow": max_overflow, "pool_timeout": timeout_s}


def tune_engine(engine: Engine, *, idle_in_transaction_timeout_s: float = 60.0) -> None:
    if engine.dialect.name == "sqlite":
        writers = _ProcessWriters()
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", writers.begin)
        event.listen(engine, "commit", writers.end)
        event.listen(engine, "rollback", writers.end)
        event.listen(engine.pool, "checkin", writers.returned)
        event.listen(engine.pool, "invalidate", writers.returned)
    elif engine.dialect.name == "postgresql":
        connect_args = _postgres_connect_args(idle_in_transaction_timeout_s)

        def add_connect_args(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
            for key, value in connect_args.items():
                cparams.setdefault(key, value)  # what the URL sets wins

        event.listen(engine, "do_connect", add_connect_args)
