"""Three (or n) `iggy` nodes in cluster mode on loopback, for the cluster tests.

Each node is an IggyTestServer child process started with `--replica-id i` and a roster of
free loopback ports given as IGGY_CLUSTER_NODES_<i>_* variables (the roster's ports replace the
listeners' ports). `metadata(node)` reads GET_CLUSTER_METADATA over a raw socket;
`local_metadata(node)` reads what a node has committed to its own metadata journal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from apache_iggy import IggyClient

from iggy.metadata.journal import Journal
from iggy.metadata.state import Record, State
from iggy.metadata.store import MetadataStore
from iggy.testing.server import LISTENERS, IggyTestServer
from tests.rawclient import RawClient

HEARTBEAT_TIMEOUT = 2.0  # seconds: the minimum, so failover tests stay short
START_ELECTION = 10.0  # seconds for the first leader after the nodes are up
ROLES = {0: "leader", 1: "follower"}
STATUSES = {0: "healthy", 1: "starting", 2: "stopping", 3: "unreachable", 4: "maintenance"}


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def roster_env(ports: list[dict], ips: list[str] | None = None) -> dict:
    env = {}
    for i, p in enumerate(ports):
        pre = f"IGGY_CLUSTER_NODES_{i}_"
        ip = ips[i] if ips else "127.0.0.1"
        env.update({pre + "NAME": f"node-{i}", pre + "IP": ip, pre + "REPLICA_ID": str(i)})
        for key, value in p.items():
            env[pre + "PORTS_" + key.upper()] = str(value)
    return env


class TestCluster:
    __test__ = False  # not a test class

    def __init__(
        self,
        workdir: Path,
        etcd_url: str,
        size: int = 3,
        name: str = "test-cluster",
        env: dict | None = None,
        ips: list[str] | None = None,
        pythons: list[str] | None = None,
    ):
        """`ips`: each node's address (its listeners bind it and the roster names it; default
        127.0.0.1 for all); `pythons`: the interpreter (or a wrapper script that runs it, e.g.
        in a network namespace) each node is started with."""
        taken: set[int] = set()

        def unused(kind=socket.SOCK_STREAM) -> int:
            # the roster must not name a port twice (the config refuses it), and a UDP port
            # the kernel hands out may equal a TCP one already picked
            while (port := free_port(kind)) in taken:
                pass
            taken.add(port)
            return port

        self.ports = [
            {
                "tcp": unused(),
                "quic": unused(socket.SOCK_DGRAM),
                "http": unused(),
                "websocket": unused(),
                "tcp_replica": unused(),
            }
            for _ in range(size)
        ]
        env = {
            "IGGY_CLUSTER_ENABLED": "true",
            "IGGY_CLUSTER_NAME": name,
            "IGGY_CLUSTER_HEARTBEAT_TIMEOUT": f"{HEARTBEAT_TIMEOUT}s",
            "IGGY_CLUSTER_ETCD_ENDPOINTS": etcd_url,
            "IGGY_SYSTEM_ENGINE": os.environ.get("IGGY_TEST_ENGINE", "auto"),
            **roster_env(self.ports, ips),
            **(env or {}),
        }
        self.ips = ips or ["127.0.0.1"] * size
        self.nodes = [
            IggyTestServer(
                workdir / f"node-{i}" / "data",
                env={**env, **({f"IGGY_{k.upper()}_ADDRESS": f"{ips[i]}:0" for k in LISTENERS} if ips else {})},
                args=("--replica-id", str(i)),
                python=pythons[i] if pythons else None,
                startup_timeout=30.0,
            )
            for i in range(size)
        ]

    def start(self) -> TestCluster:
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[tuple[TestCluster, int]]:
        """Started, with the leader the nodes agree on; stopped on the way out."""
        self.start()
        try:
            yield self, self.wait_leader(START_ELECTION)
        finally:
            self.stop()

    def address(self, i: int) -> str:
        return f"{self.ips[i]}:{self.ports[i]['tcp']}"

    def index_of_port(self, port: int) -> int:
        return next(i for i, p in enumerate(self.ports) if p["tcp"] == port)

    def wait_leader(self, timeout: float, among=None, other_than: int | None = None) -> int:
        """The replica id every live node (of `among`) reports as leader, once they agree (on a
        node other than `other_than`: after a SIGKILL the others report the dead leader until its
        lease expires)."""
        among = [i for i in (among if among is not None else range(len(self.nodes))) if self.nodes[i].alive()]
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = set()
            for i in among:
                try:
                    seen.add(leader_of(metadata(self.address(i))))
                except OSError:
                    seen.add(None)
            if len(seen) == 1 and None not in seen and other_than not in seen:
                return seen.pop()
            time.sleep(0.1)
        raise AssertionError(f"no agreed leader within {timeout} s (reported: {seen})")

    def wait_all_healthy(self, timeout: float) -> None:
        """Until every node reports every node healthy (a node reads the others' members/ keys
        once per round, so one that started last is seen a round later)."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = [[n["status"] for n in metadata(self.address(i))["nodes"]] for i in range(len(self.nodes))]
            if all(s == ["healthy"] * len(self.nodes) for s in statuses):
                return
            assert time.monotonic() < deadline, f"not all healthy within {timeout} s: {statuses}"
            time.sleep(0.1)


