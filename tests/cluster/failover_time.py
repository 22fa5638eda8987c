"""Failover time of a 3-node cluster: from the SIGKILL of the leader to the first acknowledged
send after it, the SDK's reconnect included (the definition of issue 15).

    python -m tests.cluster.failover_time [ROUNDS] [--partitions N]

Each round starts etcd and three nodes (heartbeat_timeout 2 s, tests/cluster/nodes.py), creates
N partitions (default 1; stream `before`, topics of up to PER_TOPIC partitions each), waits until
every node has them, sends one message through the SDK, kills the leader and retries the send to
the same topic until it is acknowledged (the stream and topic are on the new leader: metadata
commits through etcd; the new leader appends to the partition once it has reconciled it with the
surviving follower). It also prints each reconciliation pass after the kill (the log line
"partitions reconciled and ready in" of a surviving node: seconds, partitions), and the set-up
time.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from apache_iggy import IggyClient, SendMessage

from tests.cluster.etcd import EtcdServer
from tests.cluster.nodes import TestCluster, wait_for

# partitions per topic: a node makes a new topic's partitions on its main loop, and a leader
# busy for longer than the lease (2 s) loses it, which on a slow disk undoes the create
PER_TOPIC = 100
RECONCILED = re.compile(rb"replication: (\d+) partitions reconciled and ready in ([0-9.]+) s")


def partitions_on(node_dir: Path) -> int:
    return sum(1 for _ in (node_dir / "data" / "streams").glob("*/topics/*/partitions/*"))


async def create_topic(client: IggyClient, name: str, partitions: int) -> None:
    """A topic of stream `before`, retried while the answer is transient (an etcd write of a
    big topic may time out and land all the same: then it exists)."""
    while True:
        try:
            await client.create_topic("before", name, partitions)
            return
        except RuntimeError as exc:
            if "exist" in str(exc).lower():
                return
            if "transient" not in str(exc).lower():
                raise
            await asyncio.sleep(0.5)


async def send(client: IggyClient, payload: str) -> None:
    """One message to before/t partition 0, retried until it is acknowledged."""
    while True:
        try:
            await client.send_messages("before", "t", 0, [SendMessage(payload)])
            return
        except RuntimeError:
            await asyncio.sleep(0.05)


async def one_round(partitions: int) -> tuple[float, list[tuple[float, int]], float]:
    """(failover s, [(s, partitions) of each reconciliation pass after the kill], set-up s)."""
    workdir = Path(tempfile.mkdtemp(prefix="iggy-failover-"))
    etcd = EtcdServer(workdir / "etcd").start()
    cluster = TestCluster(workdir, etcd.url)
    try:
        setup_start = time.monotonic()
        cluster.start()
        leader = cluster.wait_leader(10)
        client = IggyClient(cluster.address((leader + 1) % 3))
        await client.connect()
        await client.login_user("iggy", "iggy")
        await client.create_stream("before")
        for n, first in enumerate(range(0, partitions, PER_TOPIC)):
            await create_topic(client, "t" if n == 0 else f"t{n}", min(partitions - first, PER_TOPIC))
        for i in range(3):
            wait_for(lambda i=i: partitions_on(workdir / f"node-{i}") >= partitions, 600, f"node {i}'s partitions")
        await send(client, "x")
        setup = time.monotonic() - setup_start
        leader = cluster.wait_leader(10)  # creating many partitions may have moved it
        logged = [node.log_path.stat().st_size for node in cluster.nodes]  # what came before the kill
        cluster.nodes[leader].kill()
        killed_at = time.monotonic()
        await send(client, "y")
        failover = time.monotonic() - killed_at
        passes = [
            (float(m[2]), int(m[1]))
            for i, node in enumerate(cluster.nodes)
            if i != leader
            for m in RECONCILED.finditer(node.log_path.read_bytes()[logged[i] :])
        ]
        return failover, passes, setup
    finally:
        cluster.stop()
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def main(rounds: int, partitions: int) -> None:
    results = [await one_round(partitions) for _ in range(rounds)]
    times = [r[0] for r in results]
    print(
        f"{partitions} partitions, failover (s), {rounds} rounds: {[round(t, 2) for t in times]}; "
        f"median {statistics.median(times):.2f}, max {max(times):.2f}; "
        f"reconciliation passes after the kill (s, partitions): {[r[1] for r in results]}; "
        f"set-up (s): {[round(r[2], 1) for r in results]}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.failover_time")
    parser.add_argument("rounds", nargs="?", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=1, help="partitions in all (default 1)")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.partitions))
