"""validate_options: what the API turns into 422 validation_error."""

from __future__ import annotations

from typing import Any

import pytest

from app.llm.options import InvalidOptions, validate_options


@pytest.mark.parametrize(
    ("provider", "options"),
    [
        ("scripted", {}),
        ("scripted", {"text": "hi", "chunk_delay_ms": 5, "hang_s": 0.5}),
        ("scripted", {"chunks": ["a", "b"], "fail_at_chunk": 1, "fail_mode": "transient", "fail_attempts": 2}),
        ("scripted", {"chunk_delay_ms": 2.5}),
        ("openai", {"temperature": 0.2, "max_tokens": 100, "stop": ["\n"], "include_usage": False}),
        ("openai", {"stop": "END", "seed": 7, "top_p": 1}),
        ("anthropic", {"max_tokens": 2048, "temperature": 1, "top_k": 5, "stop_sequences": ["x"]}),
    ],
)
def test_valid_options_come_back_unchanged(provider: str, options: dict[str, Any]) -> None:
    assert validate_options(provider, options) == options


def test_none_means_no_options() -> None:
    assert validate_options("openai", None) == {}


def test_result_is_a_copy() -> None:
    chunks = ["a"]
    out = validate_options("scripted", {"chunks": chunks})
    out["chunks"].append("b")
    assert chunks == ["a"]


@pytest.mark.parametrize(
    ("provider", "options", "field", "fragment"),
    [
        ("scripted", {"txt": "typo"}, "txt", "unknown option"),
        ("scripted", {"text": 3}, "text", "must be a string"),
        ("scripted", {"chunks": "abc"}, "chunks", "list of strings"),
        ("scripted", {"chunks": ["a", 1]}, "chunks", "chunks[1] must be a string"),
        ("scripted", {"chunk_delay_ms": -1}, "chunk_delay_ms", "between"),
        ("scripted", {"chunk_delay_ms": True}, "chunk_delay_ms", "must be a number"),
        ("scripted", {"chunk_delay_ms": float("nan")}, "chunk_delay_ms", "between"),
        ("scripted", {"fail_at_chunk": 1.5}, "fail_at_chunk", "integer"),
        ("scripted", {"fail_at_chunk": -1}, "fail_at_chunk", "between"),
        ("scripted", {"fail_mode": "sometimes"}, "fail_mode", "fatal, transient"),
        ("scripted", {"fail_attempts": 2}, "fail_attempts", "transient"),
        ("scripted", {"hang_s": "10"}, "hang_s", "number"),
        ("scripted", {"hang_s": 100_000}, "hang_s", "between"),
        ("openai", {"temperature": 3}, "temperature", "between"),
        ("openai", {"max_tokens": 0}, "max_tokens", "between"),
        ("openai", {"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ("openai", {"include_usage": "yes"}, "include_usage", "boolean"),
        ("openai", {"text": "scripted only"}, "text", "unknown option"),
        ("anthropic", {"max_tokens": "many"}, "max_tokens", "integer"),
        ("anthropic", {"temperature": 1.5}, "temperature", "between"),
        ("anthropic", {"stop": ["x"]}, "stop", "allowed: max_tokens"),
    ],
)
def test_invalid_options_name_the_field(provider: str, options: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidOptions) as info:
        validate_options(provider, options)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_unknown_provider() -> None:
    with pytest.raises(InvalidOptions) as info:
        validate_options("gemini", {})
    assert info.value.field == "provider"
    assert "anthropic, openai, scripted" in info.value.message


def test_options_must_be_an_object() -> None:
    with pytest.raises(InvalidOptions, match="must be an object"):
        validate_options("scripted", ["text"])  # type: ignore[arg-type]


def test_invalid_options_is_a_value_error() -> None:
    assert issubclass(InvalidOptions, ValueError)
