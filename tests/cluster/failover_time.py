"""Failover time of a 3-node cluster: from the SIGKILL of the leader to the first acknowledged
send after it, the SDK's reconnect included (the definition of issue 15).

    python -m tests.cluster.failover_time [ROUNDS]

Each round starts etcd and three nodes (heartbeat_timeout 2 s, tests/cluster/nodes.py), sends one
message through the SDK, kills the leader and retries the send to the same topic until it is
acknowledged (the stream and topic are on the new leader: metadata commits through etcd; the
new leader appends to the partition once it has reconciled it with the surviving follower).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from apache_iggy import IggyClient, SendMessage

from tests.cluster.etcd import EtcdServer
from tests.cluster.nodes import TestCluster


async def one_round() -> float:
    workdir = Path(tempfile.mkdtemp(prefix="iggy-failover-"))
    etcd = EtcdServer(workdir / "etcd").start()
    cluster = TestCluster(workdir, etcd.url)
    try:
        cluster.start()
        leader = cluster.wait_leader(10)
        client = IggyClient(cluster.address((leader + 1) % 3))
        await client.connect()
        await client.login_user("iggy", "iggy")
        await client.create_stream("before")
        await client.create_topic("before", "t", 1)
        await client.send_messages("before", "t", 0, [SendMessage("x")])
        cluster.nodes[leader].kill()
        killed_at = time.monotonic()
        while True:
            try:
                await client.send_messages("before", "t", 0, [SendMessage("y")])
                return time.monotonic() - killed_at
            except RuntimeError:
                await asyncio.sleep(0.05)
    finally:
        cluster.stop()
        etcd.stop()


async def main(rounds: int) -> None:
    times = [await one_round() for _ in range(rounds)]
    print(
        f"failover (s), {rounds} rounds: {[round(t, 2) for t in times]}; "
        f"median {statistics.median(times):.2f}, max {max(times):.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
