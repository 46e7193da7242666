"""A private 3-node RabbitMQ cluster on loopback ports, for quorum-queue and failover tests.

Three rabbitmq-server nodes, each with its own node name, AMQP and distribution ports, data and log
directories, the machine's Erlang cookie (same user, so shared), joined with rabbitmqctl join_cluster. The
shared broker is never touched. Faults: SIGKILL a node (and start it again on the same data), SIGSTOP /
SIGCONT it (a frozen node), raise an alarm.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.rabbit_node import ALARMS, _port_open, _wait


@dataclass
class ClusterNode:
    """One node of the cluster: its name, ports, files and the environment it was started with."""

    name: str
    port: int
    home: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.home / "node.pid"),
        }

    def ctl(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(["rabbitmqctl", "-n", self.name, *args], check=True, capture_output=True,
                                text=True, timeout=timeout)
        return result.stdout

    def start(self) -> None:
        """Start the node (again, on the same data after a kill) and wait for its AMQP port."""
        subprocess.run(["rabbitmq-server", "-detached"], env=self.env, check=True, capture_output=True, timeout=60)
        _wait(lambda: _port_open(self.port, self.host), 90, f"{self.name} AMQP port open")

    def pid(self) -> int:
        """The OS pid of the node's Erlang VM (written by the node at boot)."""
        _wait(lambda: (self.home / "node.pid").exists() and (self.home / "node.pid").read_text().strip(), 30,
              f"{self.name} pid file")
        return int((self.home / "node.pid").read_text().strip())

    def kill(self) -> None:
        """SIGKILL the VM, like a machine losing power; open connections drop at once."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: not _alive(pid), 30, f"{self.name} gone")
        (self.home / "node.pid").unlink(missing_ok=True)

    def freeze(self) -> None:
        """SIGSTOP: the node keeps its sockets open but answers nothing (a hung machine)."""
        os.kill(self.pid(), signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid(), signal.SIGCONT)

    def rejoin(self) -> None:
        """What an operator does after a partition: restart the node's app, so it syncs with the majority again
        (a node thawed from SIGSTOP can stay paused, or keep the partition on record, for minutes)."""
        self.ctl("stop_app", timeout=120)
        self.ctl("start_app", timeout=180)

    def set_alarm(self, kind: str) -> None:
        self.ctl(*ALARMS[kind][0])

    def clear_alarm(self, kind: str) -> None:
        self.ctl(*ALARMS[kind][1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@dataclass
class RabbitCluster:
    """The three nodes and the multi-node BROKER_URL that lists them all."""

    nodes: list[ClusterNode]

    @property
    def url(self) -> str:
        """BROKER_URL with every node, ';'-separated (kombu alternates: clients fail over in this order)."""
        return ";".join(node.url for node in self.nodes)

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def live(self) -> ClusterNode:
        """A node that answers (for rabbitmqctl queries while another one is down)."""
        for node in self.nodes:
            try:
                node.ctl("status", timeout=10)
                return node
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                continue
        raise RuntimeError("no cluster node answers")

    def leader_of(self, queue: str, vhost: str = "/", timeout_s: float = 60.0) -> ClusterNode:
        """The node that leads a quorum queue now (its Raft leader). Polled: after an earlier fault (a node thawed
        from SIGSTOP) a queue can be missing from list_queues, or listed without a leader, until it recovers."""
        names = {node.name for node in self.nodes}
        deadline = time.monotonic() + timeout_s
        seen: dict[str, str] = {}
        while True:
            for node in self.nodes:  # a node thawed from a freeze may not list queues others lead: ask each
                try:
                    out = node.ctl("list_queues", "-p", vhost, "name", "leader", "--no-table-headers", "--quiet",
                                   timeout=15)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                    seen[node.name] = type(exc).__name__
                    continue
                seen[node.name] = out
                for line in out.splitlines():
                    parts = line.split()
                    if len(parts) >= 2 and parts[0] == queue and parts[1] in names:
                        return self.node(parts[1])
            if time.monotonic() > deadline:
                raise LookupError(f"queue {queue} has no leader on the cluster after {timeout_s:.0f}s: {seen}")
            time.sleep(0.5)

    def wait_whole(self, timeout_s: float = 180.0) -> None:
        """Every node running, in one cluster, no partition seen: what the next scenario starts from (a node thawed
        from SIGSTOP pauses itself as a minority, pause_minority, until it has rejoined)."""
        names = sorted(node.name for node in self.nodes)

        def whole() -> bool:
            for node in self.nodes:
                try:
                    status = json.loads(node.ctl("cluster_status", "--formatter", "json", timeout=15))
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError):
                    return False
                if sorted(status.get("running_nodes") or []) != names or status.get("partitions"):
                    return False
            return True

        _wait(whole, timeout_s, "the cluster whole again (every node running, no partition)")

    def queue_types(self, vhost: str = "/") -> dict[str, str]:
        """name -> type (classic | quorum) of every queue of the vhost."""
        out = self.live().ctl("list_queues", "-p", vhost, "name", "type", "--no-table-headers", "--quiet")
        return {parts[0]: parts[1] for line in out.splitlines() if len(parts := line.split()) >= 2}


def _free_ports(start: int, count: int) -> list[int]:
    ports: list[int] = []
    for port in range(start, start + 400):
        if not _port_open(port) and not _port_open(port + 20000):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free ports for a private RabbitMQ cluster")


def _prepare(name: str, port: int, host: str) -> ClusterNode:
    home = Path(tempfile.mkdtemp(prefix="rabbit-cluster-"))
    (home / "enabled_plugins").write_text("[].\n")
    (home / "rabbitmq.conf").write_text(
        f"listeners.tcp.local = {host}:{port}\nloopback_users = none\n"
        # A lost node is noticed in seconds, not the default minute (net_ticktime 60).
        "net_ticktime = 10\n"
        # The node that was frozen or cut off pauses itself when it is the minority, instead of a split brain.
        "cluster_partition_handling = pause_minority\n"
    )
    if os.geteuid() == 0:  # rabbitmq-server drops to the rabbitmq user, which must own its files
        for path in (home, *home.iterdir()):
            shutil.chown(path, "rabbitmq", "rabbitmq")
    return ClusterNode(name=name, port=port, home=home, host=host)


@contextmanager
def private_cluster(base_port: int = 5700, size: int = 3, host: str = "127.0.0.1") -> Iterator[RabbitCluster]:
    """Start `size` nodes at once, join the others to the first, yield the cluster; stop and remove it after."""
    ports = _free_ports(base_port, size)
    nodes = [_prepare(f"cluster{ports[0]}-{i}@localhost", port, host) for i, port in enumerate(ports)]
    cluster = RabbitCluster(nodes)
    try:
        starters = [subprocess.Popen(["rabbitmq-server", "-detached"], env=node.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL) for node in nodes]
        for starter in starters:
            starter.wait(60)
        for node in nodes:
            _wait(lambda node=node: _port_open(node.port, node.host), 90, f"{node.name} AMQP port open")
        for node in nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", nodes[0].name)
            node.ctl("start_app")
            _wait(lambda node=node: _port_open(node.port, node.host), 90, f"{node.name} AMQP port open")
        yield cluster
    finally:
        for node in nodes:
            pid_file = node.home / "node.pid"
            if pid_file.exists():  # a frozen node would never answer `stop`
                try:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGCONT)
                except (OSError, ValueError):
                    pass
            subprocess.run(["rabbitmqctl", "-n", node.name, "stop"], capture_output=True, timeout=60)
        for node in nodes:
            shutil.rmtree(node.home, ignore_errors=True)
