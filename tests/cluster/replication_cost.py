"""What replication costs a producer: iggy-bench pinned producers against one node and against the
leader of a 3-node cluster on the same machine, for `replicated` and `persisted` topics.

    python -m tests.cluster.replication_cost [BATCHES]

Starts etcd, three cluster nodes (tests/cluster/nodes.py) and one plain node, then runs
`iggy-bench -m 1000 -P 100 -b BATCHES (default 200) --durability D pinned-producer -s 2 -p 2`
against each: 2 producers, 100 messages of 1000 bytes per batch. All of it shares one machine, so
the ratio is the replication cost (two more appends, the loopback round trip, the Python path
instead of the shards' C path), not a scale-out figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from iggy.testing.server import IggyTestServer
from tests.cluster.etcd import EtcdServer
from tests.cluster.nodes import TestCluster


def bench(address: str, durability: str, batches: int) -> dict:
    args = [sys.executable, "-m", "iggy.bench", "-q", "--json", "-", "-m", "1000", "-P", "100", "-b", str(batches)]
    args += ["--durability", durability, "--server-address", address, "pinned-producer", "-s", "2", "-p", "2", "tcp"]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    group = json.loads(out.stdout)["group_metrics"][0]
    return {
        "MB/s": round(group["total_throughput_megabytes_per_second"], 1),
        "p50 ms": round(group["p50_latency_ms"], 2),
        "p99 ms": round(group["p99_latency_ms"], 2),
    }


def main(batches: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="iggy-replication-cost-"))
    etcd = EtcdServer(workdir / "etcd").start()
    cluster = TestCluster(workdir / "cluster", etcd.url)
    single = IggyTestServer(workdir / "single" / "data")
    try:
        cluster.start()
        single.start()
        leader = cluster.wait_leader(20)
        for durability in ("replicated", "persisted"):
            one = bench(str(single.tcp_address), durability, batches)
            three = bench(cluster.address(leader), durability, batches)
            ratio = three["MB/s"] / one["MB/s"] if one["MB/s"] else float("nan")
            print(f"{durability:10} 1 node {one}  3 nodes {three}  throughput ratio {ratio:.2f}")
    finally:
        single.stop()
        cluster.stop()
        etcd.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
