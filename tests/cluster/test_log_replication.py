"""Messages replicated to every node (docs/CLUSTER.md, "Replicating the log"), with etcd and three
server processes on loopback.

- batches sent through the official SDK to the leader end up in every node's partition files,
  byte for byte the leader's;
- the leader's polls serve nothing above the high-watermark: with both followers paused a batch
  is appended on the leader but neither acknowledged nor served (polls without auto-commit are
  served by the io_uring shards in C, bounded alike); once they resume it is both;
- SIGKILL of the leader while a producer runs, on a `replicated` and on a `persisted` topic: every
  batch the leader acknowledged is on the new leader exactly once and in order (the producer
  never retries a batch, so a message that appears twice would be the server's doing), and the
  new leader acknowledges batches within 3 x heartbeat_timeout of the kill;
- a follower down (SIGKILL, or SIGSTOP) while the two other nodes acknowledge 5,000 messages
  catches up once it is back: its partition files end up byte for byte the leader's;
- etcd unavailable (paused) while a producer sends: no batch sent after the leader's lease
  expired is acknowledged; once etcd is back a leader acknowledges batches again, and every batch
  acknowledged before, during and after is there exactly once and in order.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from pathlib import Path

import httpx
import psutil
import pytest
from apache_iggy import PollingStrategy, SendMessage

from iggy.protocol.codes import OP_CREATE_TOPIC, POLL_MESSAGES
from tests.cluster.nodes import HEARTBEAT_TIMEOUT, START_ELECTION, TestCluster, local_metadata, sdk, wait_for
from tests.conftest import sdk_poll
from tests.rawclient import RawClient, ident, poll_body, wire_name

pytestmark = pytest.mark.engine

REPLICATED = 10.0  # seconds for a batch to reach every follower on a loaded 2-core machine


def partition_files(cluster: TestCluster, node: int) -> dict:
    """{file name: bytes} of the segment files of the one partition the test created on `node`."""
    directories = list(Path(cluster.nodes[node].data_dir).glob("streams/*/topics/*/partitions/*"))
    assert len(directories) <= 1, directories
    if not directories:
        return {}
    return {p.name: p.read_bytes() for p in sorted(directories[0].iterdir()) if p.suffix in (".log", ".index")}


async def topic_on_the_leader(
    cluster: TestCluster, stream: str, via_follower: bool = False, durability: str = "replicated"
):
    """(leader index, an SDK client) once stream/t with one partition and message `durability`
    exists; the client was created with a follower's address when `via_follower` (it moved to the
    leader itself)."""
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    client = await sdk(cluster.address((leader + 1) % 3 if via_follower else leader))
    await client.create_stream(stream)
    if durability == "replicated":
        await client.create_topic(stream, "t", 1)
    else:  # the SDK sends no topic options: CREATE_TOPIC's options block (TLV entries) by hand
        raw = RawClient(cluster.address(leader))
        try:
            assert raw.login().status == 0
            options = b"".join(b"\x02" + struct.pack("<I", len(v)) + v for v in (b"durability", durability.encode()))
            reply = raw.call(OP_CREATE_TOPIC, body=ident(stream) + struct.pack("<I", 1) + wire_name("t") + options)
            assert reply.code == 0, reply
        finally:
            raw.close()

        def topic_settings():
            meta = local_metadata(cluster.nodes[leader]).stream_by_name(stream)
            topics = [t for t in meta.topics.values() if t.name == "t"] if meta else []
            return topics and topics[0].settings

        settings = await asyncio.to_thread(wait_for, topic_settings, REPLICATED, "the topic in the leader's journal")
        assert settings["durability"] == durability
    return leader, client


def native_requests(cluster: TestCluster, node: int) -> float:
    """Requests `node`'s io_uring shards served in C so far (GET /metrics)."""
    with httpx.Client(base_url=cluster.nodes[node].http_url, timeout=10) as http:
        token = http.post("/users/login", json={"username": "iggy", "password": "iggy"}).json()
        text = http.get("/metrics", headers={"Authorization": f"Bearer {token['access_token']['token']}"}).text
    for line in text.splitlines():
        if line.startswith("shard_requests_native "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no shard_requests_native in /metrics")


def raw_polls(cluster: TestCluster, node: int, stream: str, times: int) -> list[tuple[int, int]]:
    """(current offset, message count) of `times` polls of stream/t from offset 0 on `node`,
    without auto-commit, over one raw connection."""
    raw = RawClient(cluster.address(node))
    try:
        assert raw.login().status == 0
        out = []
        for _ in range(times):
            reply = raw.read(POLL_MESSAGES, poll_body(stream, "t", 0, strategy=1, value=0, count=100))
            assert reply.status == 0, reply
            _, current, count = struct.unpack_from("<IQI", reply.body)
            out.append((current, count))
        return out
    finally:
        raw.close()


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
        # polls without auto-commit, served by the leader's shards in C on the uring engine
        # (its native-request counter moves by at least one per poll), are bounded alike
        before = await asyncio.to_thread(native_requests, cluster, leader)
        assert await asyncio.to_thread(raw_polls, cluster, leader, "hw", 20) == [(0, 1)] * 20
        after = await asyncio.to_thread(native_requests, cluster, leader)
        if os.environ.get("IGGY_TEST_ENGINE", "uring") != "asyncio":  # no shards on asyncio
            assert after - before >= 20
    finally:
        for p in followers:
            p.resume()
    await asyncio.wait_for(pending, 30)
    polled = await sdk_poll(reader, "hw", "t", PollingStrategy.First(), count=100)
    assert [m.payload() for m in polled] == [b"before", b"held"]


def sequences(payloads: list[bytes]) -> list[int]:
    return [struct.unpack_from("<Q", p)[0] for p in payloads]


class Producer:
    """Batches of ten messages numbered by a u64 at the front of the payload, sent one after
    another; a batch that fails is never retried (its messages may or may not be in the log)."""

    def __init__(self, client, stream: str):
        self.client, self.stream = client, stream
        self.seq = 0
        self.acked: list[int] = []  # batch numbers
        self.acked_at: list[float] = []  # time.monotonic() of each ack
        self.failed: list[int] = []
        self.sent_at: dict[int, float] = {}

    async def send(self, timeout: float = 15) -> bool:
        seq, self.seq = self.seq, self.seq + 1
        batch = [SendMessage(struct.pack("<Q", seq * 10 + i) + b"payload") for i in range(10)]
        self.sent_at[seq] = time.monotonic()
        try:
            await asyncio.wait_for(self.client.send_messages(self.stream, "t", 0, batch), timeout)
        except (RuntimeError, TimeoutError):
            self.failed.append(seq)
            await asyncio.sleep(0.1)
            return False
        self.acked.append(seq)
        self.acked_at.append(time.monotonic())
        return True

    async def send_until_acked(self, count: int, timeout: float) -> None:
        """Until `count` more batches are acknowledged."""
        want = len(self.acked) + count
        deadline = time.monotonic() + timeout
        while len(self.acked) < want:
            assert time.monotonic() < deadline, f"{want - len(self.acked)} batches short after {timeout} s"
            await self.send()

    async def check(self, reader) -> None:
        """Every acknowledged batch is in the partition `reader` polls (retried while its node
        does not serve it yet), whole, once and in order."""
        deadline = time.monotonic() + REPLICATED + START_ELECTION
        while True:
            try:
                polled = await sdk_poll(reader, self.stream, "t", PollingStrategy.First(), count=100_000)
                break
            except RuntimeError:
                assert time.monotonic() < deadline, "the partition is not served"
                await asyncio.sleep(0.2)
        found = sequences([m.payload() for m in polled])
        assert found == sorted(set(found)), "a message twice or out of order"
        have = set(found)
        missing = [s for s in self.acked if any(s * 10 + i not in have for i in range(10))]
        assert missing == [], f"acknowledged batches lost: {missing[:10]}"
        # a batch is whole or absent, never cut
        assert all(all(s * 10 + i in have for i in range(10)) for s in {v // 10 for v in found})


@pytest.mark.parametrize("durability", ["replicated", "persisted"])
async def test_sigkill_of_the_leader_during_a_producer_loses_no_acknowledged_batch(cluster, durability):
    # created on a follower's address: after the kill the SDK reconnects there and moves on
    leader, client = await topic_on_the_leader(cluster, "k", via_follower=True, durability=durability)
    producer = Producer(client, "k")
    await producer.send_until_acked(30, REPLICATED)
    cluster.nodes[leader].kill()
    killed_at = time.monotonic()
    await producer.send_until_acked(30, 3 * HEARTBEAT_TIMEOUT + 30)
    # the first ack after the kill is the new leader's
    assert producer.acked_at[30] - killed_at < 3 * HEARTBEAT_TIMEOUT, producer.acked_at[30] - killed_at
    others = [i for i in range(3) if i != leader]
    new_leader = await asyncio.to_thread(cluster.wait_leader, 3 * HEARTBEAT_TIMEOUT, others, leader)
    await producer.check(await sdk(cluster.address(new_leader)))


@pytest.mark.parametrize("down", ["SIGKILL", "SIGSTOP"])
async def test_a_follower_down_during_5000_acknowledged_messages_catches_up_byte_for_byte(cluster, down):
    leader, client = await topic_on_the_leader(cluster, "c")
    follower = (leader + 1) % 3
    await client.send_messages("c", "t", 0, [SendMessage("first")])
    await asyncio.to_thread(
        wait_for, lambda: partition_files(cluster, follower), REPLICATED, "the follower has the partition"
    )
    if down == "SIGKILL":
        cluster.nodes[follower].kill()
    else:
        psutil.Process(cluster.nodes[follower].pid).suspend()
    try:
        for b in range(50):  # acknowledged by the leader and the other follower
            await client.send_messages("c", "t", 0, [SendMessage(f"m{b * 100 + i}-" + "y" * 100) for i in range(100)])
        assert log_bytes(partition_files(cluster, follower)) != log_bytes(partition_files(cluster, leader))
    finally:
        if down == "SIGKILL":
            cluster.nodes[follower].start()
        else:
            psutil.Process(cluster.nodes[follower].pid).resume()
    leader_files = partition_files(cluster, leader)
    await asyncio.to_thread(
        wait_for,
        lambda: all(partition_files(cluster, i) == leader_files for i in range(3)),
        REPLICATED + START_ELECTION,
        "every node's partition files equal the leader's",
    )
    polled = await sdk_poll(client, "c", "t", PollingStrategy.First(), count=10_000)
    assert len(polled) == 5001


async def test_etcd_unavailable_while_a_producer_sends_loses_no_acknowledged_batch(cluster, etcd):
    leader, client = await topic_on_the_leader(cluster, "e", via_follower=True)
    producer = Producer(client, "e")
    await producer.send_until_acked(20, REPLICATED)
    etcd.pause()  # every etcd call now hangs
    paused_at = time.monotonic()
    try:
        while time.monotonic() < paused_at + 2 * HEARTBEAT_TIMEOUT:
            await producer.send(timeout=HEARTBEAT_TIMEOUT)
    finally:
        etcd.resume()
    # the leader's lease (ttl = heartbeat_timeout) was last renewed before the pause: no batch
    # sent after it expired is acknowledged
    late = [s for s in producer.acked if producer.sent_at[s] > paused_at + HEARTBEAT_TIMEOUT]
    assert late == [], f"acknowledged without etcd: {late}"
    assert any(producer.sent_at[s] > paused_at + HEARTBEAT_TIMEOUT for s in producer.failed)  # it was tried
    new_leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION + 3 * HEARTBEAT_TIMEOUT)
    await producer.send_until_acked(20, START_ELECTION + 30)
    await producer.check(await sdk(cluster.address(new_leader)))
