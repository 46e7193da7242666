"""Admission state tests get a Redis DB of their own: the global slot set must not be shared with the session's
worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from app.services.admission.state import AdmissionState, Item
from tests.support import services


@pytest.fixture(scope="module")
def admission_redis_url() -> Iterator[str]:
    with services.redis_database() as url:
        yield url


@pytest.fixture
def state(admission_redis_url: str) -> Iterator[AdmissionState]:
    client = redis.Redis.from_url(admission_redis_url)
    client.flushdb()
    yield AdmissionState(client)
    client.close()


def item(execution_id: str, ws: str = "A", *, cred: str = "", wscap: int = 0, credcap: int = 0, rpm: int = 0,
         tpm: int = 0, est: int = 10, lease: int = 60_000, deadline: int = 10**13) -> Item:
    return Item(id=execution_id, ws=ws, cred=cred, wscap=wscap, credcap=credcap, rpm=rpm, tpm=tpm, est=est,
                lease=lease, deadline=deadline, task_ids=[f"{execution_id}-t{n}" for n in range(3)])
