"""Registry lookup, request building, and keys kept out of reprs."""

from __future__ import annotations

import pytest

from app.llm import DEFAULT_MODELS, PROVIDERS, Provider, UnknownProvider, get_provider
from app.llm.anthropic import AnthropicProvider
from app.llm.openai import OpenAIProvider
from app.llm.scripted import ScriptedProvider

KEY = "sk-ant-SECRET-abcdef123456"


def test_provider_names_and_default_models() -> None:
    assert PROVIDERS == {"scripted", "openai", "anthropic"}
    assert set(DEFAULT_MODELS) == PROVIDERS


@pytest.mark.parametrize(
    ("name", "cls"), [("scripted", ScriptedProvider), ("openai", OpenAIProvider), ("anthropic", AnthropicProvider)]
)
def test_get_provider_builds_each(name: str, cls: type) -> None:
    provider = get_provider(name, api_key=KEY, base_url=None)
    assert isinstance(provider, cls)
    assert isinstance(provider, Provider)
    assert provider.name == name
    assert provider.default_model == DEFAULT_MODELS[name]
    assert KEY not in repr(provider)


def test_unknown_provider() -> None:
    with pytest.raises(UnknownProvider, match="gemini"):
        get_provider("gemini", api_key=None, base_url=None)


def test_default_base_urls() -> None:
    assert get_provider("openai", api_key=None, base_url=None).base_url == "https://api.openai.com/v1"  # type: ignore[attr-defined]
    assert get_provider("anthropic", api_key=None, base_url=None).base_url == "https://api.anthropic.com"  # type: ignore[attr-defined]


def test_openai_request_shape() -> None:
    provider = OpenAIProvider(api_key=KEY, base_url="http://127.0.0.1:1/v1/")
    request = provider.build_request(system_prompt="sys", message="hi", model=None, options={"temperature": 0.1})
    assert request.url == "http://127.0.0.1:1/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.1,
    }
    assert KEY not in repr(request)


def test_openai_without_key_or_usage_option() -> None:
    provider = OpenAIProvider(api_key=None, base_url="http://localhost:11434/v1")
    request = provider.build_request(system_prompt=None, message="hi", model="llama3", options={"include_usage": False})
    assert "authorization" not in request.headers
    assert "stream_options" not in request.body
    assert "include_usage" not in request.body
    assert request.body["messages"] == [{"role": "user", "content": "hi"}]


def test_anthropic_request_shape() -> None:
    provider = AnthropicProvider(api_key=KEY, base_url="http://127.0.0.1:1/v1")
    request = provider.build_request(system_prompt="sys", message="hi", model="claude-x", options={})
    assert request.url == "http://127.0.0.1:1/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.body == {
        "model": "claude-x",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "system": "sys",
    }
    overridden = provider.build_request(system_prompt=None, message="hi", model=None, options={"max_tokens": 9})
    assert overridden.body["max_tokens"] == 9
    assert "system" not in overridden.body
