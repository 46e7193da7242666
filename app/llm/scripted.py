"""The offline, deterministic `scripted` provider, so every success and failure path is testable."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from app.llm.base import (
    INVALID_OPTIONS,
    SCRIPTED_FAILURE,
    Delta,
    FatalProviderError,
    Message,
    ShouldStop,
    StreamItem,
    ToolCall,
    ToolSpec,
    TransientProviderError,
    Usage,
)
from app.llm.conversation import history_text, turn_index
from app.llm.options import InvalidOptions, validate_scripted
from app.llm.stopping import check_stop, wait_or_stop
from app.llm.tokens import count_tokens

DEFAULT_MODEL = "scripted-1"
_WORD = re.compile(r"\s*\S+|\s+")


def split_words(text: str) -> list[str]:
    """Split text into word chunks that keep their leading whitespace, so "".join(chunks) == text."""
    return _WORD.findall(text)


def default_reply(message: str) -> str:
    """The reply when no text/chunks option is given: derived from the message only, hence deterministic."""
    return f"Echo: {message}"


class ScriptedProvider:
    """Streams a scripted reply, optionally slowly, hanging or failing, driven by per-agent options."""

    name = "scripted"
    default_model = DEFAULT_MODEL

    def __repr__(self) -> str:
        return "ScriptedProvider()"

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
        """Yield the scripted chunks, this turn's tool calls, then Usage; fail or hang as the options say.

        fail_at_chunk at or past the end fails after the last chunk (before Usage); fail_mode without
        fail_at_chunk fails before chunk 0; fail_mode "fatal" is the default once fail_at_chunk is set;
        fail_attempts (transient only, default 1) is how many first attempts fail. With `turns`, the entry
        for this turn (the assistant turns in `messages`) gives its text and tool calls; past the last
        entry the reply is plain text without calls, so a loop always ends.
        """
        try:
            opts = validate_scripted(options)
        except InvalidOptions as exc:
            raise FatalProviderError(INVALID_OPTIONS, exc.message) from None
        turn = turn_index(messages)
        entry: dict[str, Any] = {}
        if "turns" in opts and turn < len(opts["turns"]):
            entry = opts["turns"][turn]
        calls = [ToolCall(id=call.get("id") or f"call_{uuid.uuid4().hex[:24]}", name=call["name"],
                          arguments=call["arguments"]) for call in entry.get("tool_calls", ())]
        chunks = self._chunks(opts, entry, message)
        if "max_tokens" in opts:
            chunks = _capped(chunks, opts["max_tokens"])
        fail_at: int | None = opts.get("fail_at_chunk")
        if fail_at is None and "fail_mode" in opts:
            fail_at = 0
        delay_s = float(opts.get("chunk_delay_ms", 0)) / 1000.0

        check_stop(should_stop)
        if opts.get("hang_s"):
            wait_or_stop(float(opts["hang_s"]), should_stop)
        for index, chunk in enumerate(chunks):
            if index and delay_s:
                wait_or_stop(delay_s, should_stop)
            check_stop(should_stop)
            if index == fail_at:
                self._maybe_fail(opts, index, attempt)
            if chunk:
                yield Delta(chunk)
        check_stop(should_stop)
        if fail_at is not None and fail_at >= len(chunks):
            self._maybe_fail(opts, len(chunks), attempt)
        yield from calls
        yield Usage(
            prompt_tokens=count_tokens(system_prompt, message, *history_text(messages)),
            completion_tokens=count_tokens("".join(chunks)),
        )

    @staticmethod
    def _chunks(opts: dict[str, Any], entry: dict[str, Any], message: str) -> list[str]:
        """This turn's text: its own, else none for a calling turn, else the options' or the default reply."""
        if "chunks" in entry:
            return list(entry["chunks"])
        if "text" in entry:
            return split_words(entry["text"])
        if entry.get("tool_calls"):
            return []
        if "chunks" in opts:
            return list(opts["chunks"])
        return split_words(opts["text"] if "text" in opts else default_reply(message))

    @staticmethod
    def _maybe_fail(opts: dict[str, Any], index: int, attempt: int) -> None:
        """Raise the scripted failure unless it is transient and this attempt is past fail_attempts."""
        if opts.get("fail_mode", "fatal") == "fatal":
            raise FatalProviderError(SCRIPTED_FAILURE, f"scripted fatal failure before chunk {index}")
        if attempt <= opts.get("fail_attempts", 1):
            raise TransientProviderError(
                SCRIPTED_FAILURE, f"scripted transient failure before chunk {index} (attempt {attempt})"
            )


def _capped(chunks: list[str], max_tokens: int) -> list[str]:
    """The leading chunks whose tokens fit in max_tokens, as a provider stops at its length limit."""
    kept: list[str] = []
    used = 0
    for chunk in chunks:
        used += count_tokens(chunk)
        if used > max_tokens:
            break
        kept.append(chunk)
    return kept
