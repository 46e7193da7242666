"""A real local HTTP server speaking OpenAI chat-completions and Anthropic Messages streaming (SSE).

Tests drive the real provider clients against it over real sockets. Each request takes the next
scripted `Behaviour` (the last one repeats): stream chunks with delays, answer 429/500/401 (429 with a
Retry-After in seconds or as an HTTP date), drop or reset the connection mid-stream, stall before headers or
mid-body, or send an error event. It also counts what a rate limit cares about: requests in flight at once
(max_in_flight) and the tokens it served per sliding minute (max_tokens_in_window).

As a fixture: `fake_llm_server` (import it into a conftest). By hand:
    python -m tests.support.fake_llm_servers --port 8099 --text "hello from the fake"
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.loopback_server import LoopbackServer

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"


@dataclass
class Behaviour:
    """How the fake answers one request."""

    chunks: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    chunk_delay_s: float = 0.0
    usage: tuple[int, int] = (12, 4)
    status: int = 200
    error_message: str = "fake upstream error"
    error_type: str | None = None
    retry_after: str | None = None
    stall_before_headers_s: float = 0.0
    stall_at_chunk: int | None = None
    stall_s: float = 0.0
    drop_at_chunk: int | None = None
    drop_mode: str = "close"  # "close": FIN without the final chunk; "reset": RST (SO_LINGER 0)
    stream_error_at_chunk: int | None = None
    stream_error_type: str = "overloaded_error"
    finish: bool = True  # False: end the body right after the content chunks (no finish, usage or [DONE])
    raw_body: str | None = None  # send this SSE body verbatim (malformed-stream tests)
    content_type: str = "text/event-stream; charset=utf-8"
    # Tool calls streamed after the text: [{"id", "name", "arguments": JSON text or object}], the arguments
    # cut into pieces of argument_piece characters; interleave sends the calls' OpenAI deltas round-robin.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    argument_piece: int = 7
    interleave: bool = False


@dataclass
class RecordedRequest:
    """What a client sent, and how the exchange ended."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    outcome: str = "open"  # completed | error_status | dropped | client_gone | open
    at: float = field(default_factory=time.time)
    tokens: int = 0  # prompt + completion tokens it was served (its usage), once completed


class _Dropped(Exception):
    """The behaviour asked to cut the connection; unwinds the handler without writing more."""


class _Handler(BaseHTTPRequestHandler):
    """One HTTP/1.1 exchange with chunked SSE framing, like the real APIs."""

    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Keep test output quiet."""

    def handle(self) -> None:
        """Swallow the socket errors a client going away (or a deliberate drop) produces."""
        try:
            super().handle()
        except (_Dropped, OSError):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        """Health check for manual use."""
        self._send_json(200, {"ok": True})

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        """Record the request, then answer per the next behaviour."""
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        record = RecordedRequest("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        fake = self.server.fake
        fake.record(record)
        behaviour = fake.next_behaviour()
        with fake.counting():
            self._answer(record, behaviour, body)

    def _answer(self, record: RecordedRequest, behaviour: Behaviour, body: Any) -> None:
        """Answer one request per its behaviour."""
        fake = self.server.fake
        flavour = "openai" if self.path == OPENAI_PATH else "anthropic" if self.path == ANTHROPIC_PATH else None
        if flavour is None:
            record.outcome = "error_status"
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        self._wait(behaviour.stall_before_headers_s)
        presented = self._presented_key(flavour)
        if fake.api_key is not None and presented != fake.api_key:
            record.outcome = "error_status"
            message = f"Incorrect API key provided: {presented}"
            self._send_error(flavour, 401, message, "authentication_error", None)
            return
        if behaviour.status != 200:
            record.outcome = "error_status"
            kind = behaviour.error_type or _default_error_type(behaviour.status)
            self._send_error(flavour, behaviour.status, behaviour.error_message, kind, behaviour.retry_after)
            return
        try:
            self._stream(flavour, behaviour, body if isinstance(body, dict) else {})
        except _Dropped:
            record.outcome = "dropped"
            raise
        except OSError:
            record.outcome = "client_gone"
            raise
        record.tokens = sum(behaviour.usage)
        record.outcome = "completed"

    def _presented_key(self, flavour: str) -> str | None:
        """The key as the client sent it, in the header its API uses."""
        if flavour == "anthropic":
            return self.headers.get("x-api-key")
        auth = self.headers.get("authorization") or ""
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    def _wait(self, seconds: float) -> None:
        """Sleep, but wake up when the server stops."""
        if seconds > 0:
            self.server.fake.stopping.wait(seconds)

    def _send_json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        """A plain JSON response with Content-Length."""
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, flavour: str, status: int, message: str, kind: str, retry_after: str | None) -> None:
        """An error body in the API's own shape."""
        if flavour == "anthropic":
            payload: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            payload = {"error": {"message": message, "type": kind, "code": None, "param": None}}
        self._send_json(status, payload, {"retry-after": retry_after} if retry_after else None)

    def _chunk(self, data: str) -> None:
        """Write one HTTP chunk (one SSE event) and push it out immediately."""
        raw = data.encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def _drop(self, mode: str) -> None:
        """Cut the connection mid-body: a FIN without the last chunk, or an RST."""
        if mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()
        raise _Dropped()

    def _stream(self, flavour: str, behaviour: Behaviour, body: dict[str, Any]) -> None:
        """Send 200 text/event-stream with chunked framing, then the events."""
        self.send_response(200)
        self.send_header("content-type", behaviour.content_type)
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        if behaviour.raw_body is not None:
            self._chunk(behaviour.raw_body)
            self.wfile.write(b"0\r\n\r\n")
            return
        events = _openai_events if flavour == "openai" else _anthropic_events
        model = str(body.get("model") or "fake-model")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for index, event in events(behaviour, model, include_usage):
            if index is not None:
                if index and behaviour.chunk_delay_s:
                    self._wait(behaviour.chunk_delay_s)
                if index == behaviour.stall_at_chunk:
                    self._wait(behaviour.stall_s)
                if index == behaviour.drop_at_chunk:
                    self._drop(behaviour.drop_mode)
            self._chunk(event)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _default_error_type(status: int) -> str:
    """A plausible error type for a status."""
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")