async def sdk(address: str, username: str = "iggy", password: str = "iggy") -> IggyClient:
    """The official SDK connected to `address` and logged in (it then moves to the leader)."""
    client = IggyClient(address)
    await client.connect()
    await client.login_user(username, password)
    return client


def metadata(address: str, timeout: float = 5.0) -> dict:
    """GET_CLUSTER_METADATA as root over a raw socket: {name, nodes: [{name, ip, tcp, ..., role, status}]}."""
    raw = RawClient(address, timeout=timeout)
    try:
        assert raw.login().status == 0
        reply = raw.read(12)
        assert reply.status == 0, reply
        return decode_metadata(reply.body)
    finally:
        raw.close()


def decode_metadata(body: bytes) -> dict:
    pos = 0

    def string():
        nonlocal pos
        (n,) = struct.unpack_from("<I", body, pos)
        pos += 4 + n
        return body[pos - n : pos].decode()

    name = string()
    (count,) = struct.unpack_from("<I", body, pos)
    pos += 4
    nodes = []
    for _ in range(count):
        node_name, ip = string(), string()
        tcp, quic, http, ws, role, status = struct.unpack_from("<HHHHBB", body, pos)
        pos += 10
        nodes.append(
            {
                "name": node_name,
                "ip": ip,
                "tcp": tcp,
                "quic": quic,
                "http": http,
                "websocket": ws,
                "role": ROLES[role],
                "status": STATUSES[status],
            }
        )
    assert pos == len(body)
    return {"name": name, "nodes": nodes}


def leader_of(meta: dict) -> int | None:
    leaders = [i for i, n in enumerate(meta["nodes"]) if n["role"] == "leader"]
    assert len(leaders) <= 1, meta
    return leaders[0] if leaders else None


def _metadata_copy(node: IggyTestServer) -> Path:
    """A copy of the node's metadata directory (the node may be appending: a torn last record in
    the copy is cut off when it is opened, as at a restart)."""
    copy = Path(tempfile.mkdtemp(prefix="iggy-meta-copy-"))
    shutil.copytree(node.data_dir / "metadata", copy / "metadata")
    return copy


def local_metadata(node: IggyTestServer) -> State:
    """The metadata a node has committed to its own journal (running or not), read from a copy."""
    copy = _metadata_copy(node)
    try:
        store = MetadataStore(str(copy))
        store.open()
        store.close()
        return store.state
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def local_journal(node: IggyTestServer) -> tuple[dict | None, list[Record]]:
    """(snapshot dict, journal records) of a node's metadata directory, read from a copy."""
    copy = _metadata_copy(node)
    try:
        journal = Journal(str(copy / "metadata"))
        loaded = journal.load()
        journal.close()
        return loaded
    finally:
        shutil.rmtree(copy, ignore_errors=True)


async def first_one_leads(a, b) -> None:
    """Two in-process election holders (anything with `.election`) campaign in turn: the first
    wins, the second sees the key taken and follows."""
    await a.election.round()
    await b.election.round()
    assert a.election.is_leader() and not b.election.is_leader()


def wait_for(check, timeout: float, what: str):
    """Poll `check()` until it returns something true; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)
