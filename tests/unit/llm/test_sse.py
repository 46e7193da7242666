"""SSE framing: data/event/id fields, comments, multi-line data, CRLF, cut-off events."""

from __future__ import annotations

from app.llm.sse import SSEEvent, iter_events


def test_openai_style_data_only_events() -> None:
    lines = ['data: {"a":1}', "", "data: [DONE]", ""]
    assert list(iter_events(lines)) == [SSEEvent("message", '{"a":1}'), SSEEvent("message", "[DONE]")]


def test_named_events_with_ids_and_comments() -> None:
    lines = [": keep-alive", "event: message_start", "id: 7", 'data: {"x": 1}', "", ""]
    assert list(iter_events(lines)) == [SSEEvent("message_start", '{"x": 1}', "7")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert list(iter_events(["data: one", "data:two", "data:  three", ""])) == [SSEEvent("message", "one\ntwo\n three")]


def test_crlf_line_endings_are_tolerated() -> None:
    assert list(iter_events(["data: x\r\n", "\r\n"])) == [SSEEvent("message", "x")]


def test_event_type_resets_between_events() -> None:
    events = list(iter_events(["event: ping", "data: {}", "", "data: 2", ""]))
    assert [event.event for event in events] == ["ping", "message"]


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert list(iter_events(["", "", "event: lonely", "", ":c", ""])) == []


def test_an_event_cut_off_before_its_blank_line_is_dropped() -> None:
    assert list(iter_events(['data: {"partial"'])) == []


def test_field_without_colon_and_unknown_fields_are_ignored() -> None:
    assert list(iter_events(["retry: 100", "data", "bogus: 1", ""])) == [SSEEvent("message", "")]
