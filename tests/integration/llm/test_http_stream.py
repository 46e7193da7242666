"""stream_lines over real loopback sockets (plain and TLS): the caller's thread reads, and should_stop ends a hang
in connect, the TLS handshake or the body within about one poll interval, with no thread started per call."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.llm import Stopped, Timeouts, TransientProviderError, http_stream
from app.llm.http_stream import StreamRequest, stream_lines
from app.llm.stopping import POLL_INTERVAL_S

HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
SLACK_S = 0.15  # scheduling on a shared box, on top of the poll interval


class HangingServer:
    """One thread, one connection at a time: answers `reply` (headers, events), closes if `close`, else hangs until
    the client goes. `handshake=False` accepts and never reads (a TLS client then waits for the server's hello)."""

    def __init__(self, *, reply: bytes = HEADERS, close: bool = False, handshake: bool = True,
                 tls: ssl.SSLContext | None = None) -> None:
        self.reply, self.close, self.handshake, self.tls = reply, close, handshake, tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.client_gone = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="hanging-server", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                if self.tls and self.handshake:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                if self.handshake:
                    self._answer(conn)
                else:
                    while conn.recv(65536):
                        pass
            except OSError:
                pass
            finally:
                conn.close()
            self.client_gone.set()

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            received = conn.recv(65536)
            if not received:
                return  # the client went before its request was complete
            data += received
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:  # read it all: closing with unread bytes would reset the connection
            received = conn.recv(65536)
            if not received:
                return
            body += received
        conn.sendall(self.reply)
        if self.close:
            return
        while conn.recv(65536):  # hang; b"" (or a reset) once the client closed the connection
            pass

    def stop(self) -> None:
        self.listener.close()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., HangingServer]]:
    servers: list[HangingServer] = []

    def make(**kwargs: object) -> HangingServer:
        servers.append(HangingServer(**kwargs))  # type: ignore[arg-type]
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for 127.0.0.1, and a client context trusting only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder: Path = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.create_default_context(cafile=str(folder / "cert.pem"))
    return server, client


def request_to(port: int, scheme: str = "http") -> StreamRequest:
    return StreamRequest(url=f"{scheme}://127.0.0.1:{port}/v1/chat/completions",
                         headers={"authorization": "Bearer sk-x"}, body={"stream": True})


class StopAfter:
    """should_stop: True from `after_s` on; remembers when it first said so and the thread count it saw each call."""

    def __init__(self, after_s: float) -> None:
        self.started = time.monotonic()
        self.after_s = after_s
        self.stopped_at: float | None = None
        self.thread_counts: set[int] = set()

    def __call__(self) -> bool:
        self.thread_counts.add(threading.active_count())
        if self.stopped_at is None and time.monotonic() - self.started >= self.after_s:
            self.stopped_at = time.monotonic()
        return self.stopped_at is not None


def stop_latency(run: Callable[[], object], should_stop: StopAfter) -> float:
    with pytest.raises(Stopped):
        run()
    assert should_stop.stopped_at is not None
    return time.monotonic() - should_stop.stopped_at


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_should_stop_ends_a_hang_after_the_headers_within_the_poll_interval(
    scheme: str, server_factory: Callable[..., HangingServer], tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server_tls, client_tls = tls_contexts
    if scheme == "https":
        monkeypatch.setattr(http_stream, "_ssl_context", lambda: client_tls)
    server = server_factory(reply=HEADERS + b"data: first\n\n", tls=server_tls if scheme == "https" else None)
    threads = threading.active_count()
    should_stop = StopAfter(0.3)
    lines: list[str] = []

    def run() -> None:
        for line in stream_lines(request_to(server.port, scheme), timeouts=Timeouts(read=60),
                                 should_stop=should_stop, secrets=()):
            lines.append(line)

    assert stop_latency(run, should_stop) < POLL_INTERVAL_S + SLACK_S
    assert lines == ["data: first", ""]
    assert max(should_stop.thread_counts) <= threads  # the caller's thread read: none started for the call
    assert server.client_gone.wait(2.0)  # the connection was closed, not left to the read timeout


def test_should_stop_ends_a_connect_that_hangs(server_factory: Callable[..., HangingServer]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))  # fills the accept queue: further SYNs go unanswered
    try:
        threads = threading.active_count()
        should_stop = StopAfter(0.3)
        latency = stop_latency(lambda: list(stream_lines(request_to(port), timeouts=Timeouts(connect=30),
                                                          should_stop=should_stop, secrets=())), should_stop)
        assert latency < POLL_INTERVAL_S + SLACK_S
        assert max(should_stop.thread_counts) <= threads
        with pytest.raises(TransientProviderError) as info:  # and the connect timeout is still one
            list(stream_lines(request_to(port), timeouts=Timeouts(connect=0.3), should_stop=lambda: False, secrets=()))
        assert info.value.code == "timeout"
    finally:
        queued.close()
        listener.close()


