"""Server-sent events parsing (WHATWG framing), shared by the OpenAI and Anthropic stream readers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its type ("message" when unnamed), joined data lines and id."""

    event: str
    data: str
    id: str | None = None


class SSEParser:
    """Incremental parser fed one line at a time (without its line terminator)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._has_data = False

    def feed(self, line: str) -> SSEEvent | None:
        """Consume a line; return the event a blank line completes, else None."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        """Build the pending event (only if it had data, per the spec) and reset the buffers."""
        event = SSEEvent(self._event or "message", "\n".join(self._data), self._id) if self._has_data else None
        self._event = ""
        self._data = []
        self._has_data = False
        return event


def iter_events(lines: Iterable[str]) -> Iterator[SSEEvent]:
    """Turn lines into SSE events; an event cut off by EOF (no blank line) is dropped, as the spec says."""
    parser = SSEParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
