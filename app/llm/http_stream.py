"""A streaming HTTP POST read in the caller's thread, whose socket waits honour should_stop even mid-hang.

httpx's sync API blocks inside socket calls (up to the read timeout). The request runs over httpcore with a network
backend of our own (_StopAwareBackend): each of its socket waits (connect, TLS handshake, write, read) blocks at most
POLL_INTERVAL_S at a time and asks should_stop in between, raising Stopped, which httpcore and httpx let through
unchanged after closing the connection; the overall limits (Timeouts) are kept as deadlines over those waits, so a
stalled provider still ends as the same ReadTimeout (or ConnectTimeout, WriteTimeout). Between chunks that keep
coming, should_stop is asked at least every POLL_INTERVAL_S too.

The stream used to be read by a second thread per call that handed lines over a queue to the caller, which polled
should_stop and shut the socket down to stop it: with 1,000 streams in one process, 2,000 threads and a handoff
between threads (futex, GIL) per network read (docs/performance.md section 7). The HTTP call now runs in the
caller's thread, so its contextvars (a tracing span) apply as they are.

A caller's own `transport` (tests: httpx.MockTransport) is used as given: it reads in the caller's thread too, and
should_stop is then asked between chunks only, since we cannot bound the waits of a transport we did not build.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import select
import socket
import ssl
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx
from httpx._decoders import LineDecoder  # what Response.iter_lines uses, kept to take the lines of a read at once

from app.llm.base import (
    BAD_RESPONSE,
    FatalProviderError,
    ProviderError,
    ShouldStop,
    Stopped,
    Timeouts,
)
from app.llm.http_errors import error_for_exception, error_for_status, error_message_from_body
from app.llm.redact import redact
from app.llm.stopping import POLL_INTERVAL_S

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 64 * 1024
_CONNECT_PENDING = frozenset({errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK})


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


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _wait_s(deadline: float | None, timeout_error: type[Exception]) -> float:
    """How long the next socket wait may block: POLL_INTERVAL_S, or what is left before the deadline."""
    if deadline is None:
        return POLL_INTERVAL_S
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise timeout_error("timed out")
    return min(POLL_INTERVAL_S, remaining)


class _StopCheck:
    """check_stop for one call. It remembers an exception should_stop itself raised (the LLM step's lease check can
    fail on Redis), which then reaches the caller as it is, not mapped like a failure of the HTTP call."""

    __slots__ = ("should_stop", "failure")

    def __init__(self, should_stop: ShouldStop) -> None:
        self.should_stop = should_stop
        self.failure: Exception | None = None

    def __call__(self) -> None:
        try:
            stop = self.should_stop()
        except Exception as exc:
            self.failure = exc
            raise
        if stop:
            raise Stopped()


class _StopAwareStream(httpcore.NetworkStream):
    """A connected socket (plain or TLS) whose blocking calls wait POLL_INTERVAL_S at most, asking should_stop."""

    def __init__(self, sock: socket.socket, check_stop: _StopCheck) -> None:
        self._sock = sock
        self._check_stop = check_stop
        self._timeout = POLL_INTERVAL_S
        sock.settimeout(POLL_INTERVAL_S)

    def _set_timeout(self, seconds: float) -> None:
        """settimeout costs a system call: only when the wait changes (near a deadline)."""
        if seconds != self._timeout:
            self._sock.settimeout(seconds)
            self._timeout = seconds

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        deadline = _deadline(timeout)
        while True:
            self._set_timeout(_wait_s(deadline, httpcore.ReadTimeout))
            try:
                return self._sock.recv(max_bytes)
            except TimeoutError:  # socket.timeout; an SSL socket's state stays fine for the next try
                self._check_stop()
            except OSError as exc:
                raise httpcore.ReadError(exc) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        deadline = _deadline(timeout)
        while buffer:
            self._set_timeout(_wait_s(deadline, httpcore.WriteTimeout))
            try:
                sent = self._sock.send(buffer)
            except TimeoutError:
                self._check_stop()
                continue
            except OSError as exc:
                raise httpcore.WriteError(exc) from exc
            buffer = buffer[sent:]

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        """Wrap the socket in TLS and shake hands, polling should_stop while the server is slow to answer."""
        deadline = _deadline(timeout)
        try:
            if isinstance(self._sock, ssl.SSLSocket):
                # TLS in TLS (an https URL through an HTTPS proxy): httpcore's own stream, whose waits are not polled.
                from httpcore._backends.sync import TLSinTLSStream

                return TLSinTLSStream(self._sock, ssl_context, server_hostname, timeout)
            # wrap_socket takes the file descriptor over: from here on it is closed through self._sock.
            tls = self._sock = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname,
                                                       do_handshake_on_connect=False)
            stream = _StopAwareStream(tls, self._check_stop)
            while True:
                stream._set_timeout(_wait_s(deadline, httpcore.ConnectTimeout))
                try:
                    tls.do_handshake()
                    return stream
                except TimeoutError:
                    self._check_stop()
        except OSError as exc:
            self.close()
            raise httpcore.ConnectError(exc) from exc
        except BaseException:
            self.close()
            raise

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":  # as httpcore: readable at once (data or EOF) means not reusable
            if self._sock.fileno() < 0:
                return True
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            return bool(poller.poll(0))
        return None


class _StopAwareBackend(httpcore.NetworkBackend):
    """httpcore's network backend for one call: connects without blocking more than POLL_INTERVAL_S at a time."""

    def __init__(self, check_stop: _StopCheck) -> None:
        self._check_stop = check_stop

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """As socket.create_connection (each address in turn), with the connect waits polled."""
        deadline = _deadline(timeout)
        try:
            addresses = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(exc) from exc
        last_error: OSError | None = None
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if local_address is not None:
                    sock.bind((local_address, 0))
                self._connect(sock, address, deadline)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return _StopAwareStream(sock, self._check_stop)
        raise httpcore.ConnectError(last_error or OSError("getaddrinfo returned no address"))

    def _connect(self, sock: socket.socket, address: Any, deadline: float | None) -> None:
        """A non-blocking connect, then poll(2) for it in waits of POLL_INTERVAL_S at most."""
        sock.setblocking(False)
        error = sock.connect_ex(address)
        if error in _CONNECT_PENDING:
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            while not poller.poll(math.ceil(_wait_s(deadline, httpcore.ConnectTimeout) * 1000)):
                self._check_stop()
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return httpcore.SyncBackend().connect_unix_socket(path, timeout, socket_options)


