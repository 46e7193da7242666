"""Request and response models: validation for the routes and schemas for /openapi.json."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from app.llm import DEFAULT_PROVIDER

Maturity = Literal["STUDENT", "INTERN", "SUPERVISED", "AUTONOMOUS"]
ProviderName = Literal["scripted", "openai", "anthropic"]


class Strict(BaseModel):
    """Unknown fields are a client mistake worth reporting, not silently dropping."""

    model_config = ConfigDict(extra="forbid", strict=True)


class LlmConfig(Strict):
    provider: ProviderName = DEFAULT_PROVIDER
    model: StrictStr | None = Field(default=None, max_length=200)
    credential_id: StrictStr | None = Field(default=None, max_length=36)
    options: dict[str, Any] = Field(default_factory=dict)


ToolKind = Literal["client", "webhook", "agent"]
DEFAULT_TOOL_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class ToolDeclaration(Strict):
    """One tool the LLM may call; cross-field rules and the JSON Schema check live in app.services.tools."""

    name: StrictStr = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: StrictStr = Field(default="", max_length=4096)
    parameters: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_TOOL_PARAMETERS),
                                       description="a JSON Schema (Draft 2020-12) for the call's arguments")
    action: StrictStr = Field(min_length=1, max_length=64, description="the governance action of each call")
    kind: ToolKind
    url: StrictStr | None = Field(default=None, max_length=2048, description="webhook tools: http(s) URL")
    agent_id: StrictStr | None = Field(default=None, max_length=36, description="agent tools: the asked agent")
    timeout_s: int | None = Field(default=None, ge=1, le=600, description="webhook tools: per try, default 30")


MAX_TOOLS = 32


class AgentCreate(Strict):
    name: StrictStr = Field(min_length=1, max_length=200)
    maturity_level: Maturity
    system_prompt: StrictStr | None = Field(default=None, max_length=32768)
    llm: LlmConfig | None = None
    confidence_score: float = Field(default=0.5, ge=0, le=1, allow_inf_nan=False)
    auto_reply: StrictBool = False
    tools: list[ToolDeclaration] | None = Field(default=None, max_length=MAX_TOOLS)


class AgentUpdate(Strict):
    name: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    maturity_level: Maturity | None = None
    system_prompt: StrictStr | None = Field(default=None, max_length=32768)
    llm: LlmConfig | None = None
    confidence_score: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    status: Literal["active", "paused"] | None = None
    auto_reply: StrictBool | None = None
    tools: list[ToolDeclaration] | None = Field(default=None, max_length=MAX_TOOLS)


class AgentOut(BaseModel):
    id: str
    name: str
    maturity_level: Maturity
    confidence_score: float
    status: Literal["active", "paused"]
    system_prompt: str | None
    llm: dict[str, Any]
    auto_reply: bool
    tools: list[dict[str, Any]]
    created_at: str
    updated_at: str


class AgentList(BaseModel):
    items: list[AgentOut]
    next_cursor: str | None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorOut(BaseModel):
    error: ErrorBody


class AuditRow(BaseModel):
    id: int
    at: str
    workspace_id: str
    actor: str
    agent_id: str | None
    execution_id: str | None
    action: str
    result: Literal["ok", "denied", "error"]
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditList(BaseModel):
    items: list[AuditRow]
    next_cursor: str | None


class AuditVerify(BaseModel):
    ok: bool
    checked: int
    first_bad_id: int | None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, dict[str, Any]]
    blocked: list[str] | None = Field(default=None, description="dependencies refusing work: the broker during "
                                                                "a memory or disk alarm (connection.blocked)")


class MessageSend(Strict):
    to_agent_id: StrictStr = Field(min_length=1, max_length=64)
    message: Any = Field(description="a string or any JSON value, at most 256 KiB serialized")
    correlation_id: StrictStr | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[!-~]+$")
    message_id: StrictStr | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[!-~]+$",
                                         description="client-chosen id: a retry with the same id never duplicates")
    execute: StrictBool = Field(default=False, description="run the receiver on the message and reply to the sender")


class MessageSent(BaseModel):
    message_id: str
    status: Literal["confirmed"]
    execution_id: str | None


class InboxMessage(BaseModel):
    seq: int
    message_id: str
    from_agent_id: str
    to_agent_id: str
    message: Any
    correlation_id: str | None
    sent_at: str
    delivered_at: str
    hop: int


class MessageList(BaseModel):
    messages: list[InboxMessage]
    next_after: int


class DeadLetter(BaseModel):
    id: int
    message_id: str | None
    from_agent_id: str | None
    to_agent_id: str | None
    body: str | None
    reason: str | None
    dead_lettered_at: str


class DeadLetterList(BaseModel):
    items: list[DeadLetter]


class EventPublish(Strict):
    event_type: StrictStr = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$",
                                  description="dot-separated words, no wildcards (e.g. order.created)")
    data: Any = None


class EventAccepted(BaseModel):
    event_id: str
