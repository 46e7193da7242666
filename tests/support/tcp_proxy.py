"""A TCP proxy that can be cut (every open connection reset, new ones refused until restored) or frozen.

Frozen, it keeps every connection open and accepts new ones but forwards nothing either way: what clients
see of a SIGSTOPped or hung server.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit, urlunsplit


def through(url: str, port: int, host: str = "127.0.0.1") -> str:
    """The same database or broker URL, pointed at a proxy on host:port."""
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}{host}:{port}"))


class CuttableProxy:
    """Forwards 127.0.0.1:port to a target; cut() simulates the server vanishing, restore() brings it back;
    freeze() a server that hangs with its sockets open, thaw() one that answers again."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.listener = socket.create_server((host, 0))
        self.port: int = self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._thawed = threading.Event()
        self._thawed.set()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, name="cuttable-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._thawed.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Reset every forwarded connection and refuse new ones (clients see the server go away)."""
        self._cut.set()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            # shutdown() first: close() alone neither wakes the pump blocked in recv() nor ends the TCP
            # connection, and the server would keep the session (and its locks) of a client that is gone.
            try:
                upstream.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            upstream.close()
            _reset(client)

    def restore(self) -> None:
        self._cut.clear()

    def freeze(self) -> None:
        """Forward nothing more, in either direction, but keep every connection open (a frozen server)."""
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def close(self) -> None:
        self._closing.set()
        self.thaw()
        self.cut()
        self.listener.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), the way a dead server's connections look to the client."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