def _client(timeouts: Timeouts, check_stop: _StopCheck, transport: httpx.BaseTransport | None) -> httpx.Client:
    """An httpx client for one call whose own transports (direct, and any proxy from the environment) are stop-aware."""
    timeout = httpx.Timeout(connect=timeouts.connect, read=timeouts.read, write=timeouts.write, pool=timeouts.connect)
    client = httpx.Client(timeout=timeout, transport=transport, verify=_ssl_context())
    if transport is None:
        # httpx takes no network backend; its transports keep their httpcore pool (ConnectionPool, or HTTPProxy or
        # SOCKSProxy, its subclasses) in _pool, which uses _network_backend for every connection (httpx pinned).
        backend = _StopAwareBackend(check_stop)
        for mounted in (client._transport, *client._mounts.values()):
            if isinstance(mounted, httpx.HTTPTransport):
                mounted._pool._network_backend = backend
    return client


def _read_limited(response: httpx.Response) -> bytes:
    """Read at most MAX_ERROR_BODY bytes of an error body."""
    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= MAX_ERROR_BODY:
            break
    return body[:MAX_ERROR_BODY]


def _check_response(response: httpx.Response, secrets: tuple[str | None, ...]) -> None:
    """Raise the ProviderError a non-2xx status or a JSON body (instead of an event stream) means."""
    if not 200 <= response.status_code < 300:
        raise error_for_status(response.status_code, _read_limited(response), response.headers, secrets)
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        message = redact(error_message_from_body(_read_limited(response)), secrets)
        raise FatalProviderError(BAD_RESPONSE, f"expected text/event-stream, got {content_type}: {message}")


def stream_lines(
    request: StreamRequest,
    *,
    timeouts: Timeouts,
    should_stop: ShouldStop,
    secrets: Iterable[str | None],
    transport: httpx.BaseTransport | None = None,
) -> Generator[str, None, None]:
    """Yield the response body's lines; raise ProviderError on failure, Stopped when should_stop() is True."""
    secrets = tuple(secrets)
    check_stop = _StopCheck(should_stop)
    check_stop()
    try:
        # Leaving these blocks (the end, an error, Stopped, or the caller closing the generator) closes the connection.
        with _client(timeouts, check_stop, transport) as client:
            with client.stream("POST", request.url, headers=request.headers, json=request.body) as response:
                log.debug("llm upstream %s answered %s", redact(request.url, secrets), response.status_code)
                _check_response(response, secrets)
                decoder = LineDecoder()
                last_check = time.monotonic()
                for text in response.iter_text():
                    yield from decoder.decode(text)
                    now = time.monotonic()
                    if now - last_check >= POLL_INTERVAL_S:  # chunks keep coming: no socket wait asked
                        last_check = now
                        check_stop()
                yield from decoder.flush()
    except (ProviderError, Stopped):
        raise
    except Exception as exc:  # noqa: BLE001 - every transport failure reaches the caller as a ProviderError
        if exc is check_stop.failure:
            raise
        raise error_for_exception(exc, secrets) from None
