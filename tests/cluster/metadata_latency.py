"""Latency of a metadata change on a cluster's leader beside a single node, in the same run.

    python -m tests.cluster.metadata_latency [CHANGES]

Starts etcd and three nodes (tests/cluster/nodes.py) and one node without a cluster, then
creates CHANGES streams one after the other over a raw TCP connection on the leader and on the
single node, timing each request to its reply. On the cluster each change is the leader's fenced
write to etcd (one round trip and etcd's fsync) before its own journal fsync.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from iggy.testing.server import IggyTestServer
from tests.cluster.etcd import EtcdServer
from tests.cluster.nodes import TestCluster
from tests.rawclient import RawClient, wire_name


def timed_creates(address: str, count: int) -> list[float]:
    raw = RawClient(address)
    try:
        assert raw.login().status == 0
        times = []
        for i in range(count):
            started = time.perf_counter()
            reply = raw.call(128, body=wire_name(f"latency-{i}"))
            times.append(time.perf_counter() - started)
            assert reply.status == 0, reply
        return times
    finally:
        raw.close()


def summary(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{name}: {len(ms)} stream creates, median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms"


def main(count: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="iggy-meta-latency-"))
    etcd = EtcdServer(workdir / "etcd").start()
    cluster = TestCluster(workdir / "cluster", etcd.url)
    try:
        cluster.start()
        leader = cluster.wait_leader(10)
        on_cluster = timed_creates(cluster.address(leader), count)
    finally:
        cluster.stop()
        etcd.stop()
    with IggyTestServer(workdir / "single" / "data") as single:
        on_single = timed_creates(single.tcp_address, count)
    print(summary("cluster leader (3 nodes, etcd)", on_cluster))
    print(summary("single node", on_single))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
