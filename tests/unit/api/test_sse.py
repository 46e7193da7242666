"""SSE framing and resume positions (Last-Event-ID / ?after=)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.api.errors import ApiError
from app.api.sse import format_event, parse_after
from app.services.streams import Event, parse_stream_id
from tests.support.sse import parse


@pytest.mark.parametrize(
    ("after", "header", "expected"),
    [(None, None, 0), ("5", None, 5), (None, "7", 7), ("3", "9", 3), ("", "4", 4), (" 12 ", None, 12), ("0", None, 0)],
)
def test_after_wins_over_the_header(after: str | None, header: str | None, expected: int) -> None:
    assert parse_after(after, header) == expected


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "1e3", "9" * 19, "0x10"])
def test_bad_ids_are_422(bad: str) -> None:
    for args in ((bad, None), (None, bad)):
        with pytest.raises(ApiError) as caught:
            parse_after(*args)
        assert caught.value.status == 422


def test_stream_ids_are_our_integers() -> None:
    assert parse_stream_id(b"17-0") == 17
    assert parse_stream_id("1-0") == 1


@given(st.integers(min_value=1, max_value=10**12),
       st.sampled_from(["status", "delta", "reset", "completed"]),
       st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=3))
def test_framing_round_trips_through_a_parser(event_id: int, kind: str, data: dict[str, str]) -> None:
    text = format_event(Event(event_id, kind, data))
    assert text.endswith("\n\n") and text.count("\n\n") == 1
    [parsed] = parse(text)
    assert (parsed.id, parsed.event, parsed.data) == (event_id, kind, data)
