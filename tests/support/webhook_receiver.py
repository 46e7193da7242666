"""A real webhook receiver on loopback: checks each signature, counts requests per Idempotency-Key, and
applies each key's effect once (as a well-behaved receiver does), so tests can tell retries from re-runs.

Each request takes the next scripted `Reply` (the last one repeats), per receiver or per tool name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.loopback_server import LoopbackServer

SIGNING_KEY = "webhook-test-signing-key"


@dataclass
class Reply:
    """How the receiver answers one request."""

    status: int = 200
    body: Any = None  # None: echo {"ok": true, "name": ..., "arguments": ...}
    raw: bytes | None = None  # sent verbatim (non-JSON answers)
    delay_s: float = 0.0
    size: int | None = None  # answer with this many bytes of JSON string, streamed in 64 KiB chunks
    drop: bool = False  # reset the connection without an answer
    retry_after: str | None = None


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes
    signature_ok: bool
    at: float = field(default_factory=time.time)  # arrival, wall clock (compared with ledger timestamps)


@dataclass
class _State:
    replies: list[Reply] = field(default_factory=lambda: [Reply()])
    by_name: dict[str, list[Reply]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    per_key: Counter[str] = field(default_factory=Counter)
    effects: Counter[str] = field(default_factory=Counter)
    answers: dict[str, Any] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet."""

    def handle(self) -> None:
        """A client that gave up (timeout) closes its side: not an error here."""
        try:
            super().handle()
        except OSError:
            self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        """Record, verify, then answer as scripted."""
        receiver = self.server.receiver
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        expected = "sha256=" + hmac.new(receiver.signing_key.encode(), raw, hashlib.sha256).hexdigest()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        key = self.headers.get("idempotency-key") or ""
        record = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, raw,
                          hmac.compare_digest(expected, self.headers.get("x-signature") or ""))
        reply = receiver.take(record, key)
        if reply.delay_s:
            receiver.stopping.wait(reply.delay_s)
        if reply.drop:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if reply.size is not None:
            self._send_large(reply.size)
            return
        if reply.raw is not None:
            data = reply.raw
        else:
            answer = reply.body if reply.body is not None else receiver.effect(key, body)
            data = json.dumps(answer).encode()
        self.send_response(reply.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if reply.retry_after:
            self.send_header("retry-after", reply.retry_after)
        self.end_headers()
        self.wfile.write(data)

    def _send_large(self, size: int) -> None:
        """A chunked JSON string of about `size` bytes, without Content-Length (so only streaming can cap it)."""
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        pieces = [b'"'] + [b"x" * 65536] * (size // 65536) + [b'"']
        for piece in pieces:
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.server.receiver.bytes_sent += len(piece)
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], receiver: WebhookReceiver) -> None:
        super().__init__(address, _Handler)
        self.receiver = receiver


class WebhookReceiver(LoopbackServer):
    """start(), point a webhook tool at url, inspect received / per_key / effects, stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, signing_key: str = SIGNING_KEY) -> None:
        self.signing_key = signing_key
        self.bytes_sent = 0
        self._state = _State()
        self._lock = threading.Lock()
        self._httpd = _Server((host, port), self)
        self._serve_in("webhook-receiver")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def behave(self, *replies: Reply, name: str | None = None) -> None:
        """Script the next requests (for one tool name, or for all)."""
        with self._lock:
            if name is None:
                self._state.replies = list(replies) or [Reply()]
            else:
                self._state.by_name[name] = list(replies) or [Reply()]

    def take(self, record: Received, key: str) -> Reply:
        """Record a request and pick its reply."""
        with self._lock:
            self._state.received.append(record)
            self._state.per_key[key] += 1
            queue = self._state.by_name.get(str(record.body.get("name")), self._state.replies)
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def effect(self, key: str, body: dict[str, Any]) -> Any:
        """Apply the call's effect once per key; a repeated key gets the first answer back."""
        with self._lock:
            if key not in self._state.answers:
                self._state.effects[key] += 1
                self._state.answers[key] = {"ok": True, "name": body.get("name"), "arguments": body.get("arguments")}
            return self._state.answers[key]

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._state.received)

    @property
    def per_key(self) -> Counter[str]:
        with self._lock:
            return Counter(self._state.per_key)

    @property
    def effects(self) -> Counter[str]:
        with self._lock:
            return Counter(self._state.effects)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Poll until `count` requests have arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return self.received
            time.sleep(0.01)
        raise AssertionError(f"expected {count} webhook requests, got {len(self.received)}")



@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A fresh receiver per test."""
    with WebhookReceiver() as receiver:
        yield receiver


def main(argv: list[str] | None = None) -> None:
    """Run a receiver by hand (README's worked example): prints each call and answers {"ok": true, ...}."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--signing-key", default=SIGNING_KEY, help="the worker's WEBHOOK_SIGNING_KEY")
    args = parser.parse_args(argv)
    receiver = WebhookReceiver(port=args.port, signing_key=args.signing_key).start()
    print(f"webhook receiver on {receiver.url}", flush=True)
    seen = 0
    try:
        while True:
            for request in receiver.received[seen:]:
                print(f"{request.headers.get('idempotency-key')} signature_ok={request.signature_ok} "
                      f"{request.body.get('name')} {json.dumps(request.body.get('arguments'))}", flush=True)
            seen = len(receiver.received)
            time.sleep(0.2)
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":
    main()
