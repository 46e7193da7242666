"""A broker that stops answering (network stall) must give a bounded NotConfirmed, never a hang."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from sqlalchemy import Engine

from coordination.errors import NotConfirmed
from coordination.social import SocialLayer


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of RabbitMQ that can stop forwarding (both ways) on demand."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.stalled = threading.Event()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.stalled.is_set() and not self.closing.is_set():
                    time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.closing.set()
        for sock in [self.listener, *self.sockets]:
            sock.close()


@pytest.fixture
def proxy(coord_broker_url: str) -> Iterator[StallingProxy]:
    parts = urlsplit(coord_broker_url)
    stalling = StallingProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    yield stalling
    stalling.close()


def test_send_to_a_stalled_broker_raises_not_confirmed_in_time(
    proxy: StallingProxy, coord_broker_url: str, pg_engine: Engine, agents: Callable[..., str]
) -> None:
    receiver = agents()
    parts = urlsplit(coord_broker_url)
    url = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
    layer = SocialLayer(url, pg_engine, confirm_timeout_s=1.0)
    try:
        layer.send_message(from_agent_id="a", to_agent_id=receiver, message="before")
        proxy.stalled.set()
        started = time.monotonic()
        with pytest.raises(NotConfirmed):
            layer.send_message(from_agent_id="a", to_agent_id=receiver, message="during", message_id="stalled-1")
        assert time.monotonic() - started < 3
        proxy.stalled.clear()
        # The caller retries with the same id: stored once, whether or not the first copy got through.
        layer.send_message(from_agent_id="a", to_agent_id=receiver, message="during", message_id="stalled-1")
        assert [m["message"] for m in layer.get_messages(agent_id=receiver)] == ["before", "during"]
    finally:
        layer.close()
