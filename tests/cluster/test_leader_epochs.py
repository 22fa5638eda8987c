"""Leader epochs and reconciliation on three server processes with etcd (docs/CLUSTER.md, "A new
leader holds every committed batch", "Truncation of an uncommitted suffix").

- a follower that missed acknowledged batches (killed while the leader and the other follower
  acknowledged them) is elected while that other follower is paused: it serves the partition
  only once it has fetched those batches from the other follower, and then serves all of them;
- an old leader that appended a batch no follower got (both were down), paused while the two
  others elect a new leader that accepts more batches, drops that batch when it resumes and
  rejoins as a follower: the three nodes' partition files end up byte for byte the same;
- a new leader of many partitions, all holding messages, makes every one ready in one pass of
  epoch-file writes, serves what each held and takes new batches on each; it and the surviving
  follower hold a record of its epoch for every partition.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil
import pytest
from apache_iggy import PollingStrategy, SendMessage

from iggy.storage.leader_epochs import LeaderEpochs
from tests.cluster.nodes import HEARTBEAT_TIMEOUT, START_ELECTION, TestCluster, leader_of, metadata, sdk, wait_for
from tests.cluster.test_log_replication import REPLICATED, log_bytes, partition_files, topic_on_the_leader
from tests.conftest import sdk_poll

pytestmark = pytest.mark.engine

SERVED = 30.0  # seconds for a new leader to serve: election, reconciliation, the SDK's retries


def batch(tag: str, n: int = 5, size: int = 200) -> list[SendMessage]:
    return [SendMessage(f"{tag}-{i}-".encode() + b"x" * size) for i in range(n)]


async def send_until_accepted(client, stream: str, tag: str) -> None:
    """One batch, retried while the new leader does not serve the partition yet (58)."""
    deadline = time.monotonic() + SERVED
    while True:
        try:
            await client.send_messages(stream, "t", 0, batch(tag))
            return
        except RuntimeError:
            assert time.monotonic() < deadline, f"batch {tag} not accepted within {SERVED} s"
            await asyncio.sleep(0.2)


def leads(cluster: TestCluster, node: int) -> bool:
    try:
        return leader_of(metadata(cluster.address(node))) == node
    except OSError:
        return False


async def test_an_elected_follower_that_missed_acknowledged_batches_fetches_them_first(cluster):
    leader, client = await topic_on_the_leader(cluster, "m")
    behind, other = [i for i in range(3) if i != leader]
    for b in range(3):
        await client.send_messages("m", "t", 0, batch(f"early{b}"))
    await asyncio.to_thread(
        wait_for,
        lambda: log_bytes(partition_files(cluster, behind)) == log_bytes(partition_files(cluster, leader)),
        REPLICATED,
        "the follower holds the first batches",
    )
    cluster.nodes[behind].kill()
    for b in range(10):  # acknowledged by the leader and `other`
        await client.send_messages("m", "t", 0, batch(f"acked{b}"))
    acked = 13 * 5
    other_process = psutil.Process(cluster.nodes[other].pid)
    other_process.suspend()
    try:
        cluster.nodes[leader].kill()
        cluster.nodes[behind].start()  # it lacks the last ten batches and is the only candidate
        await asyncio.to_thread(
            wait_for, lambda: leads(cluster, behind), START_ELECTION + 3 * HEARTBEAT_TIMEOUT, "elected"
        )
        reader = await sdk(cluster.address(behind))
        # alone it is no majority: it must not serve the partition from its own copy
        with pytest.raises(RuntimeError):
            await sdk_poll(reader, "m", "t", PollingStrategy.First(), count=1000)
    finally:
        other_process.resume()
    deadline = time.monotonic() + SERVED
    polled: list = []
    while len(polled) < acked:
        try:
            polled = await sdk_poll(reader, "m", "t", PollingStrategy.First(), count=1000)
        except RuntimeError:
            pass
        assert time.monotonic() < deadline, f"{len(polled)} of {acked} acknowledged messages served"
        await asyncio.sleep(0.2)
    assert [m.payload() for m in polled] == [
        f"{tag}-{i}-".encode() + b"x" * 200
        for tag in [f"early{b}" for b in range(3)] + [f"acked{b}" for b in range(10)]
        for i in range(5)
    ]
    assert "fetching offsets 15..64 from replica" in cluster.nodes[behind].log()


async def test_a_returning_old_leader_drops_its_unacknowledged_suffix_and_converges(cluster):
    old, client = await topic_on_the_leader(cluster, "d")
    followers = [i for i in range(3) if i != old]
    for b in range(3):
        await client.send_messages("d", "t", 0, batch(f"early{b}"))
    for f in followers:
        cluster.nodes[f].kill()
    before = len(log_bytes(partition_files(cluster, old)))
    stray = await sdk(cluster.address(old))
    pending = asyncio.ensure_future(stray.send_messages("d", "t", 0, batch("unacked", n=20)))
    await asyncio.to_thread(
        wait_for,
        lambda: len(log_bytes(partition_files(cluster, old))) > before,
        REPLICATED,
        "the old leader appended the batch no follower got",
    )
    assert not pending.done()
    old_process = psutil.Process(cluster.nodes[old].pid)
    old_process.suspend()
    try:
        for f in followers:
            cluster.nodes[f].start()
        new = await asyncio.to_thread(cluster.wait_leader, START_ELECTION + 3 * HEARTBEAT_TIMEOUT, followers, old)
        writer = await sdk(cluster.address(new))
        for b in range(3):
            await send_until_accepted(writer, "d", f"new{b}")
    finally:
        old_process.resume()
    pending.cancel()
    await asyncio.to_thread(
        wait_for,
        lambda: (
            (files := partition_files(cluster, new)) and all(partition_files(cluster, i) == files for i in range(3))
        ),
        SERVED,
        "every node's partition files equal the new leader's",
    )
    assert "dropped offsets 15..34" in cluster.nodes[old].log()


async def test_a_new_leader_of_many_partitions_makes_every_one_ready_and_serves_it(cluster):
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    client = await sdk(cluster.address(leader))
    await client.create_stream("many")
    parts = [(topic, p) for topic in ("a", "b") for p in range(12)]
    for topic in ("a", "b"):
        await client.create_topic("many", topic, 12)
    for topic, p in parts:
        await client.send_messages("many", topic, p, batch(f"{topic}{p}", n=2, size=10))

    def epoch_records(node: int) -> list[list[tuple[int, int]]]:
        dirs = sorted(Path(cluster.nodes[node].data_dir).glob("streams/*/topics/*/partitions/*"))
        return [LeaderEpochs(str(d)).records for d in dirs]

    def logs(node: int) -> list[bytes]:
        dirs = sorted(Path(cluster.nodes[node].data_dir).glob("streams/*/topics/*/partitions/*"))
        return [b"".join(f.read_bytes() for f in sorted(d.glob("*.log"))) for d in dirs]

    for f in (i for i in range(3) if i != leader):  # every copy complete: no fetch, one pass
        await asyncio.to_thread(wait_for, lambda f=f: logs(f) == logs(leader), REPLICATED, f"node {f} holds all")
    old_epoch = epoch_records(leader)[0][-1][0]
    cluster.nodes[leader].kill()
    new = await asyncio.to_thread(cluster.wait_leader, START_ELECTION + 3 * HEARTBEAT_TIMEOUT, other_than=leader)
    survivor = next(i for i in range(3) if i not in (leader, new))
    client = await sdk(cluster.address(new))
    deadline = time.monotonic() + SERVED
    for topic, p in parts:
        while True:
            try:
                await client.send_messages("many", topic, p, batch(f"{topic}{p}-after", n=1, size=10))
                break
            except RuntimeError:
                assert time.monotonic() < deadline, f"partition {topic}/{p} not served within {SERVED} s"
                await asyncio.sleep(0.2)
    for topic, p in parts:
        polled = await sdk_poll(client, "many", topic, PollingStrategy.First(), count=100, partition=p)
        assert [m.payload() for m in polled] == [f"{topic}{p}-{i}-".encode() + b"x" * 10 for i in range(2)] + [
            f"{topic}{p}-after-0-".encode() + b"x" * 10
        ]
    assert f"replication: {len(parts)} partitions reconciled and ready in" in cluster.nodes[new].log()
    new_epochs = epoch_records(new)
    new_epoch = new_epochs[0][-1][0]
    assert new_epoch > old_epoch
    assert new_epochs == [[(old_epoch, 0), (new_epoch, 2)]] * len(parts)
    await asyncio.to_thread(
        wait_for, lambda: epoch_records(survivor) == new_epochs, REPLICATED, "the follower's records"
    )
