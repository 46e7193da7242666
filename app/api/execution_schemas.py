"""Request and response models of executions and credentials (validation and /openapi.json)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr, field_validator

from app.api.schemas import ProviderName, Strict

# RabbitMQ closes a channel whose delivery stays unacked past consumer_timeout (30 min): keep well inside it.
MAX_TIMEOUT_S = 1500
ExecutionStatusName = Literal[
    "pending", "awaiting_approval", "running", "requires_action", "waiting", "completed", "failed", "cancelled",
    "timed_out", "denied",
]
MAX_TURNS = 32
MAX_WAIT_TIMEOUT_S = 7 * 24 * 3600


class ExecuteRequest(Strict):
    message: StrictStr = Field(min_length=1, max_length=32768)
    stream: StrictBool = False
    action: StrictStr = Field(default="chat", min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_.:-]*$")
    timeout_s: StrictInt = Field(default=120, ge=1, le=MAX_TIMEOUT_S)
    metadata: dict[str, Any] | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=1_000_000)
    max_turns: StrictInt = Field(default=8, ge=1, le=MAX_TURNS, description="LLM turns of the tool loop")
    wait_timeout_s: StrictInt | None = Field(default=None, ge=1, le=MAX_WAIT_TIMEOUT_S,
                                             description="bound of each wait: for capacity, an approval, a client "
                                                         "tool, an asked agent (default EXECUTION_WAIT_TIMEOUT_S)")


class ExecutionAccepted(BaseModel):
    execution_id: str
    agent_id: str
    status: ExecutionStatusName
    stream_url: str
    created_at: str


class ExecutionError(BaseModel):
    code: str
    message: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class Step(BaseModel):
    name: str
    status: str
    started_at: str | None
    finished_at: str | None


class Queued(BaseModel):
    reason: Literal["workspace_concurrency", "credential_concurrency", "capacity", "requests_per_minute",
                    "tokens_per_minute"]
class ToolCallOut(BaseModel):
    tool_call_id: str
    name: str
    kind: str
    arguments: Any
    turn: int
    status: Literal["pending", "awaiting_approval", "requires_action", "running", "completed", "failed", "denied",
                    "rejected"]
    output: Any
    error: dict[str, Any] | None
    started_at: str | None
    finished_at: str | None


class PendingCall(BaseModel):
    id: str
    name: str
    arguments: Any


class PendingCalls(BaseModel):
    tool_calls: list[PendingCall]


class ToolOutput(Strict):
    tool_call_id: StrictStr = Field(min_length=1, max_length=128)
    output: Any = Field(description="a string or any JSON value: what the LLM reads as the tool's result")


class ToolOutputsRequest(Strict):
    tool_outputs: list[ToolOutput] = Field(min_length=1, max_length=128)


class ExecutionOut(BaseModel):
    execution_id: str
    agent_id: str
    status: ExecutionStatusName
    action: str
    message: str
    output: str | None
    error: ExecutionError | None
    usage: Usage
    attempts: int
    steps: list[Step]
    metadata: dict[str, Any] | None
    timeout_s: int
    max_tokens: int | None = None
    queued: Queued | None = None
    created_at: str
    started_at: str | None
    finished_at: str | None
    turns: int
    max_turns: int
    wait_timeout_s: int
    tool_calls: list[ToolCallOut]
    required_action: PendingCalls | None
    pending_approval: PendingCalls | None


class ExecutionList(BaseModel):
    items: list[ExecutionOut]
    next_cursor: str | None


class CancelAccepted(BaseModel):
    execution_id: str
    status: ExecutionStatusName
    cancel_requested: bool


class CredentialLimits(Strict):
    """0 or absent: no limit."""

    max_concurrency: StrictInt = Field(default=0, ge=0, le=100_000)
    requests_per_minute: StrictInt = Field(default=0, ge=0, le=10_000_000)
    tokens_per_minute: StrictInt = Field(default=0, ge=0, le=10_000_000_000)


class CredentialCreate(Strict):
    provider: ProviderName
    api_key: StrictStr = Field(min_length=8, max_length=4096, repr=False)
    base_url: StrictStr | None = Field(default=None, max_length=500)
    limits: CredentialLimits | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value


class CredentialLimitsOut(BaseModel):
    max_concurrency: int
    requests_per_minute: int
    tokens_per_minute: int


class CredentialOut(BaseModel):
    id: str
    provider: ProviderName
    last4: str
    base_url: str | None
    limits: CredentialLimitsOut
    created_at: str


class CredentialList(BaseModel):
    items: list[CredentialOut]
    next_cursor: str | None
