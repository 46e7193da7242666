"""Provider lookup by name, so the LLM step turns an agent's llm config plus a credential into a Provider."""

from __future__ import annotations

from typing import Final

import httpx

from app.llm import anthropic, openai, scripted, traced
from app.llm.base import Provider, Timeouts

PROVIDERS: frozenset[str] = frozenset({"scripted", "openai", "anthropic"})
DEFAULT_PROVIDER: Final = "scripted"
DEFAULT_MODELS: dict[str, str] = {
    "scripted": scripted.DEFAULT_MODEL,
    "openai": openai.DEFAULT_MODEL,
    "anthropic": anthropic.DEFAULT_MODEL,
}
DEFAULT_BASE_URLS: dict[str, str | None] = {
    "scripted": None,
    "openai": openai.DEFAULT_BASE_URL,
    "anthropic": anthropic.DEFAULT_BASE_URL,
}


class UnknownProvider(ValueError):  # noqa: N818 - reads as "unknown provider" at the call site
    """A provider name outside PROVIDERS (the API should have refused it with 422 already)."""


def get_provider(
    name: str,
    *,
    api_key: str | None,
    base_url: str | None,
    timeouts: Timeouts | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Provider:
    """Build provider `name` from a decrypted credential (scripted ignores api_key and base_url); traced when on."""
    if name == "scripted":
        return traced.wrap(scripted.ScriptedProvider())
    if name == "openai":
        return traced.wrap(openai.OpenAIProvider(api_key=api_key, base_url=base_url, timeouts=timeouts,
                                                 transport=transport))
    if name == "anthropic":
        return traced.wrap(anthropic.AnthropicProvider(api_key=api_key, base_url=base_url, timeouts=timeouts,
                                                       transport=transport))
    raise UnknownProvider(f"unknown provider {name!r}; expected one of {', '.join(sorted(PROVIDERS))}")
