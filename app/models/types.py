"""Column helpers shared by the models."""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, Integer

# BigInteger on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def new_id() -> str:
    return str(uuid.uuid4())
