"""The streaming provider contract: stream items, the Provider protocol and the error taxonomy."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

ShouldStop = Callable[[], bool]
"""Polled by providers between chunks and while waiting; True means stop now (cancel or timeout)."""


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of reply text, yielded as soon as the upstream produced it."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts, yielded exactly once as the last item of a successful stream."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    # As the upstream said it (stop, length, end_turn...), for the trace; not part of a Usage's value.
    finish_reason: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool the model asked to call, yielded once its arguments are complete (before Usage).

    `arguments` is the parsed JSON (normally an object); when the model sent text that is not JSON it is
    that raw string, so the caller can hand an error back instead of failing the turn.
    """

    id: str
    name: str
    arguments: Any


StreamItem = Delta | ToolCall | Usage


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: its name, what it is for and a JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AssistantTurn:
    """What the model said in an earlier turn: its text and the tools it called."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The answer to one earlier tool call, as the model reads it (`content` is text, often JSON)."""

    tool_call_id: str
    name: str
    content: str
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class UserTurn:
    """A later message from the user (the first one is stream()'s `message`)."""

    text: str


Message = AssistantTurn | ToolResult | UserTurn
"""One entry of the conversation after the first user message."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Network limits so a dead or stalled upstream can never hang an LLM step forever."""

    connect: float = 10.0
    read: float = 60.0
    write: float = 30.0


# Error codes carried by ProviderError.code (stable strings; the execution's error.code).
RATE_LIMITED = "rate_limited"
UPSTREAM_ERROR = "upstream_error"
OVERLOADED = "overloaded"
CONNECTION_ERROR = "connection_error"
TIMEOUT = "timeout"
INCOMPLETE_STREAM = "incomplete_stream"
AUTH_FAILED = "auth_failed"
BAD_REQUEST = "bad_request"
BAD_RESPONSE = "bad_response"
INVALID_OPTIONS = "invalid_options"
PROVIDER_ERROR = "provider_error"
SCRIPTED_FAILURE = "scripted_failure"


class ProviderError(Exception):
    """Base of every failure a provider reports, so callers need exactly one except clause."""

    transient: bool = False

    def __init__(self, code: str, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, status={self.status!r})"


class TransientProviderError(ProviderError):
    """A failure worth retrying with backoff: 429, 5xx, connection errors, resets, read timeouts."""

    transient = True


class FatalProviderError(ProviderError):
    """A failure a retry cannot fix: auth errors, other 4xx, malformed responses, invalid options."""


class Stopped(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by stream() when should_stop() turned True, so the caller knows the reply is partial."""


@runtime_checkable
class Provider(Protocol):
    """One LLM backend behind the single streaming interface the LLM step uses."""

    name: str
    default_model: str

    def stream(
        self,
        *,
        system_prompt: str | None,
        message: str,
        model: str | None,
        options: dict[str, Any],
        should_stop: ShouldStop,
        attempt: int,
        messages: Sequence[Message] = (),
        tools: Sequence[ToolSpec] = (),
    ) -> Iterator[StreamItem]:
        """Yield Delta and ToolCall items, then one Usage; raise ProviderError, or Stopped when told to stop.

        `messages` is the conversation after `message` (earlier turns and tool results); `tools` are offered.
        """
        ...
