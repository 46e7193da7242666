"""LLM providers behind one streaming interface; self-contained (imports nothing else from app/).

Usage by the LLM step::

    provider = get_provider(name, api_key=key, base_url=url, timeouts=Timeouts(connect=5, read=60))
    for item in provider.stream(system_prompt=..., message=..., model=None, options=opts,
                                should_stop=lambda: cancelled() or past_deadline(), attempt=n):
        Delta -> emit text; Usage -> the last item
    TransientProviderError -> retry with backoff (exc.retry_after may hint); FatalProviderError -> fail;
    Stopped -> cancelled or timed out (the caller knows which).
"""

from app.llm.base import (
    Delta,
    FatalProviderError,
    Provider,
    ProviderError,
    ShouldStop,
    Stopped,
    StreamItem,
    Timeouts,
    TransientProviderError,
    Usage,
)
from app.llm.options import InvalidOptions, validate_options
from app.llm.registry import DEFAULT_MODELS, DEFAULT_PROVIDER, PROVIDERS, UnknownProvider, get_provider

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_PROVIDER",
    "PROVIDERS",
    "Delta",
    "FatalProviderError",
    "InvalidOptions",
    "Provider",
    "ProviderError",
    "ShouldStop",
    "Stopped",
    "StreamItem",
    "Timeouts",
    "TransientProviderError",
    "UnknownProvider",
    "Usage",
    "get_provider",
    "validate_options",
]
