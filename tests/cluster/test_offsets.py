"""Stored consumer offsets through etcd (docs/CLUSTER.md, "Consumer offsets through etcd"), with a
real etcd and three nodes on loopback:

- offsets stored on the leader (an explicit store, an auto-commit poll, a consumer group's store)
  are on the new leader after a SIGKILL of the old one: GET_CONSUMER_OFFSET answers them and a
  `next` poll continues after them; a deleted offset stays deleted;
- a leader paused (SIGSTOP) until another was elected refuses an offset store after it resumes
  (58), and the offset is neither in etcd nor on the new leader;
- deleting an offset, a consumer group, a partition or a stream deletes its keys in etcd;
- without a server process (iggy.cluster.offsets.OffsetLog against etcd): a deposed leader's
  write is refused by etcd's transaction although it still believes it leads, and so is a write
  of a leader that has not applied a `meta/` record that exists; a new leader's load leaves each
  partition's store holding exactly what etcd holds and deletes the keys of a stream or group
  that no longer exists.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from types import SimpleNamespace

import aetcd
import psutil
import pytest
from apache_iggy import SendMessage

from iggy.cluster.election import Election
from iggy.cluster.etcd import Etcd
from iggy.cluster.metalog import NotAccepted, meta_key
from iggy.cluster.offsets import OffsetLog
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode
from iggy.storage.consumer_offsets import OffsetStore
from tests.cluster.nodes import HEARTBEAT_TIMEOUT, START_ELECTION, TestCluster, first_one_leads, sdk, wait_for
from tests.rawclient import RawClient, consumer_target, ident, poll_body, sdk_request, store_offset_body

pytestmark = pytest.mark.engine

PREFIX = b"/iggy/test-cluster/offsets/"
IN_ETCD = 15.0  # seconds for an auto-committed offset to reach etcd on a loaded machine


async def etcd_offsets(url: str) -> dict[str, int]:
    """{"<stream>/<topic>/<partition>/<kind>/<key>": offset} of every key under offsets/."""
    host, port = url.removeprefix("http://").split(":")
    async with aetcd.Client(host=host, port=int(port), timeout=5) as client:
        kvs = await client.get_prefix(PREFIX)
        return {kv.key[len(PREFIX) :].decode(): int(kv.value) for kv in kvs}


def offsets_in_etcd(url: str) -> dict[str, int]:
    return asyncio.run(etcd_offsets(url))


def wait_in_etcd(url: str, check, what: str) -> None:
    found: dict[str, int] = {}

    def holds() -> bool:
        nonlocal found
        found = offsets_in_etcd(url)
        return check(found)

    try:
        wait_for(holds, IN_ETCD, f"etcd holds {what}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it holds {found}") from None


def stored(raw: RawClient, stream, topic, partition: int, consumer, kind: int = 1) -> int | None:
    """GET_CONSUMER_OFFSET: the stored offset, None when there is none."""
    reply = raw.read(codes.GET_CONSUMER_OFFSET, consumer_target(stream, topic, partition, consumer, kind))
    assert reply.status == 0, reply
    if not reply.body:
        return None
    return struct.unpack_from("<Q", reply.body, 12)[0]


def poll_offsets(raw: RawClient, stream, topic, partition: int, *, consumer, kind=1, strategy=5, count=3, commit=False):
    """POLL_MESSAGES: the offsets of the messages served."""
    reply = raw.read(
        codes.POLL_MESSAGES,
        poll_body(
            stream, topic, partition, strategy=strategy, count=count, auto_commit=commit, consumer=consumer, kind=kind
        ),
    )
    assert reply.status == 0, reply
    data = reply.body[16:]  # after u32 partition, u64 current offset, u32 count
    offsets: list[int] = []
    pos = 0
    while pos < len(data):
        # a batch (iggy.protocol.batch): base offset at 8, length at 32 of its 256-byte header,
        # then frames of 48 bytes + payload + user headers with their offset delta at 24
        (base,) = struct.unpack_from("<Q", data, pos + 8)
        (length,) = struct.unpack_from("<Q", data, pos + 32)
        frame = pos + 256
        while frame < pos + length:
            delta, headers, payload = struct.unpack_from("<I4xII", data, frame + 24)
            offsets.append(base + delta)
            frame += 48 + headers + payload
        pos += length
    return offsets


def raw_client(cluster: TestCluster, node: int) -> RawClient:
    raw = RawClient(cluster.address(node), timeout=30)
    assert raw.login().status == 0
    return raw


def serving(cluster: TestCluster, node: int, stream, topic) -> RawClient:
    """A client of a new leader once it serves (it reports itself leader as soon as it holds the
    leader key, and answers 58 until it has applied meta/ and loaded the offsets, and a poll of
    a partition until it has reconciled that partition with a follower's offer)."""
    raw = raw_client(cluster, node)
    target = consumer_target(stream, topic, 0, 1)

    def polls(partition: int) -> bool:  # by offset, no auto-commit: no stored offset changes
        body = poll_body(stream, topic, partition, strategy=1, value=0, count=1, consumer=99)
        return raw.read(codes.POLL_MESSAGES, body).status != ErrorCode.TRANSIENT_NOT_ACCEPTED

    wait_for(
        lambda: (
            raw.read(codes.GET_CONSUMER_OFFSET, target).status != ErrorCode.TRANSIENT_NOT_ACCEPTED
            and polls(0)
            and polls(1)
        ),
        START_ELECTION,
        f"node {node} serves",
    )
    return raw


def join(raw: RawClient, stream, topic, group) -> None:
    assert raw.call(codes.OP_JOIN_CONSUMER_GROUP, body=ident(stream) + ident(topic) + ident(group)).code == 0


async def test_stored_offsets_survive_a_sigkill_of_the_leader(cluster, etcd):
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    client = await sdk(cluster.address(leader))
    await client.create_stream("o")
    await client.create_topic("o", "t", 2)
    await client.create_consumer_group("o", "t", "g")
    for partition in (0, 1):
        await client.send_messages("o", "t", partition, [SendMessage(f"m{i}") for i in range(10)])
    raw = raw_client(cluster, leader)
    try:
        # consumer 1: an explicit store; consumer 2: auto-commit polls; consumer 3: stored, deleted
        assert raw.call(codes.OP_STORE_CONSUMER_OFFSET, body=store_offset_body("o", "t", 0, 4, consumer=1)).code == 0
        assert poll_offsets(raw, "o", "t", 1, consumer=2, commit=True) == [0, 1, 2]
        assert poll_offsets(raw, "o", "t", 1, consumer=2, commit=True) == [3, 4, 5]
        assert raw.call(codes.OP_STORE_CONSUMER_OFFSET, body=store_offset_body("o", "t", 0, 7, consumer=3)).code == 0
        delete = consumer_target("o", "t", 0, 3) + b"\x01"
        assert raw.call(codes.OP_DELETE_CONSUMER_OFFSET, body=delete).code == 0
        # the group: an auto-commit poll of partition 0, an explicit store of partition 1
        join(raw, "o", "t", "g")
        assert poll_offsets(raw, "o", "t", 0, consumer="g", kind=2, count=2, commit=True) == [0, 1]
        assert raw.call(codes.OP_STORE_CONSUMER_OFFSET, body=store_offset_body("o", "t", 1, 8, "g", 2)).code == 0
    finally:
        raw.close()
    # the auto-commits are written behind the replies: wait until etcd holds them
    expected = {"0/0/0/consumers/1": 4, "0/0/1/consumers/2": 5, "0/0/0/groups/0": 1, "0/0/1/groups/0": 8}
    await asyncio.to_thread(wait_in_etcd, etcd.url, lambda found: found == expected, f"{expected}")

    cluster.nodes[leader].kill()
    others = [i for i in range(3) if i != leader]
    new_leader = await asyncio.to_thread(cluster.wait_leader, 4 * HEARTBEAT_TIMEOUT, others, leader)
    raw = await asyncio.to_thread(serving, cluster, new_leader, "o", "t")
    try:
        assert stored(raw, "o", "t", 0, 1) == 4
        assert stored(raw, "o", "t", 1, 2) == 5
        assert stored(raw, "o", "t", 0, 3) is None  # deleted before the failover
        assert stored(raw, "o", "t", 0, "g", kind=2) == 1
        assert stored(raw, "o", "t", 1, "g", kind=2) == 8
        assert poll_offsets(raw, "o", "t", 0, consumer=1, commit=True) == [5, 6, 7]
        assert poll_offsets(raw, "o", "t", 1, consumer=2) == [6, 7, 8]
        join(raw, "o", "t", "g")
        assert poll_offsets(raw, "o", "t", 0, consumer="g", kind=2, count=10) == list(range(2, 10))
        assert poll_offsets(raw, "o", "t", 1, consumer="g", kind=2, count=10) == [9]
    finally:
        raw.close()
    # the new leader writes to etcd in its turn
    await asyncio.to_thread(
        wait_in_etcd, etcd.url, lambda found: found.get("0/0/0/consumers/1") == 7, "the new leader's commit"
    )


async def test_a_deposed_leader_refuses_an_offset_store(cluster, etcd):
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    client = await sdk(cluster.address(leader))
    await client.create_stream("f")
    await client.create_topic("f", "t", 1)
    await client.send_messages("f", "t", 0, [SendMessage(f"m{i}") for i in range(5)])
    new_leader, reply = await asyncio.to_thread(store_while_deposed, cluster, leader)
    assert reply.code == ErrorCode.TRANSIENT_NOT_ACCEPTED, reply
    assert await etcd_offsets(etcd.url) == {"0/0/0/consumers/1": 1}
    raw = await asyncio.to_thread(serving, cluster, new_leader, "f", "t")
    try:
        assert stored(raw, "f", "t", 0, 1) == 1
    finally:
        raw.close()


def store_while_deposed(cluster: TestCluster, leader: int):
    """Store offset 1, pause the leader until another node leads, send a store of offset 3 to
    it, resume it: (the new leader, the reply to that store)."""
    raw = raw_client(cluster, leader)
    try:
        assert raw.call(codes.OP_STORE_CONSUMER_OFFSET, body=store_offset_body("f", "t", 0, 1)).code == 0
        process = psutil.Process(cluster.nodes[leader].pid)
        process.suspend()
        try:
            others = [i for i in range(3) if i != leader]
            new_leader = cluster.wait_leader(4 * HEARTBEAT_TIMEOUT, others, leader)
            # read first when it resumes, while it still believes it leads (as in test_metadata)
            raw.request += 1
            body = store_offset_body("f", "t", 0, 3)
            raw.send_raw(sdk_request(codes.OP_STORE_CONSUMER_OFFSET, 0, body, raw.session, raw.request, raw.client))
        finally:
            process.resume()
        return new_leader, raw.read_reply()
    finally:
        raw.close()


async def test_deletes_remove_the_keys_in_etcd(cluster, etcd):
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    client = await sdk(cluster.address(leader))
    for stream in ("a", "b"):
        await client.create_stream(stream)
        await client.create_topic(stream, "t", 3)
        await client.create_consumer_group(stream, "t", "g")
        for partition in range(3):
            await client.send_messages(stream, "t", partition, [SendMessage("x")])
    raw = raw_client(cluster, leader)
    try:
        join(raw, "a", "t", "g")
        join(raw, "b", "t", "g")
        for stream in ("a", "b"):
            for partition in range(3):
                for consumer, kind in ((1, 1), (2, 1), ("g", 2)):
                    body = store_offset_body(stream, "t", partition, 0, consumer, kind)
                    assert raw.call(codes.OP_STORE_CONSUMER_OFFSET, body=body).code == 0
        before = await etcd_offsets(etcd.url)
        assert len(before) == 18, before
        assert raw.call(codes.OP_DELETE_CONSUMER_OFFSET, body=consumer_target("a", "t", 0, 2) + b"\x01").code == 0
    finally:
        raw.close()
    await client.delete_consumer_group("a", "t", "g")
    await client.delete_partitions("a", "t", 1)  # the last one, 2
    await client.delete_stream("b")
    assert sorted(await etcd_offsets(etcd.url)) == [
        "0/0/0/consumers/1",
        "0/0/1/consumers/1",
        "0/0/1/consumers/2",
    ]


class Leader:
    """An election and an OffsetLog of a node with the partitions `partitions` of stream 0,
    topic 0 ({id: its OffsetStore}) and no groups."""

    def __init__(self, url: str, replica_id: int, partitions: dict | None = None):
        self.etcd = Etcd([url], 2.0)
        self.election = Election(self.etcd, "/iggy/test-cluster/", replica_id, f"n{replica_id}", 2.0)
        self.lost = 0
        partitions = partitions or {}
        topic = SimpleNamespace(partitions=dict.fromkeys(partitions), groups={})
        plane = SimpleNamespace(
            meta=SimpleNamespace(
                state=SimpleNamespace(cluster_index=0, streams={0: SimpleNamespace(topics={0: topic})})
            ),
            storage=SimpleNamespace(
                partitions={
                    (0, 0, pid): SimpleNamespace(
                        lock=threading.Lock(), log=SimpleNamespace(closed=False), offsets=store
                    )
                    for pid, store in partitions.items()
                }
            ),
        )
        self.offsets = OffsetLog(
            Etcd([url], 2.0),
            "/iggy/test-cluster/",
            plane,  # type: ignore[arg-type]
            epoch=lambda: self.election.epoch if self.election.is_leader() else 0,
            writer=lambda: None,
            lost=self.lose,
        )

    def lose(self) -> None:
        self.lost += 1

    async def store(self, offset: int) -> None:
        waiter = self.offsets.stored((0, 0, 0, "consumers", 7), offset, wait=True)
        assert waiter is not None
        await waiter

    async def close(self) -> None:
        await self.offsets.close()
        await self.election.resign()
        await self.etcd.close()


async def test_a_deposed_leaders_write_is_refused_by_etcd(etcd):
    a, b = Leader(etcd.url, 0), Leader(etcd.url, 1)
    try:
        await first_one_leads(a, b)
        await a.store(5)
        assert await etcd_offsets(etcd.url) == {"0/0/0/consumers/7": 5}
        # a loses its lease (as when paused past its TTL) and b wins; a is not told
        await a.etcd.call(lambda c: a.election.lease.revoke())
        await b.election.round()
        assert b.election.is_leader() and a.election.is_leader()
        with pytest.raises(NotAccepted) as refused:
            await a.store(9)
        assert refused.value.code == ErrorCode.TRANSIENT_NOT_ACCEPTED
        assert a.lost == 1
        assert await etcd_offsets(etcd.url) == {"0/0/0/consumers/7": 5}
        # b loads what etcd holds and writes in its epoch
        await b.offsets.load(b.election.epoch)
        await b.store(6)
        assert await etcd_offsets(etcd.url) == {"0/0/0/consumers/7": 6}
        # a meta/ record b has not applied (its index says 0): b's write waits for its catch-up
        await b.etcd.call(lambda c: c.put(meta_key(b"/iggy/test-cluster/", 1), b"x"))
        with pytest.raises(NotAccepted):
            await b.store(8)
        assert b.lost == 1
        assert await etcd_offsets(etcd.url) == {"0/0/0/consumers/7": 6}
    finally:
        await a.close()
        await b.close()


async def test_a_new_leaders_load_makes_its_stores_equal_to_etcd(etcd, tmp_path):
    store = OffsetStore(str(tmp_path))
    store.store("consumers", 7, 2)  # older than etcd's
    store.store("consumers", 9, 1)  # from an earlier term of this node: etcd has none
    node = Leader(etcd.url, 0, {0: store})
    try:
        await node.election.round()
        assert node.election.is_leader()
        stale = ("0/0/0/groups/3", "4/0/0/consumers/1", "0/0/5/consumers/1")  # no such group, stream, partition
        for key, value in (("0/0/0/consumers/7", 5), ("0/0/0/consumers/8", 0), *((k, 1) for k in stale)):
            await node.etcd.call(lambda c, k=key, v=value: c.put(PREFIX + k.encode(), str(v).encode()))
        await node.offsets.load(node.election.epoch)
        assert store.offsets == {("consumers", 7): 5, ("consumers", 8): 0}
        assert await etcd_offsets(etcd.url) == {"0/0/0/consumers/7": 5, "0/0/0/consumers/8": 0}
    finally:
        await node.close()
        store.close()
