"""The lifecycle the tests' loopback HTTP servers share: serve in a daemon thread, stop waking stalled handlers."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Self


class LoopbackServer:
    """Subclasses set `_httpd` (a ThreadingHTTPServer) and call `_serve_in(name)`; then start(), stop() or `with`."""

    _httpd: ThreadingHTTPServer

    def _serve_in(self, name: str) -> None:
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> Self:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wake stalled handlers, stop serving and close the listening socket."""
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
