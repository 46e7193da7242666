"""Shared helpers: build a real provider against the fake server and drain its stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.llm import Delta, Provider, Timeouts, Usage, get_provider
from tests.support.fake_llm_servers import FakeLLMServer

KEY = "sk-test-7f3a9c2e5b1d4860SECRET"
FLAVOURS = ["openai", "anthropic"]


def provider_for(
    name: str, server: FakeLLMServer, *, key: str | None = KEY, connect: float = 2.0, read: float = 5.0
) -> Provider:
    """A real client pointed at the fake upstream."""
    base_url = server.openai_base_url if name == "openai" else server.anthropic_base_url
    return get_provider(name, api_key=key, base_url=base_url, timeouts=Timeouts(connect=connect, read=read))


@dataclass
class Outcome:
    """What a drained stream produced before it ended or raised."""

    deltas: list[str] = field(default_factory=list)
    usage: Usage | None = None


def drain(
    provider: Provider,
    *,
    message: str = "hello",
    system_prompt: str | None = "be brief",
    should_stop: Callable[[], bool] = lambda: False,
    options: dict[str, object] | None = None,
    outcome: Outcome | None = None,
) -> Outcome:
    """Consume the stream into `outcome` (pass one in to inspect it after an exception)."""
    outcome = outcome if outcome is not None else Outcome()
    for item in provider.stream(
        system_prompt=system_prompt,
        message=message,
        model=None,
        options=dict(options or {}),
        should_stop=should_stop,
        attempt=1,
    ):
        if isinstance(item, Delta):
            outcome.deltas.append(item.text)
        else:
            outcome.usage = item
    return outcome
