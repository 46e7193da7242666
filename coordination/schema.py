"""Tables the coordination layer owns; the app's Alembic migrations create them from this metadata."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# BigInteger on PostgreSQL, INTEGER (rowid alias, so autoincrement works) on SQLite.
SeqType = BigInteger().with_variant(Integer(), "sqlite")

inbox_messages = Table(
    "inbox_messages",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("message_id", String(128), nullable=False, unique=True),
    Column("workspace_id", String(36), nullable=True),
    Column("from_agent_id", String(64), nullable=False),
    Column("to_agent_id", String(64), nullable=False),
    Column("message", JSON, nullable=True),
    Column("correlation_id", String(128), nullable=True),
    Column("hop", Integer, nullable=False, default=0),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True), nullable=False),
    Index("ix_inbox_messages_to_agent_seq", "to_agent_id", "seq"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", SeqType, primary_key=True, autoincrement=True),
    Column("message_id", String(128), nullable=True, index=True),
    Column("workspace_id", String(36), nullable=True, index=True),
    Column("from_agent_id", String(64), nullable=True),
    Column("to_agent_id", String(64), nullable=True, index=True),
    Column("body", Text, nullable=True),
    Column("headers", JSON, nullable=True),
    Column("reason", String(255), nullable=True),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False),
)
