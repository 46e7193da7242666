"""Validation of per-agent provider options, so bad input is a clear 422 instead of a failed execution."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

FAIL_MODES = ("fatal", "transient")


class InvalidOptions(ValueError):
    """Options that do not fit the provider; `field` names the offending key for error.details."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _int(key: str, value: Any, *, minimum: int, maximum: int) -> int:
    """Accept a real integer (never a bool) within bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOptions(f"options.{key} must be an integer, got {type(value).__name__}", field=key)
    if not minimum <= value <= maximum:
        raise InvalidOptions(f"options.{key} must be between {minimum} and {maximum}, got {value}", field=key)
    return value


def _number(key: str, value: Any, *, minimum: float, maximum: float) -> float:
    """Accept a finite int or float (never a bool) within bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidOptions(f"options.{key} must be a number, got {type(value).__name__}", field=key)
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise InvalidOptions(f"options.{key} must be between {minimum:g} and {maximum:g}, got {value}", field=key)
    return value


def _str(key: str, value: Any, *, max_len: int) -> str:
    """Accept a string of bounded length."""
    if not isinstance(value, str):
        raise InvalidOptions(f"options.{key} must be a string, got {type(value).__name__}", field=key)
    if len(value) > max_len:
        raise InvalidOptions(f"options.{key} must be at most {max_len} characters", field=key)
    return value


def _str_list(key: str, value: Any, *, max_items: int, max_len: int) -> list[str]:
    """Accept a list of strings of bounded size."""
    if not isinstance(value, list):
        raise InvalidOptions(f"options.{key} must be a list of strings, got {type(value).__name__}", field=key)
    if len(value) > max_items:
        raise InvalidOptions(f"options.{key} must have at most {max_items} items", field=key)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidOptions(f"options.{key}[{index}] must be a string, got {type(item).__name__}", field=key)
        if len(item) > max_len:
            raise InvalidOptions(f"options.{key}[{index}] must be at most {max_len} characters", field=key)
    return list(value)


def _bool(key: str, value: Any) -> bool:
    """Accept a real boolean only."""
    if not isinstance(value, bool):
        raise InvalidOptions(f"options.{key} must be a boolean, got {type(value).__name__}", field=key)
    return value


def _check_keys(provider: str, options: Mapping[str, Any], allowed: set[str]) -> None:
    """Reject unknown keys, so a typo is reported instead of silently ignored."""
    unknown = sorted(str(key) for key in options if key not in allowed)
    if unknown:
        raise InvalidOptions(
            f"unknown option(s) for provider {provider!r}: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
            field=unknown[0],
        )


MAX_SCRIPTED_TURNS = 64
MAX_SCRIPTED_CALLS = 32
TOOL_NAME_MAX = 64
TOOL_CALL_ID_MAX = 128


def _scripted_call(where: str, call: Any, seen_ids: set[str]) -> dict[str, Any]:
    """One scripted tool call: {name, arguments?, id?}; ids unique across the script."""
    if not isinstance(call, Mapping):
        raise InvalidOptions(f"options.{where} must be an object with name, arguments and id", field="turns")
    unknown = sorted(str(key) for key in call if key not in {"name", "arguments", "id"})
    if unknown:
        raise InvalidOptions(f"options.{where} has unknown key(s): {', '.join(unknown)}", field="turns")
    name = call.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= TOOL_NAME_MAX:
        raise InvalidOptions(f"options.{where}.name must be a string of 1 to {TOOL_NAME_MAX} characters",
                             field="turns")
    out: dict[str, Any] = {"name": name, "arguments": call.get("arguments", {})}
    if "id" in call:
        call_id = call["id"]
        if not isinstance(call_id, str) or not 1 <= len(call_id) <= TOOL_CALL_ID_MAX or not call_id.isprintable():
            raise InvalidOptions(f"options.{where}.id must be a printable string of 1 to {TOOL_CALL_ID_MAX} "
                                 "characters", field="turns")
        if call_id in seen_ids:
            raise InvalidOptions(f"options.{where}.id {call_id!r} is used twice", field="turns")
        seen_ids.add(call_id)
        out["id"] = call_id
    return out


