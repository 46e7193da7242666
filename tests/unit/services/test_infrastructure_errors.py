"""Which failures make a chain step retry (the step did not happen) rather than end the execution failed."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.services.executions.step_support import is_infrastructure_error


def _dbapi(kind: type[DBAPIError], *, invalidated: bool = False) -> DBAPIError:
    return kind("SELECT 1", {}, Exception("boom"), connection_invalidated=invalidated)


@pytest.mark.parametrize(("error", "retried"), [
    (_dbapi(OperationalError), True),  # server gone, connection refused, deadlock
    (_dbapi(InterfaceError), True),  # connection already closed
    (_dbapi(DBAPIError, invalidated=True), True),  # the server ended the session (idle-in-transaction limit)
    (redis.ConnectionError("refused"), True),
    (redis.TimeoutError("timed out"), True),
    (PoolTimeout("QueuePool limit reached"), True),  # every pooled connection busy (1,000 LLM runs share a few)
    (_dbapi(IntegrityError), False),  # a real answer from the database: retrying changes nothing
    (_dbapi(DBAPIError), False),
    (KeyError("outcome"), False),  # a bug
    (ValueError("bad"), False),
])
def test_only_lost_services_are_retried(error: BaseException, retried: bool) -> None:
    assert is_infrastructure_error(error) is retried
