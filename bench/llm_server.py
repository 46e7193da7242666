"""A lightweight OpenAI-compatible streaming server for bench/inflight.py: stdlib asyncio, one coroutine per stream,
so thousands of concurrent streams cost it little CPU and the count of streams in flight is taken where they are.

    .venv/bin/python -m bench.llm_server --port 8099 --chunks 20 --seconds 10

POST /v1/chat/completions (any body with "stream": true) answers text/event-stream: `--chunks` content chunks
spread evenly over `--seconds` (the first at once), then a finish chunk with usage and `data: [DONE]`. Each chunk's
text is "<seq>@<unix time it was written> ", so a follower of the execution's events checks the order and measures
the lag of every delta from this server to itself. GET /stats answers {in_flight, peak, started, finished}.
A request whose model is "hold-N" waits before its first chunk until N streams are open (bench/inflight.py
--hold): then all of them stream at once, whatever rate the API took them at.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

HOLD_MAX_S = 300.0


class Streams:
    """Counts of streams: started, finished, in flight now and at most."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.started = 0
        self.finished = 0
        self.holding: dict[int, int] = {}  # hold-N streams opened so far, by N

    def begin(self) -> None:
        self.started += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def end(self) -> None:
        self.in_flight -= 1
        self.finished += 1

    def as_dict(self) -> dict[str, int]:
        return {"in_flight": self.in_flight, "peak": self.peak, "started": self.started, "finished": self.finished}


def sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def chunk(text: str | None, finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    """One chat.completion.chunk."""
    choices = [] if usage else [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]
    body: dict[str, Any] = {"id": "bench", "object": "chat.completion.chunk", "model": "bench", "choices": choices}
    if usage:
        body["usage"] = usage
    return sse(body)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    """Method, path and body of one HTTP/1.1 request (Content-Length bodies only)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return method, path, body


async def released(writer: asyncio.StreamWriter, streams: Streams, hold_until: int, hold_max_s: float) -> float:
    """With model "hold-N": wait until N such streams have opened (at most hold_max_s), so all stream at once,
    writing an SSE comment every 5 s meanwhile (under the client's read timeout). Returns a random offset within
    one chunk interval for this stream's schedule, so the chunks of all streams stay spread out."""
    if hold_until <= 0:
        return 0.0
    streams.holding[hold_until] = streams.holding.get(hold_until, 0) + 1
    deadline = time.monotonic() + hold_max_s
    next_comment = time.monotonic() + 5.0
    while streams.holding[hold_until] < hold_until and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if time.monotonic() >= next_comment:
            writer.write(b": holding\n\n")
            await writer.drain()
            next_comment += 5.0
    return random.random()


def hold_of(body: bytes) -> int:
    """N of a request whose model is "hold-N", else 0."""
    try:
        model = str(json.loads(body).get("model") or "")
    except ValueError:
        return 0
    return int(model.removeprefix("hold-")) if model.startswith("hold-") else 0


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, streams: Streams, chunks: int,
                 seconds: float) -> None:
    try:
        method, path, body = await read_request(reader)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        writer.close()
        return
    if method == "GET" and path == "/stats":
        payload = json.dumps(streams.as_dict()).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        await writer.drain()
        writer.close()
        return
    streams.begin()
    try:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                     b"Connection: close\r\n\r\n")
        interval = seconds / max(1, chunks - 1) if chunks > 1 else 0.0
        offset = await released(writer, streams, hold_of(body), HOLD_MAX_S)
        started = time.monotonic() + offset * interval
        for seq in range(chunks):
            await asyncio.sleep(max(0.0, started + seq * interval - time.monotonic()))
            writer.write(chunk(f"{seq}@{time.time():.6f} "))
            await writer.drain()
        writer.write(chunk(None, finish="stop"))
        writer.write(chunk(None, usage={"prompt_tokens": 3, "completion_tokens": chunks,
                                        "total_tokens": chunks + 3}))
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()
    except ConnectionError:
        pass  # the worker went away (killed, cancelled): the stream just ends
    finally:
        streams.end()
        writer.close()


async def serve(host: str, port: int, chunks: int, seconds: float) -> None:
    streams = Streams()
    server = await asyncio.start_server(lambda r, w: handle(r, w, streams, chunks, seconds), host, port,
                                        backlog=4096)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.chunks, args.seconds))


if __name__ == "__main__":
    main()
