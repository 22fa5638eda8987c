"""Network namespaces for partition tests: each node of a cluster in a namespace of its own,
all attached to one bridge in a "switch" namespace; etcd and the test process stay in the root
namespace, which reaches the bridge through one veth of its own.

    net = Netns(workdir, 3).create()       # NetnsUnavailable when namespaces cannot be made
    net.node_ips, net.etcd_ip              # the addresses to give the roster and etcd
    net.python(i)                          # a script that runs this interpreter in node i's namespace
    net.cut(a, b); net.cut_etcd(a)         # a partition (symmetric, silent)
    net.heal()                             # every cut undone
    net.destroy()                          # namespaces and veths removed (also at exit)

A cut is a /32 route through a "sink": an address on the bridge whose own namespace does not
forward, so what is routed to it is dropped without a reset or an ICMP error, as when a cable is
pulled. Each side routes the other through the sink, so both directions are cut, and existing
connections hang instead of failing. The test process (the clients) keeps reaching every node.
The bridge is not in the root namespace because the host's firewall must not see the traffic
between the nodes: with br_netfilter loaded (Docker loads it and sets the FORWARD policy to DROP)
frames bridged in the root namespace go through its iptables FORWARD chain and are dropped. The
host's own interfaces, routes and sysctls are not touched: only the namespaces and the one root
veth made here, which destroy() removes (deleting a namespace deletes the veths in it).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no `ip`, or refused by the kernel)."""


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _subnet_in_use(prefix: str) -> bool:
    done = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True)
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True)
    return f" {prefix}." in done.stdout or f"{prefix}." in routes.stdout


class Netns:
    def __init__(self, workdir: Path, size: int = 3):
        self.workdir = Path(workdir)
        self.size = size
        tag = f"{os.getpid()}"
        self.switch_ns = f"iggyf{tag}-b"  # holds the bridge
        self.uplink = f"igf{tag}r"  # the root namespace's veth to the bridge
        self.namespaces = [f"iggyf{tag}-{i}" for i in range(size)]
        self.sink_ns = f"iggyf{tag}-s"
        self.veths = [f"v{i}" for i in range(size)] + ["vs"]  # their ends in the switch namespace
        self.prefix = ""
        self.cuts: set[tuple[int, str]] = set()  # (node, address routed to the sink)
        self.created = False

    # ---------------------------------------------------------------- addresses

    @property
    def node_ips(self) -> list[str]:
        return [f"{self.prefix}.{i + 1}" for i in range(self.size)]

    @property
    def etcd_ip(self) -> str:
        return f"{self.prefix}.250"

    @property
    def sink_ip(self) -> str:
        return f"{self.prefix}.253"

    # ---------------------------------------------------------------- life cycle

    def create(self) -> Netns:
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        base = os.getpid() % 200
        for k in range(200):
            prefix = f"10.199.{(base + k) % 200 + 20}"
            if not _subnet_in_use(prefix):
                self.prefix = prefix
                break
        else:
            raise NetnsUnavailable("no free 10.199.x.0/24 subnet")
        atexit.register(self.destroy)
        self.created = True
        try:
            sw = self.switch_ns
            ip("netns", "add", sw)
            ip("-n", sw, "link", "add", "br0", "type", "bridge")
            ip("-n", sw, "link", "set", "br0", "up")
            ip("link", "add", self.uplink, "type", "veth", "peer", "name", "up0", "netns", sw)
            ip("-n", sw, "link", "set", "up0", "master", "br0")
            ip("-n", sw, "link", "set", "up0", "up")
            ip("addr", "add", f"{self.prefix}.254/24", "dev", self.uplink)
            ip("addr", "add", f"{self.etcd_ip}/24", "dev", self.uplink)
            ip("link", "set", self.uplink, "up")
            for ns, veth, address in zip(
                [*self.namespaces, self.sink_ns], self.veths, [*self.node_ips, self.sink_ip], strict=True
            ):
                ip("netns", "add", ns)
                ip("-n", sw, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("-n", sw, "link", "set", veth, "master", "br0")
                ip("-n", sw, "link", "set", veth, "up")
                ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
            # a new namespace copies the root namespace's IPv4 settings: the sink must not forward
            # even where the host does (Docker turns ip_forward on)
            ip("netns", "exec", self.sink_ns, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
        except (RuntimeError, OSError) as exc:
            self.destroy()
            raise NetnsUnavailable(str(exc)) from exc
        return self

    def destroy(self) -> None:
        if not self.created:
            return
        self.created = False
        subprocess.run(["ip", "link", "del", self.uplink], capture_output=True)
        for ns in [*self.namespaces, self.sink_ns, self.switch_ns]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def python(self, i: int) -> str:
        """A script that runs this interpreter in node i's namespace (same pid: `ip netns exec`
        and the shell exec, they do not fork), for IggyTestServer(python=...)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        script = self.workdir / f"python-in-{self.namespaces[i]}"
        script.write_text(f'#!/bin/sh\nexec ip netns exec {self.namespaces[i]} {sys.executable} "$@"\n')
        script.chmod(0o755)
        return str(script)

    # ---------------------------------------------------------------- partitions

    def _route_to_sink(self, node: int, address: str) -> None:
        ip("-n", self.namespaces[node], "route", "replace", f"{address}/32", "via", self.sink_ip)
        self.cuts.add((node, address))

    def cut(self, a: int, b: int) -> None:
        """Nodes a and b no longer reach each other (both directions)."""
        self._route_to_sink(a, self.node_ips[b])
        self._route_to_sink(b, self.node_ips[a])

    def cut_etcd(self, a: int) -> None:
        """Node a no longer reaches etcd (its requests and etcd's answers are lost)."""
        self._route_to_sink(a, self.etcd_ip)

    def isolate(self, a: int) -> None:
        """Node a reaches neither the other nodes nor etcd; clients still reach it."""
        for b in range(self.size):
            if b != a:
                self.cut(a, b)
        self.cut_etcd(a)

    def heal(self) -> None:
        for node, address in sorted(self.cuts):
            ip("-n", self.namespaces[node], "route", "del", f"{address}/32")
        self.cuts.clear()