def test_should_stop_ends_a_tls_handshake_that_hangs(server_factory: Callable[..., HangingServer]) -> None:
    server = server_factory(handshake=False)
    should_stop = StopAfter(0.3)
    latency = stop_latency(lambda: list(stream_lines(request_to(server.port, "https"), timeouts=Timeouts(connect=30),
                                                      should_stop=should_stop, secrets=())), should_stop)
    assert latency < POLL_INTERVAL_S + SLACK_S
    assert server.client_gone.wait(2.0)


def test_a_hang_after_the_headers_is_a_read_timeout(server_factory: Callable[..., HangingServer]) -> None:
    server = server_factory()
    started = time.monotonic()
    with pytest.raises(TransientProviderError) as info:
        list(stream_lines(request_to(server.port), timeouts=Timeouts(read=0.5), should_stop=lambda: False, secrets=()))
    assert info.value.code == "timeout"
    assert "ReadTimeout" in info.value.message
    assert 0.5 <= time.monotonic() - started < 0.5 + SLACK_S + POLL_INTERVAL_S


def test_a_tls_stream_is_read_to_its_end(
    server_factory: Callable[..., HangingServer], tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server_tls, client_tls = tls_contexts
    monkeypatch.setattr(http_stream, "_ssl_context", lambda: client_tls)
    events = b"".join(f"data: {i}\n\n".encode() for i in range(100))
    server = server_factory(reply=HEADERS + events + b"data: [DONE]\n\n", close=True, tls=server_tls)
    lines = list(stream_lines(request_to(server.port, "https"), timeouts=Timeouts(), should_stop=lambda: False,
                              secrets=()))
    assert [line for line in lines if line] == [f"data: {i}" for i in range(100)] + ["data: [DONE]"]


def test_an_untrusted_certificate_is_a_connection_error(
    server_factory: Callable[..., HangingServer], tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server = server_factory(tls=tls_contexts[0])  # self-signed: the default (certifi) context refuses it
    with pytest.raises(TransientProviderError) as info:
        list(stream_lines(request_to(server.port, "https"), timeouts=Timeouts(), should_stop=lambda: False,
                          secrets=()))
    assert info.value.code == "connection_error"
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.message


def test_an_error_of_should_stop_itself_reaches_the_caller_as_it_is(
    server_factory: Callable[..., HangingServer],
) -> None:
    server = server_factory()
    failure = ConnectionError("the lease check could not reach Redis")
    calls: list[int] = []

    def should_stop() -> bool:
        """Fine for the check before the request, then fails inside the hanging read."""
        calls.append(1)
        if len(calls) > 1:
            raise failure
        return False

    with pytest.raises(ConnectionError) as info:
        list(stream_lines(request_to(server.port), timeouts=Timeouts(read=60), should_stop=should_stop, secrets=()))
    assert info.value is failure
    assert server.client_gone.wait(2.0)
