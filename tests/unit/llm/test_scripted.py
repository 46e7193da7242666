"""The scripted provider: exact word streaming, chunks, failures per attempt, hangs, determinism."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.llm.base import Delta, FatalProviderError, Stopped, StreamItem, TransientProviderError, Usage
from app.llm.scripted import ScriptedProvider, default_reply, split_words


def run(
    options: dict[str, Any],
    *,
    message: str = "hi there",
    attempt: int = 1,
    system_prompt: str | None = None,
    should_stop: Any = None,
) -> list[StreamItem]:
    """Collect everything the provider yields."""
    return list(
        ScriptedProvider().stream(
            system_prompt=system_prompt,
            message=message,
            model=None,
            options=options,
            should_stop=should_stop or (lambda: False),
            attempt=attempt,
        )
    )


def texts(items: list[StreamItem]) -> list[str]:
    """The delta texts, in order."""
    return [item.text for item in items if isinstance(item, Delta)]


def test_text_streams_word_by_word_keeping_spaces() -> None:
    assert texts(run({"text": "hello big world"})) == ["hello", " big", " world"]


def test_text_keeps_leading_trailing_and_repeated_whitespace() -> None:
    text = "  two  spaces\nand\ttabs  "
    chunks = texts(run({"text": text}))
    assert "".join(chunks) == text
    assert chunks == ["  two", "  spaces", "\nand", "\ttabs", "  "]


def test_usage_is_last_and_counts_words() -> None:
    items = run({"text": "one two three"}, message="a b", system_prompt="be brief")
    assert items[-1] == Usage(prompt_tokens=4, completion_tokens=3)
    assert all(isinstance(item, Delta) for item in items[:-1])


def test_chunks_are_streamed_as_given_and_override_text() -> None:
    items = run({"chunks": ["a", "bc", " d "], "text": "ignored"})
    assert texts(items) == ["a", "bc", " d "]


def test_empty_chunks_are_not_emitted_as_deltas() -> None:
    assert texts(run({"chunks": ["a", "", "b"]})) == ["a", "b"]


def test_no_options_answers_deterministically_from_the_message() -> None:
    first = run({}, message="What is the plan?")
    assert "".join(texts(first)) == default_reply("What is the plan?")
    assert first == run({}, message="What is the plan?")
    assert texts(first) != texts(run({}, message="Something else"))


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_fatal_failure_happens_on_every_attempt_before_the_chunk(attempt: int) -> None:
    seen: list[str] = []
    with pytest.raises(FatalProviderError) as info:
        for item in ScriptedProvider().stream(
            system_prompt=None,
            message="m",
            model=None,
            options={"chunks": ["a", "b", "c"], "fail_at_chunk": 2, "fail_mode": "fatal"},
            should_stop=lambda: False,
            attempt=attempt,
        ):
            assert isinstance(item, Delta)
            seen.append(item.text)
    assert seen == ["a", "b"]
    assert info.value.code == "scripted_failure"
    assert "chunk 2" in info.value.message


def test_transient_failure_happens_on_the_first_attempt_only() -> None:
    options = {"chunks": ["a", "b"], "fail_at_chunk": 1, "fail_mode": "transient"}
    with pytest.raises(TransientProviderError):
        run(options, attempt=1)
    assert texts(run(options, attempt=2)) == ["a", "b"]


def test_fail_attempts_extends_transient_failures() -> None:
    options = {"chunks": ["a"], "fail_at_chunk": 0, "fail_mode": "transient", "fail_attempts": 2}
    for attempt in (1, 2):
        with pytest.raises(TransientProviderError):
            run(options, attempt=attempt)
    assert texts(run(options, attempt=3)) == ["a"]


def test_fail_at_chunk_zero_fails_before_any_delta_and_default_mode_is_fatal() -> None:
    with pytest.raises(FatalProviderError):
        run({"text": "x y", "fail_at_chunk": 0}, attempt=5)


def test_fail_mode_alone_fails_before_the_first_chunk() -> None:
    with pytest.raises(TransientProviderError):
        run({"text": "x", "fail_mode": "transient"})


def test_fail_at_chunk_past_the_end_fails_after_the_last_chunk() -> None:
    seen: list[str] = []
    with pytest.raises(FatalProviderError):
        for item in ScriptedProvider().stream(
            system_prompt=None,
            message="m",
            model=None,
            options={"chunks": ["a", "b"], "fail_at_chunk": 9},
            should_stop=lambda: False,
            attempt=1,
        ):
            assert isinstance(item, Delta)
            seen.append(item.text)
    assert seen == ["a", "b"]


def test_chunk_delay_is_applied_between_chunks() -> None:
    started = time.monotonic()
    assert texts(run({"chunks": ["a", "b", "c"], "chunk_delay_ms": 50})) == ["a", "b", "c"]
    assert 0.09 <= time.monotonic() - started < 1.0


def test_hang_waits_then_streams() -> None:
    started = time.monotonic()
    assert texts(run({"text": "late", "hang_s": 0.15})) == ["late"]
    assert time.monotonic() - started >= 0.15


def test_hang_is_interrupted_by_should_stop_within_50ms() -> None:
    flag = threading.Event()
    timer = threading.Timer(0.1, flag.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        run({"text": "never", "hang_s": 30}, should_stop=flag.is_set)
    assert time.monotonic() - started < 0.1 + 0.05
    timer.cancel()


def test_should_stop_stops_mid_stream_within_one_chunk() -> None:
    seen: list[str] = []
    stream = ScriptedProvider().stream(
        system_prompt=None,
        message="m",
        model=None,
        options={"chunks": ["a", "b", "c", "d"], "chunk_delay_ms": 200},
        should_stop=lambda: len(seen) >= 2,
        attempt=1,
    )
    started = time.monotonic()
    with pytest.raises(Stopped):
        for item in stream:
            assert isinstance(item, Delta)
            seen.append(item.text)
    assert seen == ["a", "b"]
    assert time.monotonic() - started < 0.3


def test_already_stopped_yields_nothing() -> None:
    with pytest.raises(Stopped):
        run({"text": "a"}, should_stop=lambda: True)


def test_invalid_options_become_a_fatal_provider_error() -> None:
    with pytest.raises(FatalProviderError) as info:
        run({"txt": "typo"})
    assert info.value.code == "invalid_options"
    assert "txt" in info.value.message


def test_split_words_examples() -> None:
    assert split_words("") == []
    assert split_words("   ") == ["   "]
    assert split_words("a") == ["a"]
    assert split_words(" a b") == [" a", " b"]


@given(st.text())
def test_concatenated_deltas_equal_the_text(text: str) -> None:
    items = run({"text": text})
    assert "".join(texts(items)) == text
    assert all(item.text for item in items if isinstance(item, Delta))
    assert isinstance(items[-1], Usage)


@given(st.lists(st.text(max_size=20), max_size=20))
def test_concatenated_deltas_equal_the_chunks(chunks: list[str]) -> None:
    assert "".join(texts(run({"chunks": chunks}))) == "".join(chunks)


@given(st.text(min_size=1))
def test_each_word_chunk_has_at_most_one_word(text: str) -> None:
    for chunk in split_words(text):
        assert len(chunk.split()) <= 1


def test_max_tokens_cuts_the_reply_like_a_length_limit() -> None:
    items = list(ScriptedProvider().stream(system_prompt=None, message="hi", model=None,
                                           options={"text": "one two three four five", "max_tokens": 3},
                                           should_stop=lambda: False, attempt=1))
    assert "".join(i.text for i in items if isinstance(i, Delta)) == "one two three"
    assert items[-1] == Usage(prompt_tokens=1, completion_tokens=3)
