"""Extra "hosts" for one test: network namespaces joined to this machine by veth pairs the test creates.

Each host is a namespace with one veth end (10.231.N.4k+2/30) whose peer on this side (10.231.N.4k+1/30)
is where the test's private services listen. Traffic never leaves the pair: no route, no forwarding, no
other address. cut() takes the link down mid-run (packets vanish, connections hang: a host that vanished);
everything is deleted afterwards.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    """One namespace: its name, the veth ends and their addresses."""

    netns: str
    outer: str  # this side's interface
    outer_ip: str  # where services listen for this host
    inner_ip: str

    def cut(self) -> None:
        """Take the link down: the host's packets go nowhere, its TCP connections hang (no RST)."""
        _ip("link", "set", self.outer, "down")

    def restore(self) -> None:
        _ip("link", "set", self.outer, "up")


def _used_subnets() -> set[int]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], check=True, capture_output=True, text=True).stdout
    return {int(part.split(".")[2]) for part in out.split() if part.startswith("10.231.")}


@contextmanager
def worker_hosts(count: int = 2) -> Iterator[list[Host]]:
    """`count` namespaces with a veth pair each, in a 10.231.N.0/24 no other test of this machine uses."""
    used = _used_subnets()
    third = next(n for n in range(100 + os.getpid() % 100, 256) if n not in used)
    tag = f"{os.getpid() % 10000:04d}"
    hosts: list[Host] = []
    try:
        for i in range(count):
            netns, outer, inner = f"t15-{tag}-{i}", f"v{tag}h{i}", f"v{tag}n{i}"
            host = Host(netns=netns, outer=outer, outer_ip=f"10.231.{third}.{4 * i + 1}",
                        inner_ip=f"10.231.{third}.{4 * i + 2}")
            _ip("netns", "add", netns)
            hosts.append(host)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", netns)
            _ip("addr", "add", f"{host.outer_ip}/30", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("netns", "exec", netns, "ip", "addr", "add", f"{host.inner_ip}/30", "dev", inner)
            _ip("netns", "exec", netns, "ip", "link", "set", inner, "up")
            _ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
        yield hosts
    finally:
        for host in hosts:
            subprocess.run(["ip", "link", "del", host.outer], capture_output=True, timeout=30)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=30)
