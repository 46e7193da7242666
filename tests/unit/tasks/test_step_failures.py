"""A step's failure: an outage retries the same message with backoff; anything else gives up and ends it failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from sqlalchemy.exc import OperationalError

from tasks import executions as tasks


class Retry(Exception):  # noqa: N818 - what Task.retry raises
    """Stands for celery.exceptions.Retry: the step is sent again with a countdown."""


@dataclass
class _Request:
    retries: int


@dataclass
class StepTask:
    """The two things _step uses of a bound Celery task: its retry count and retry()."""

    retries: int = 0
    countdowns: list[float] = field(default_factory=list)

    @property
    def request(self) -> _Request:
        return _Request(self.retries)

    def retry(self, *, exc: BaseException, countdown: float) -> Retry:
        self.countdowns.append(countdown)
        return Retry(str(exc))


@pytest.fixture
def abandoned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    calls: list[tuple[str, str, str]] = []

    def record(execution_id: str, step: str, error: BaseException) -> bool:
        calls.append((execution_id, step, type(error).__name__))
        return True

    monkeypatch.setattr(tasks.persist_step, "abandon", record)
    return calls


@pytest.mark.parametrize("error", [OperationalError("SELECT 1", {}, Exception("gone")),
                                   redis.ConnectionError("refused")])
def test_an_outage_retries_with_growing_capped_delays(error: Exception, abandoned: list[Any]) -> None:
    delays = []
    for retries in (0, 1, 2, 3, 4, 5, 20):
        task = StepTask(retries=retries)
        with pytest.raises(Retry), tasks._step(task, "llm", "exec-1"):  # type: ignore[arg-type]
            raise error
        delays.extend(task.countdowns)
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0] and delays[5:] == [tasks.RETRY_CAP_S] * 2
    assert abandoned == []


def test_an_outage_that_outlasts_the_retries_ends_the_execution_failed(abandoned: list[Any]) -> None:
    task = StepTask(retries=tasks.MAX_RETRIES)
    with pytest.raises(redis.ConnectionError), tasks._step(task, "persist", "exec-2"):  # type: ignore[arg-type]
        raise redis.ConnectionError("still refused")
    assert task.countdowns == [] and abandoned == [("exec-2", "persist", "ConnectionError")]


def test_a_bug_gives_up_at_once(abandoned: list[Any]) -> None:
    task = StepTask()
    with pytest.raises(KeyError), tasks._step(task, "governance", "exec-3"):  # type: ignore[arg-type]
        raise KeyError("bug")
    assert task.countdowns == [] and abandoned == [("exec-3", "governance", "KeyError")]
