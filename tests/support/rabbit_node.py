"""A private RabbitMQ node on its own port, so fault tests can restart a broker without touching the shared one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(f"RabbitMQ node: {what} within {timeout_s}s")


@dataclass
class RabbitNode:
    """Handle on the private node: its AMQP URL and the operations fault tests need."""

    name: str
    port: int

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _ctl(self, *args: str) -> None:
        subprocess.run(["rabbitmqctl", "-n", self.name, *args], check=True, capture_output=True, timeout=60)

    def stop_app(self) -> None:
        """Stop the broker application (connections drop, the Erlang VM stays up)."""
        self._ctl("stop_app")
        _wait(lambda: not _port_open(self.port), 30, "AMQP port closed")

    def start_app(self) -> None:
        self._ctl("start_app")
        _wait(lambda: _port_open(self.port), 60, "AMQP port open")

    def restart(self) -> None:
        self.stop_app()
        self.start_app()

    def accepting(self) -> bool:
        """Whether the AMQP port takes connections (False while the app is stopped)."""
        return _port_open(self.port)

    def set_alarm(self, kind: str) -> None:
        """Raise a memory or disk alarm: RabbitMQ then blocks every publishing connection (connection.blocked)."""
        self._ctl(*ALARMS[kind][0])

    def clear_alarm(self, kind: str) -> None:
        """Back to the defaults (memory watermark 0.4, disk limit 50MB): blocked connections are unblocked."""
        self._ctl(*ALARMS[kind][1])


# kind -> (rabbitmqctl arguments that raise the alarm, arguments that clear it)
ALARMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "memory": (("set_vm_memory_high_watermark", "absolute", "1MB"), ("set_vm_memory_high_watermark", "0.4")),
    "disk": (("set_disk_free_limit", "1000000GB"), ("set_disk_free_limit", "50MB")),
}


def _free_port(start: int) -> int:
    for port in range(start, start + 200):
        if not _port_open(port) and not _port_open(port + 20000):
            return port
    raise RuntimeError("no free port for a private RabbitMQ node")


@contextmanager
def private_rabbitmq(base_port: int = 5680, also_on: tuple[str, ...] = ()) -> Iterator[RabbitNode]:
    """Start a throwaway node (own data dir, no plugins), yield it, and stop it and remove its files.

    It listens on 127.0.0.1 and on each address of `also_on` (host ends of a test's veth pairs), same port.
    """
    port = _free_port(base_port)
    name = f"chaos{port}@localhost"
    home = Path(tempfile.mkdtemp(prefix="rabbit-chaos-"))
    (home / "enabled_plugins").write_text("[].\n")
    extra = "".join(f"listeners.tcp.extra{i} = {address}:{port}\n" for i, address in enumerate(also_on))
    (home / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\n{extra}loopback_users = none\n")
    if os.geteuid() == 0:  # rabbitmq-server drops to the rabbitmq user, which must own its files
        for path in (home, *home.iterdir()):
            shutil.chown(path, "rabbitmq", "rabbitmq")
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_DIST_PORT": str(port + 20000),
        "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
        "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(home / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
    }
    subprocess.run(["rabbitmq-server", "-detached"], env=env, check=True, capture_output=True, timeout=60)
    node = RabbitNode(name=name, port=port)
    try:
        _wait(lambda: _port_open(port), 90, "AMQP port open")
        yield node
    finally:
        subprocess.run(["rabbitmqctl", "-n", name, "stop"], capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)
