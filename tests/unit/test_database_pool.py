"""Connection pool sizing per process comes from config; an in-memory SQLite database keeps its one connection."""

from __future__ import annotations

import pytest

from app.database import pool_options


@pytest.mark.parametrize("uri", ["postgresql+psycopg://u@h/db", "sqlite:////tmp/file.db"])
def test_pooled_databases_get_the_configured_sizes(uri: str) -> None:
    assert pool_options(uri, size=10, max_overflow=5, timeout_s=3.0) == {
        "pool_size": 10, "max_overflow": 5, "pool_timeout": 3.0}


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_left_alone(uri: str) -> None:
    assert pool_options(uri, size=10, max_overflow=5, timeout_s=3.0) == {}
