"""The tool-call ledger: one row per call the LLM asked for, so a redelivered task never runs a call twice."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import BigId
from app.timeutil import utcnow


class ToolCallStatus(enum.StrEnum):
    PENDING = "pending"
    AWAITING_APPROVAL = "awaiting_approval"
    REQUIRES_ACTION = "requires_action"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DENIED = "denied"
    REJECTED = "rejected"

    @property
    def finished(self) -> bool:
        return self in FINISHED_TOOL_STATUSES


FINISHED_TOOL_STATUSES = frozenset(
    {ToolCallStatus.COMPLETED, ToolCallStatus.FAILED, ToolCallStatus.DENIED, ToolCallStatus.REJECTED}
)


class ToolCall(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "tool_calls"
    __table_args__ = (
        UniqueConstraint("execution_id", "tool_call_id", name="uq_tool_calls_execution_call"),
        Index("ix_tool_calls_execution_turn", "execution_id", "turn", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(ForeignKey("executions.id"), nullable=False)
    tool_call_id: Mapped[str] = mapped_column(String(128), nullable=False)
    turn: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    arguments: Mapped[Any] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(24), nullable=False, default=ToolCallStatus.PENDING.value)
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
