"""Database models; importing this package registers every table on db.metadata."""

from app.models.agent import Agent, MaturityLevel
from app.models.audit import AuditLog
from app.models.credential import Credential
from app.models.execution import Execution, ExecutionStatus
from app.models.tool_call import ToolCall, ToolCallStatus
from app.models.workspace import ApiKey, Workspace

__all__ = [
    "Agent",
    "ApiKey",
    "AuditLog",
    "Credential",
    "Execution",
    "ExecutionStatus",
    "MaturityLevel",
    "ToolCall",
    "ToolCallStatus",
    "Workspace",
]
