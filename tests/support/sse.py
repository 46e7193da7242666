"""Parse server-sent events the way a browser's EventSource does (enough for the tests)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SseEvent:
    id: int
    event: str
    data: dict[str, Any]


def parse(text: str) -> list[SseEvent]:
    return list(iter_events([text]))


def iter_events(chunks: Iterable[bytes | str]) -> Iterator[SseEvent]:
    """Events from a stream of chunks; comments (heartbeats) are skipped."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                if not line or line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            if "data" in fields:
                yield SseEvent(int(fields["id"]), fields.get("event", "message"), json.loads(fields["data"]))


def heartbeats(text: str) -> int:
    return text.count(": heartbeat\n\n")


def text_of(stream: list[SseEvent]) -> str:
    """What a client shows: deltas since the last reset."""
    text = ""
    for event in stream:
        if event.event == "reset":
            text = ""
        elif event.event == "delta":
            text += event.data["text"]
    return text
