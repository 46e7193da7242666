"""A streaming HTTP POST whose lines are read in a helper thread, so should_stop is honoured even mid-hang.

httpx's sync API blocks inside socket reads (up to the read timeout). The request therefore runs in a
daemon thread that hands lines over a queue, all the lines of one network read at once (an SSE event is at least
two lines: one handoff between threads instead of two or more, which counts with 1,000 streams in one process);
the caller's generator polls should_stop while it waits and, when told to stop, shuts the socket down, which
unblocks the reader at once.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx._decoders import LineDecoder  # what Response.iter_lines uses, kept to batch the lines

from app.llm.base import (
    BAD_RESPONSE,
    CONNECTION_ERROR,
    FatalProviderError,
    ProviderError,
    ShouldStop,
    Timeouts,
    TransientProviderError,
)
from app.llm.http_errors import error_for_exception, error_for_status, error_message_from_body
from app.llm.redact import redact
from app.llm.stopping import POLL_INTERVAL_S, check_stop

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024
_END = object()


@dataclass(frozen=True)
class StreamRequest:
    """What to POST; headers may hold the key, so this object is never logged or put in messages."""

    url: str
    headers: dict[str, str] = field(repr=False)
    body: dict[str, Any] = field(repr=False)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One shared verifying TLS context: building it loads the CA bundle (~30 ms), too slow per call."""
    return httpx.create_ssl_context()


class _Reader:
    """Runs the request in its own thread and feeds lists of lines, errors and an end marker into a queue."""

    def __init__(
        self,
        request: StreamRequest,
        timeouts: Timeouts,
        secrets: tuple[str | None, ...],
        transport: httpx.BaseTransport | None,
    ) -> None:
        self.request = request
        self.timeouts = timeouts
        self.secrets = secrets
        self.transport = transport
        self.items: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.aborted = threading.Event()
        self._network_stream: Any = None

    def run(self) -> None:
        """Thread body: POST, then forward each line; every failure becomes a ProviderError item."""
        timeout = httpx.Timeout(
            connect=self.timeouts.connect,
            read=self.timeouts.read,
            write=self.timeouts.write,
            pool=self.timeouts.connect,
        )
        try:
            with httpx.Client(timeout=timeout, transport=self.transport, verify=_ssl_context()) as client:
                with client.stream(
                    "POST",
                    self.request.url,
                    headers=self.request.headers,
                    json=self.request.body,
                    extensions={"trace": self._trace},
                ) as response:
                    self._forward(response)
        except Exception as exc:  # noqa: BLE001 - every failure must reach the caller as an item
            if not self.aborted.is_set():
                self.items.put(error_for_exception(exc, self.secrets))

    def _forward(self, response: httpx.Response) -> None:
        """Check status and content type, then pass the body on line by line."""
        log.debug("llm upstream %s answered %s", redact(self.request.url, self.secrets), response.status_code)
        if not 200 <= response.status_code < 300:
            body = self._read_limited(response)
            self.items.put(error_for_status(response.status_code, body, response.headers, self.secrets))
            return
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            message = redact(error_message_from_body(self._read_limited(response)), self.secrets)
            self.items.put(
                FatalProviderError(BAD_RESPONSE, f"expected text/event-stream, got {content_type}: {message}")
            )
            return
        decoder = LineDecoder()
        for text in response.iter_text():
            if self.aborted.is_set():
                return
            lines = decoder.decode(text)
            if lines:
                self.items.put(lines)
        lines = decoder.flush()
        if lines:
            self.items.put(lines)
        self.items.put(_END)

    @staticmethod
    def _read_limited(response: httpx.Response) -> bytes:
        """Read at most MAX_ERROR_BODY bytes of an error body."""
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                break
        return body[:MAX_ERROR_BODY]

    def _trace(self, name: str, info: dict[str, Any]) -> None:
        """httpcore trace hook: remember the live network stream so abort() can shut its socket."""
        if name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self._network_stream = info.get("return_value")
            if self.aborted.is_set():
                self._shutdown_socket()

    def abort(self) -> None:
        """Ask the reader to stop and unblock any socket read it is stuck in."""
        self.aborted.set()
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        """shutdown(2) wakes a blocked recv in the reader thread (close(2) would not)."""
        stream = self._network_stream
        if stream is None:
            return
        try:
            sock = stream.get_extra_info("socket")
            if sock is not None:
                # The base-class method acts on the file descriptor and leaves SSL state alone.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except Exception:  # noqa: BLE001 - best effort: the socket may already be closed
            log.debug("llm upstream socket already closed")


def stream_lines(
    request: StreamRequest,
    *,
    timeouts: Timeouts,
    should_stop: ShouldStop,
    secrets: Iterable[str | None],
    transport: httpx.BaseTransport | None = None,
) -> Generator[str, None, None]:
    """Yield the response body's lines; raise ProviderError on failure, Stopped when should_stop() is True."""
    reader = _Reader(request, timeouts, tuple(secrets), transport)
    # The caller's contextvars go along (a tracing span, so the HTTP call nests under the LLM call's span).
    thread = threading.Thread(target=contextvars.copy_context().run, args=(reader.run,), name="llm-http-stream",
                              daemon=True)
    check_stop(should_stop)
    thread.start()
    last_check = time.monotonic()
    try:
        while True:
            try:
                item = reader.items.get(timeout=POLL_INTERVAL_S)
            except queue.Empty:
                if not thread.is_alive() and reader.items.empty():
                    raise TransientProviderError(CONNECTION_ERROR, "stream reader ended unexpectedly") from None
                item = None
            now = time.monotonic()
            if item is None or now - last_check >= POLL_INTERVAL_S:
                last_check = now
                check_stop(should_stop)
            if item is None:
                continue
            if item is _END:
                return
            if isinstance(item, ProviderError):
                raise item
            assert isinstance(item, list)
            yield from item
    finally:
        reader.abort()
