"""Latency of a metadata change, or of a stored consumer offset, on a cluster's leader beside a
single node, in the same run.

    python -m tests.cluster.metadata_latency [CHANGES] [streams|offsets]

Starts etcd and three nodes (tests/cluster/nodes.py) and one node without a cluster, then makes
CHANGES requests one after the other over a raw TCP connection on the leader and on the single
node, timing each request to its reply: stream creates (default), or STORE_CONSUMER_OFFSET of
one consumer in a partition holding 10 messages. On the cluster each stream create is the
leader's fenced write to `meta/` (one etcd round trip and etcd's fsync) before its own journal
fsync; each explicit offset store is the local store, then the fenced write of `offsets/...`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from iggy.protocol import codes
from iggy.testing.server import IggyTestServer
from tests.cluster.etcd import EtcdServer
from tests.cluster.nodes import TestCluster
from tests.rawclient import RawClient, store_offset_body, wire_name
from tests.test_control_streams import topic_body
from tests.test_trailing_bytes import send_body


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


def timed_stores(address: str, count: int) -> list[float]:
    """A stream, a topic of one partition, 10 messages, then `count` stores of offsets 0..9 in turn."""
    raw = RawClient(address)
    try:
        assert raw.login().status == 0
        assert raw.call(codes.OP_CREATE_STREAM, body=wire_name("offsets")).code == 0
        assert raw.call(codes.OP_CREATE_TOPIC, body=topic_body("offsets", 1, "t")).code == 0
        payloads = [b"m%d" % i for i in range(10)]
        assert raw.call(codes.OP_SEND_MESSAGES, body=send_body("offsets", "t", 0, payloads)).code == 0
        times = []
        for i in range(count):
            body = store_offset_body("offsets", "t", 0, i % 10)
            started = time.perf_counter()
            reply = raw.call(codes.OP_STORE_CONSUMER_OFFSET, body=body)
            times.append(time.perf_counter() - started)
            assert reply.code == 0, reply
        return times
    finally:
        raw.close()


def summary(name: str, what: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{name}: {len(ms)} {what}, median {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms"


def main(count: int, kind: str = "streams") -> None:
    timed, what = (timed_stores, "offset stores") if kind == "offsets" else (timed_creates, "stream creates")
    workdir = Path(tempfile.mkdtemp(prefix="iggy-meta-latency-"))
    etcd = EtcdServer(workdir / "etcd").start()
    cluster = TestCluster(workdir / "cluster", etcd.url)
    try:
        cluster.start()
        leader = cluster.wait_leader(10)
        on_cluster = timed(cluster.address(leader), count)
    finally:
        cluster.stop()
        etcd.stop()
    with IggyTestServer(workdir / "single" / "data") as single:
        on_single = timed(single.tcp_address, count)
    print(summary("cluster leader (3 nodes, etcd)", what, on_cluster))
    print(summary("single node", what, on_single))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, sys.argv[2] if len(sys.argv) > 2 else "streams")
