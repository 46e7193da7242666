"""One requested run of an agent, from request through governance, LLM and persistence."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db
from app.models.types import new_id
from app.timeutil import utcnow


class ExecutionStatus(enum.StrEnum):
    PENDING = "pending"
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    REQUIRES_ACTION = "requires_action"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    DENIED = "denied"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.CANCELLED,
        ExecutionStatus.TIMED_OUT,
        ExecutionStatus.DENIED,
    }
)


class Execution(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "executions"
    __table_args__ = (
        UniqueConstraint("workspace_id", "idempotency_key", name="uq_executions_idempotency"),
        Index("ix_executions_agent_created", "agent_id", "created_at", "id"),
        # The workers' sweeps (never-queued pending, abandoned running executions) read only these rows.
        Index("ix_executions_unfinished_created", "created_at",
              postgresql_where=text("status IN ('pending', 'running')"),
              sqlite_where=text("status IN ('pending', 'running')")),
        Index("ix_executions_workspace_created", "workspace_id", "created_at"),  # GET /usage
        # The sweep that ends pauses past wait_timeout_s reads only paused rows.
        Index("ix_executions_paused_until", "paused_until",
              postgresql_where=text("paused_until IS NOT NULL"), sqlite_where=text("paused_until IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), nullable=False, index=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), nullable=False)
    status: Mapped[str] = mapped_column(String(24), nullable=False, default=ExecutionStatus.PENDING.value)
    action: Mapped[str] = mapped_column(String(64), nullable=False, default="chat")
    message: Mapped[str] = mapped_column(Text, nullable=False)
    stream: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    timeout_s: Mapped[int] = mapped_column(Integer, nullable=False, default=120)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    governance: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    correlation_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    task_ids: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # W3C traceparent of the span that created it (tracing on): a chain sent later (sweep, approval) joins its trace.
    traceparent: Mapped[str | None] = mapped_column(String(55), nullable=True)
    turns: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_turns: Mapped[int] = mapped_column(Integer, nullable=False, default=8)
    wait_timeout_s: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: EXECUTION_WAIT_TIMEOUT_S
    # The conversation of a tool loop so far (assistant turns and tool results), replayed to the next LLM turn.
    conversation: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    required_action: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    pending_approval: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    paused_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
