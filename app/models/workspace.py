"""Tenancy: a workspace owns agents, executions and audit rows; API keys belong to one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import new_id
from app.timeutil import utcnow


class Workspace(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    # Hash of the newest audit row of this workspace's chain, kept by a trigger on audit_log (migration 0002).
    audit_head: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # NULL: the WORKSPACE_MAX_CONCURRENCY / WORKSPACE_TOKENS_PER_DAY defaults; 0: unlimited.
    max_concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ApiKey(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), nullable=False, index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
