"""PostgreSQL sessions carry keepalives and a server-side idle-in-transaction limit, so a client that vanished
mid-transaction (a partition, a frozen process) cannot hold its locks for hours."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app import create_app
from app.extensions import db


def test_a_session_left_idle_in_a_transaction_is_ended_by_the_server(pg_url: str) -> None:
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": pg_url,
                      "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S": 0.5})
    with app.app_context():
        with db.engine.connect() as connection:
            assert connection.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one() == "500ms"
            info = connection.connection.dbapi_connection.info  # type: ignore[union-attr]
            assert info.get_parameters()["keepalives"] == "1"
            connection.execute(text("SELECT pg_advisory_xact_lock(4242)"))  # what an inbox drain holds
            blocked = db.engine.connect()
            try:
                # Idle in the transaction past the limit: the server ends the session and frees the lock.
                blocked.execute(text("SELECT pg_advisory_lock(4242)"))  # waits until the server ends the holder
                held = blocked.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted "
                    "AND pid = pg_backend_pid()")).scalar_one()
                assert held == 1
                blocked.execute(text("SELECT pg_advisory_unlock(4242)"))
            finally:
                blocked.close()
            with pytest.raises(DBAPIError, match="idle-in-transaction timeout"):
                connection.execute(text("SELECT 1"))
        db.engine.dispose()


def test_the_timeout_can_be_switched_off(pg_url: str) -> None:
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": pg_url,
                      "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S": 0})
    with app.app_context():
        with db.engine.connect() as connection:
            assert connection.execute(text("SHOW idle_in_transaction_session_timeout")).scalar_one() == "0"
        db.engine.dispose()
