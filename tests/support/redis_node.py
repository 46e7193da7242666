"""A private redis-server on its own port, so fault tests can restart Redis without touching the shared one."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.support.web import free_port


class RedisNode:
    """One redis-server subprocess; `persistent` keeps data across restarts (AOF, fsync always), like production."""

    def __init__(self, *, persistent: bool = True, also_on: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.also_on = also_on  # extra listen addresses (host ends of a test's veth pairs)
        self.dir = Path(tempfile.mkdtemp(prefix="redis-chaos-"))
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def start(self, timeout_s: float = 15.0) -> RedisNode:
        """Start on the same port and directory as before and wait until it answers PING."""
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        # Protected mode refuses non-loopback clients; the extra addresses are only reachable from the test's
        # own namespaces.
        reachable = ["--protected-mode", "no"] if self.also_on else []
        with (self.dir / "redis.log").open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", *self.also_on, "--save", "",
                 "--dir", str(self.dir), *persistence, *reachable],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            if self._ping():
                return self
            time.sleep(0.02)
        raise TimeoutError(f"redis-server on {self.port} not answering after {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL: every client connection drops at once (an AOF with fsync always keeps what was acknowledged)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_redis(*, persistent: bool = True, also_on: tuple[str, ...] = ()) -> Iterator[RedisNode]:
    """A started RedisNode, killed and removed afterwards."""
    node = RedisNode(persistent=persistent, also_on=also_on).start()
    try:
        yield node
    finally:
        node.close()
