"""Registered agents with the maturity level that governance checks."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import new_id
from app.timeutil import utcnow


class MaturityLevel(enum.IntEnum):
    """Ordered so that governance can compare levels numerically."""

    STUDENT = 1
    INTERN = 2
    SUPERVISED = 3
    AUTONOMOUS = 4


class Agent(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "agents"
    __table_args__ = (Index("ix_agents_workspace_created", "workspace_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    maturity_level: Mapped[str] = mapped_column(String(16), nullable=False)
    confidence_score: Mapped[float] = mapped_column(Float, nullable=False, default=0.5)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    llm: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False, default=dict)
    tools: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    auto_reply: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    inbox_declared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
