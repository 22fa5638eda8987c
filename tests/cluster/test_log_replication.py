"""Messages replicated to every node (docs/CLUSTER.md, "Replicating the log"), with etcd and three
server processes on loopback.

- batches sent through the official SDK to the leader end up in every node's partition files,
  byte for byte the leader's;
- the leader's polls serve nothing above the high-watermark: with both followers paused a batch
  is appended on the leader but neither acknowledged nor served; once they resume it is both;
- SIGKILL of the leader while a producer runs on a `replicated` topic: every batch the leader
  acknowledged is on the new leader exactly once and in order (the producer never retries a
  batch, so a message that appears twice would be the server's doing).
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import psutil
import pytest
from apache_iggy import PollingStrategy, SendMessage

from tests.cluster.nodes import HEARTBEAT_TIMEOUT, START_ELECTION, TestCluster, sdk, wait_for
from tests.conftest import sdk_poll

pytestmark = pytest.mark.engine

REPLICATED = 10.0  # seconds for a batch to reach every follower on a loaded 2-core machine


def partition_files(cluster: TestCluster, node: int) -> dict:
    """{file name: bytes} of the segment files of the one partition the test created on `node`."""
    directories = list(Path(cluster.nodes[node].data_dir).glob("streams/*/topics/*/partitions/*"))
    assert len(directories) <= 1, directories
    if not directories:
        return {}
    return {p.name: p.read_bytes() for p in sorted(directories[0].iterdir()) if p.suffix in (".log", ".index")}


async def topic_on_the_leader(cluster: TestCluster, stream: str, via_follower: bool = False):
    """(leader index, an SDK client) once stream/t with one partition exists; the client was
    created with a follower's address when `via_follower` (it moved to the leader itself)."""
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    client = await sdk(cluster.address((leader + 1) % 3 if via_follower else leader))
    await client.create_stream(stream)
    await client.create_topic(stream, "t", 1)
    return leader, client


def log_bytes(files: dict) -> bytes:
    return b"".join(v for k, v in sorted(files.items()) if k.endswith(".log"))


async def test_batches_sent_to_the_leader_are_on_every_node_byte_for_byte(cluster):
    leader, client = await topic_on_the_leader(cluster, "r")
    for b in range(20):
        await client.send_messages("r", "t", 0, [SendMessage(f"b{b}-m{i}-" + "x" * (b * 13)) for i in range(1 + b % 7)])
    expected = sum(1 + b % 7 for b in range(20))
    polled = await sdk_poll(client, "r", "t", PollingStrategy.First(), count=1000)
    assert len(polled) == expected  # all committed: the leader serves them all
    leader_files = partition_files(cluster, leader)
    assert leader_files and log_bytes(leader_files)
    for f in (i for i in range(3) if i != leader):
        await asyncio.to_thread(
            wait_for,
            lambda f=f: log_bytes(partition_files(cluster, f)) == log_bytes(leader_files),
            REPLICATED,
            f"node {f}'s log equals the leader's",
        )
        # the index too (a follower writes the same 24-byte entries for the same batches)
        assert partition_files(cluster, f) == leader_files


async def test_a_batch_no_majority_holds_is_neither_acknowledged_nor_served(cluster):
    leader, client = await topic_on_the_leader(cluster, "hw")
    await client.send_messages("hw", "t", 0, [SendMessage("before")])
    followers = [psutil.Process(cluster.nodes[i].pid) for i in range(3) if i != leader]
    for p in followers:
        p.suspend()
    try:
        pending = asyncio.ensure_future(client.send_messages("hw", "t", 0, [SendMessage("held")]))
        await asyncio.sleep(1.0)
        assert not pending.done()  # not acknowledged: only the leader holds it
        # appended on the leader, but a poll (another client) does not see it
        reader = await sdk(cluster.address(leader))
        polled = await sdk_poll(reader, "hw", "t", PollingStrategy.First(), count=100)
        assert [m.payload() for m in polled] == [b"before"]
    finally:
        for p in followers:
            p.resume()
    await asyncio.wait_for(pending, 30)
    polled = await sdk_poll(reader, "hw", "t", PollingStrategy.First(), count=100)
    assert [m.payload() for m in polled] == [b"before", b"held"]


def sequences(payloads: list[bytes]) -> list[int]:
    return [struct.unpack_from("<Q", p)[0] for p in payloads]


async def test_sigkill_of_the_leader_during_a_producer_loses_no_acknowledged_batch(cluster):
    # created on a follower's address: after the kill the SDK reconnects there and moves on
    leader, client = await topic_on_the_leader(cluster, "k", via_follower=True)
    acked: list[int] = []
    failed: list[int] = []
    seq = 0
    killed = False
    deadline = time.monotonic() + 3 * HEARTBEAT_TIMEOUT + 30
    while time.monotonic() < deadline:
        batch = [SendMessage(struct.pack("<Q", seq * 10 + i) + b"payload") for i in range(10)]
        try:
            await asyncio.wait_for(client.send_messages("k", "t", 0, batch), 15)
            acked.append(seq)
        except (RuntimeError, TimeoutError):
            failed.append(seq)  # never retried: its messages may or may not be in the log
            await asyncio.sleep(0.1)
        seq += 1
        if not killed and len(acked) == 30:
            cluster.nodes[leader].kill()
            killed = True
        if killed and len(acked) >= 60:
            break
    assert killed and len(acked) >= 60, (len(acked), len(failed))
    others = [i for i in range(3) if i != leader]
    new_leader = await asyncio.to_thread(cluster.wait_leader, 3 * HEARTBEAT_TIMEOUT, others, leader)
    reader = await sdk(cluster.address(new_leader))
    polled = await sdk_poll(reader, "k", "t", PollingStrategy.First(), count=100_000)
    found = sequences([m.payload() for m in polled])
    assert found == sorted(set(found)), "a message twice or out of order"
    have = set(found)
    missing = [s for s in acked if any(s * 10 + i not in have for i in range(10))]
    assert missing == [], f"acknowledged batches lost: {missing[:10]}"
    # a batch is whole or absent, never cut
    assert all(all(s * 10 + i in have for i in range(10)) for s in {v // 10 for v in found})
