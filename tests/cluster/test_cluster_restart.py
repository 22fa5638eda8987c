"""A full restart of a 3-node cluster (every node SIGKILLed, then every node started again) with a
real etcd (docs/CLUSTER.md): the streams, topics, consumer groups and users, every acknowledged
message and every stored consumer offset are there afterwards, served by the leader elected
after the restart.
"""

from __future__ import annotations

import asyncio

import pytest

from iggy.protocol import codes
from tests.cluster.nodes import HEARTBEAT_TIMEOUT, START_ELECTION, sdk
from tests.cluster.test_log_replication import REPLICATED, Producer, topic_on_the_leader
from tests.cluster.test_metadata import wait_leader_key_gone
from tests.cluster.test_offsets import join, poll_offsets, raw_client, serving, stored
from tests.rawclient import store_offset_body

pytestmark = pytest.mark.engine


async def test_a_full_restart_keeps_metadata_acknowledged_messages_and_stored_offsets(cluster, etcd):
    leader, client = await topic_on_the_leader(cluster, "full")
    await client.create_consumer_group("full", "t", "g")
    await client.create_user("alice", "alice-secret")
    producer = Producer(client, "full")
    await producer.send_until_acked(30, REPLICATED)
    raw = raw_client(cluster, leader)
    try:
        # answered once etcd holds them (an explicit store, not an auto-commit)
        assert raw.call(codes.OP_STORE_CONSUMER_OFFSET, body=store_offset_body("full", "t", 0, 123)).code == 0
        join(raw, "full", "t", "g")
        assert raw.call(codes.OP_STORE_CONSUMER_OFFSET, body=store_offset_body("full", "t", 0, 77, "g", 2)).code == 0
    finally:
        raw.close()

    for node in cluster.nodes:
        node.kill()
    # until the killed leader's lease is gone: before that, the restarted nodes read its key and
    # report it as leader (it may be the same replica id as the next leader, or not)
    await wait_leader_key_gone(etcd.url)
    for node in cluster.nodes:
        node.start()

    new_leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION + 3 * HEARTBEAT_TIMEOUT)
    raw = await asyncio.to_thread(serving, cluster, new_leader, "full", "t")
    try:
        assert stored(raw, "full", "t", 0, 1) == 123
        assert stored(raw, "full", "t", 0, "g", kind=2) == 77
        assert poll_offsets(raw, "full", "t", 0, consumer=1) == [124, 125, 126]
    finally:
        raw.close()
    reader = await sdk(cluster.address(new_leader))
    assert [s.name for s in await reader.get_streams()] == ["full"]
    topic = await reader.get_topic("full", "t")
    assert topic is not None and topic.partitions_count == 1
    assert (await reader.get_consumer_group("full", "t", "g")) is not None
    assert (await reader.get_user("alice")) is not None
    await sdk(cluster.address(new_leader), "alice", "alice-secret")  # the password too
    await producer.check(reader)
    # and the cluster takes writes again
    producer.client = reader
    await producer.send_until_acked(5, REPLICATED)
    await producer.check(reader)
