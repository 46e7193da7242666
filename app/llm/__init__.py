"""LLM providers behind one streaming interface; self-contained (imports nothing else from app/).

Usage by the LLM step::

    provider = get_provider(name, api_key=key, base_url=url, timeouts=Timeouts(connect=5, read=60))
    for item in provider.stream(system_prompt=..., message=..., model=None, options=opts,
                                should_stop=lambda: cancelled() or past_deadline(), attempt=n):
        Delta -> emit text; ToolCall -> a call to run (tool loop); Usage -> the last item
    A tool loop passes messages=[AssistantTurn(...), ToolResult(...), ...] (the turns after `message`) and
    tools=[ToolSpec(...)].
    TransientProviderError -> retry with backoff (exc.retry_after may hint); FatalProviderError -> fail;
    Stopped -> cancelled or timed out (the caller knows which).
"""

from app.llm.base import (
    AssistantTurn,
    Delta,
    FatalProviderError,
    Message,
    Provider,
    ProviderError,
    ShouldStop,
    Stopped,
    StreamItem,
    Timeouts,
    ToolCall,
    ToolResult,
    ToolSpec,
    TransientProviderError,
    Usage,
    UserTurn,
)
from app.llm.options import InvalidOptions, validate_options
from app.llm.registry import DEFAULT_MODELS, DEFAULT_PROVIDER, PROVIDERS, UnknownProvider, get_provider

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_PROVIDER",
    "PROVIDERS",
    "AssistantTurn",
    "Delta",
    "FatalProviderError",
    "InvalidOptions",
    "Message",
    "Provider",
    "ProviderError",
    "ShouldStop",
    "Stopped",
    "StreamItem",
    "Timeouts",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "TransientProviderError",
    "UnknownProvider",
    "Usage",
    "UserTurn",
    "get_provider",
    "validate_options",
]