def _sse(data: Any, event: str | None = None) -> str:
    """Frame one SSE event."""
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


EventIter = Iterator[tuple[int | None, str]]
"""(chunk index or None for framing events, the SSE text)."""


def _openai_events(behaviour: Behaviour, model: str, include_usage: bool) -> EventIter:
    """chat.completion.chunk events as OpenAI sends them."""
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    yield None, _sse({**base, "choices": [role]})
    for index, text in enumerate(behaviour.chunks):
        if index == behaviour.stream_error_at_chunk:
            yield index, _sse({"error": {"message": "fake stream error", "type": behaviour.stream_error_type}})
            return
        yield index, _sse({**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})
    end = len(behaviour.chunks)
    if end == behaviour.stream_error_at_chunk:
        yield end, _sse({"error": {"message": "fake stream error", "type": behaviour.stream_error_type}})
        return
    if not behaviour.finish:
        return
    for delta in _openai_tool_deltas(behaviour):
        yield None, _sse({**base, "choices": [{"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None}]})
    reason = "tool_calls" if behaviour.tool_calls else "stop"
    yield end, _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
    if include_usage:
        prompt, completion = behaviour.usage
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        yield None, _sse({**base, "choices": [], "usage": usage})
    yield None, _sse("[DONE]")


def _arguments_text(call: dict[str, Any]) -> str:
    """A scripted call's arguments as the JSON text a model streams."""
    arguments = call.get("arguments", {})
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _pieces(text: str, size: int) -> list[str]:
    """Cut text into pieces of `size` characters (at least one piece, maybe empty)."""
    return [text[start:start + size] for start in range(0, len(text), size)] or [""]


def _openai_tool_deltas(behaviour: Behaviour) -> Iterator[dict[str, Any]]:
    """tool_calls deltas: id, type and name first, then the arguments in pieces, keyed by index."""
    per_call: list[list[dict[str, Any]]] = []
    for index, call in enumerate(behaviour.tool_calls):
        first = {"index": index, "id": call["id"], "type": "function",
                 "function": {"name": call["name"], "arguments": ""}}
        rest = [{"index": index, "function": {"arguments": piece}}
                for piece in _pieces(_arguments_text(call), behaviour.argument_piece)]
        per_call.append([first, *rest])
    if behaviour.interleave:
        longest = max((len(deltas) for deltas in per_call), default=0)
        for position in range(longest):
            for deltas in per_call:
                if position < len(deltas):
                    yield deltas[position]
    else:
        for deltas in per_call:
            yield from deltas


def _anthropic_events(behaviour: Behaviour, model: str, include_usage: bool) -> EventIter:
    """Messages API stream events as Anthropic sends them."""
    prompt, completion = behaviour.usage
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1},
    }
    yield None, _sse({"type": "message_start", "message": message}, "message_start")
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    yield None, _sse(block, "content_block_start")
    yield None, _sse({"type": "ping"}, "ping")
    for index, text in enumerate(behaviour.chunks):
        if index == behaviour.stream_error_at_chunk:
            error = {"type": "error", "error": {"type": behaviour.stream_error_type, "message": "Overloaded"}}
            yield index, _sse(error, "error")
            return
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        yield index, _sse(delta, "content_block_delta")
    end = len(behaviour.chunks)
    if end == behaviour.stream_error_at_chunk:
        error = {"type": "error", "error": {"type": behaviour.stream_error_type, "message": "Overloaded"}}
        yield end, _sse(error, "error")
        return
    if not behaviour.finish:
        return
    yield end, _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    for offset, call in enumerate(behaviour.tool_calls, start=1):
        start = {"type": "content_block_start", "index": offset,
                 "content_block": {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}}
        yield None, _sse(start, "content_block_start")
        for piece in _pieces(_arguments_text(call), behaviour.argument_piece):
            delta = {"type": "content_block_delta", "index": offset,
                     "delta": {"type": "input_json_delta", "partial_json": piece}}
            yield None, _sse(delta, "content_block_delta")
        yield None, _sse({"type": "content_block_stop", "index": offset}, "content_block_stop")
    stop = {"stop_reason": "tool_use" if behaviour.tool_calls else "end_turn", "stop_sequence": None}
    yield None, _sse({"type": "message_delta", "delta": stop, "usage": {"output_tokens": completion}}, "message_delta")
    yield None, _sse({"type": "message_stop"}, "message_stop")


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its FakeLLMServer."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], fake: FakeLLMServer) -> None:
        super().__init__(address, _Handler)
        self.fake = fake


class FakeLLMServer(LoopbackServer):
    """The fake upstream: start(), point a provider at openai_base_url / anthropic_base_url, stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self._behaviours: list[Behaviour] = [Behaviour()]
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd = _HTTPServer((host, port), self)
        self._serve_in("fake-llm")

    @property
    def url(self) -> str:
        """http://host:port of the listening socket."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def openai_base_url(self) -> str:
        """The base_url an OpenAI-compatible client uses (it appends /chat/completions)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The base_url an Anthropic client uses (it appends /v1/messages)."""
        return self.url

    def behave(self, *behaviours: Behaviour) -> None:
        """Script the next requests: each takes the next behaviour, the last one repeats."""
        with self._lock:
            self._behaviours = list(behaviours) or [Behaviour()]

    def next_behaviour(self) -> Behaviour:
        """The behaviour for the request being served."""
        with self._lock:
            return self._behaviours.pop(0) if len(self._behaviours) > 1 else self._behaviours[0]

    def record(self, request: RecordedRequest) -> None:
        """Keep a request for assertions."""
        with self._lock:
            self.requests.append(request)

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Track how many requests are being answered at once."""
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def max_in_window(self, window_s: float = 60.0, *, tokens: bool = True) -> int:
        """The most tokens (or requests) that arrived within any window_s, over completed requests."""
        with self._lock:
            served = sorted((r.at, r.tokens if tokens else 1) for r in self.requests if r.outcome == "completed")
        best = total = start = 0
        for end in range(len(served)):
            total += served[end][1]
            while served[end][0] - served[start][0] >= window_s:
                total -= served[start][1]
                start += 1
            best = max(best, total)
        return best

    def wait_for_outcome(self, index: int = -1, timeout: float = 5.0) -> str:
        """Wait until request `index` has ended, and return how it ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.requests and self.requests[index].outcome != "open":
                    return self.requests[index].outcome
            time.sleep(0.01)
        return "open"



@pytest.fixture
def fake_llm_server() -> Iterator[FakeLLMServer]:
    """A fresh fake upstream per test, stopped afterwards."""
    with FakeLLMServer() as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    """Run the fake by hand, e.g. to point a local agent's credential base_url at it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--text", default="Hello from the fake LLM server!")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="delay between chunks")
    parser.add_argument("--api-key", default=None, help="require this key (401 otherwise)")
    args = parser.parse_args(argv)
    words = [word for word in args.text.replace(" ", "\0 ").split("\0") if word]
    server = FakeLLMServer(args.host, args.port, api_key=args.api_key)
    server.behave(Behaviour(chunks=words, chunk_delay_s=args.delay_ms / 1000.0))
    server.start()
    print(f"openai base_url:    {server.openai_base_url}", flush=True)
    print(f"anthropic base_url: {server.anthropic_base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