def _scripted_turns(value: Any) -> list[dict[str, Any]]:
    """options.turns: one entry per LLM turn, each {text? | chunks?, tool_calls?: [{name, arguments, id?}]}."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SCRIPTED_TURNS:
        raise InvalidOptions(f"options.turns must be a list of 1 to {MAX_SCRIPTED_TURNS} turns", field="turns")
    seen_ids: set[str] = set()
    turns: list[dict[str, Any]] = []
    for index, entry in enumerate(value):
        where = f"turns[{index}]"
        if not isinstance(entry, Mapping):
            raise InvalidOptions(f"options.{where} must be an object", field="turns")
        unknown = sorted(str(key) for key in entry if key not in {"text", "chunks", "tool_calls"})
        if unknown:
            raise InvalidOptions(f"options.{where} has unknown key(s): {', '.join(unknown)}; allowed: chunks, "
                                 "text, tool_calls", field="turns")
        if "text" in entry and "chunks" in entry:
            raise InvalidOptions(f"options.{where} takes text or chunks, not both", field="turns")
        turn: dict[str, Any] = {}
        if "text" in entry:
            turn["text"] = _str(f"{where}.text", entry["text"], max_len=1_000_000)
        if "chunks" in entry:
            turn["chunks"] = _str_list(f"{where}.chunks", entry["chunks"], max_items=100_000, max_len=1_000_000)
        if "tool_calls" in entry:
            calls = entry["tool_calls"]
            if not isinstance(calls, list) or len(calls) > MAX_SCRIPTED_CALLS:
                raise InvalidOptions(f"options.{where}.tool_calls must be a list of at most {MAX_SCRIPTED_CALLS}",
                                     field="turns")
            turn["tool_calls"] = [_scripted_call(f"{where}.tool_calls[{position}]", call, seen_ids)
                                  for position, call in enumerate(calls)]
        turns.append(turn)
    return turns


def validate_scripted(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options of the offline scripted provider (DESIGN.md, Provider credentials)."""
    allowed = {"text", "chunks", "chunk_delay_ms", "fail_at_chunk", "fail_mode", "fail_attempts", "hang_s",
               "max_tokens", "turns"}
    _check_keys("scripted", options, allowed)
    out: dict[str, Any] = {}
    if "text" in options:
        out["text"] = _str("text", options["text"], max_len=1_000_000)
    if "chunks" in options:
        out["chunks"] = _str_list("chunks", options["chunks"], max_items=100_000, max_len=1_000_000)
    if "chunk_delay_ms" in options:
        out["chunk_delay_ms"] = _number("chunk_delay_ms", options["chunk_delay_ms"], minimum=0, maximum=60_000)
    if "fail_at_chunk" in options:
        out["fail_at_chunk"] = _int("fail_at_chunk", options["fail_at_chunk"], minimum=0, maximum=1_000_000)
    if "fail_mode" in options:
        mode = options["fail_mode"]
        if mode not in FAIL_MODES:
            raise InvalidOptions(f"options.fail_mode must be one of {', '.join(FAIL_MODES)}", field="fail_mode")
        out["fail_mode"] = mode
    if "fail_attempts" in options:
        out["fail_attempts"] = _int("fail_attempts", options["fail_attempts"], minimum=1, maximum=1_000)
        if out.get("fail_mode") != "transient":
            raise InvalidOptions("options.fail_attempts needs fail_mode 'transient'", field="fail_attempts")
    if "hang_s" in options:
        out["hang_s"] = _number("hang_s", options["hang_s"], minimum=0, maximum=3_600)
    if "max_tokens" in options:
        out["max_tokens"] = _int("max_tokens", options["max_tokens"], minimum=1, maximum=10_000_000)
    if "turns" in options:
        out["turns"] = _scripted_turns(options["turns"])
    return out


def validate_openai(options: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling options forwarded to /chat/completions, plus include_usage (ours, not sent as is)."""
    allowed = {
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
        "presence_penalty", "frequency_penalty", "include_usage",
    }  # fmt: skip
    _check_keys("openai", options, allowed)
    out: dict[str, Any] = {}
    if "temperature" in options:
        out["temperature"] = _number("temperature", options["temperature"], minimum=0, maximum=2)
    if "top_p" in options:
        out["top_p"] = _number("top_p", options["top_p"], minimum=0, maximum=1)
    for key in ("presence_penalty", "frequency_penalty"):
        if key in options:
            out[key] = _number(key, options[key], minimum=-2, maximum=2)
    for key in ("max_tokens", "max_completion_tokens"):
        if key in options:
            out[key] = _int(key, options[key], minimum=1, maximum=10_000_000)
    if "seed" in options:
        out["seed"] = _int("seed", options["seed"], minimum=-(2**63), maximum=2**63 - 1)
    if "stop" in options:
        stop = options["stop"]
        out["stop"] = (
            _str("stop", stop, max_len=1_000)
            if isinstance(stop, str)
            else _str_list("stop", stop, max_items=4, max_len=1_000)
        )
    if "include_usage" in options:
        out["include_usage"] = _bool("include_usage", options["include_usage"])
    return out


def validate_anthropic(options: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling options forwarded to /v1/messages."""
    allowed = {"max_tokens", "temperature", "top_p", "top_k", "stop_sequences"}
    _check_keys("anthropic", options, allowed)
    out: dict[str, Any] = {}
    if "max_tokens" in options:
        out["max_tokens"] = _int("max_tokens", options["max_tokens"], minimum=1, maximum=10_000_000)
    if "temperature" in options:
        out["temperature"] = _number("temperature", options["temperature"], minimum=0, maximum=1)
    if "top_p" in options:
        out["top_p"] = _number("top_p", options["top_p"], minimum=0, maximum=1)
    if "top_k" in options:
        out["top_k"] = _int("top_k", options["top_k"], minimum=1, maximum=1_000_000)
    if "stop_sequences" in options:
        out["stop_sequences"] = _str_list("stop_sequences", options["stop_sequences"], max_items=64, max_len=1_000)
    return out


VALIDATORS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "scripted": validate_scripted,
    "openai": validate_openai,
    "anthropic": validate_anthropic,
}


def validate_options(provider: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check and normalise an agent's llm.options for `provider`; raise InvalidOptions (-> 422) if wrong."""
    validator = VALIDATORS.get(provider)
    if validator is None:
        raise InvalidOptions(
            f"unknown provider {provider!r}; expected one of {', '.join(sorted(VALIDATORS))}",
            field="provider",
        )
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidOptions(f"options must be an object, got {type(options).__name__}", field="options")
    return validator(options)
