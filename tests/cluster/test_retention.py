"""Segments the leader removes (DELETE_SEGMENTS here; a retention pass takes the same path) go on
every follower too (RETAIN on the replica link): etcd + 3 server nodes on loopback.

- followers that hold the partition remove the same segments: every node's files equal the
  leader's, the removed ones included;
- a follower down while the leader removed segments past the end of its copy starts again at
  the leader's oldest offset when it returns and catches up: the same files again.
"""

from __future__ import annotations

import struct

from iggy.protocol.batch import build_batch
from iggy.protocol.codes import OP_CREATE_STREAM, OP_CREATE_TOPIC, OP_DELETE_SEGMENTS, OP_SEND_MESSAGES
from tests.cluster.nodes import START_ELECTION, TestCluster, wait_for
from tests.cluster.test_log_replication import REPLICATED, partition_files
from tests.rawclient import RawClient, ident, topic_option, wire_name

MiB = 1024 * 1024
MESSAGES = 1100  # of 1000 bytes: each send seals a segment of 1 MiB


def send(raw: RawClient, count: int) -> None:
    batch = build_batch([(i + 1, b"r" * 1000, b"") for i in range(MESSAGES)])
    meta = ident("ret") + ident("t") + b"\x02\x04" + struct.pack("<I", 0) + struct.pack("<I", MESSAGES)
    for _ in range(count):
        reply = raw.call(OP_SEND_MESSAGES, 0, struct.pack("<I", len(meta)) + meta + batch)
        assert reply.status == 0, reply


def same_files_everywhere(cluster: TestCluster, leader: int) -> None:
    files = partition_files(cluster, leader)
    wait_for(
        lambda: all(partition_files(cluster, i) == files for i in range(3)),
        REPLICATED + START_ELECTION,
        "every node's partition files equal the leader's",
    )


def test_segments_removed_on_the_leader_go_on_every_follower(cluster):
    leader = cluster.wait_leader(START_ELECTION)
    raw = RawClient(cluster.address(leader))
    try:
        assert raw.login().status == 0
        assert raw.call(OP_CREATE_STREAM, 0, wire_name("ret")).code == 0
        body = ident("ret") + struct.pack("<I", 1) + wire_name("t")
        assert raw.call(OP_CREATE_TOPIC, 0, body + topic_option("segment_size", 12, struct.pack("<Q", MiB))).code == 0
        send(raw, 3)
        same_files_everywhere(cluster, leader)
        before = set(partition_files(cluster, leader))
        assert raw.call(OP_DELETE_SEGMENTS, 0, ident("ret") + ident("t") + struct.pack("<II", 0, 2)).status == 0
        after = set(partition_files(cluster, leader))
        assert len(after) == len(before) - 4  # two segments: their .log and .index
        same_files_everywhere(cluster, leader)

        follower = (leader + 1) % 3
        cluster.nodes[follower].kill()
        send(raw, 3)
        assert raw.call(OP_DELETE_SEGMENTS, 0, ident("ret") + ident("t") + struct.pack("<II", 0, 4)).status == 0
        oldest = min(partition_files(cluster, leader))
        assert oldest > max(partition_files(cluster, follower))  # past the end of the follower's copy
        cluster.nodes[follower].start()
        same_files_everywhere(cluster, leader)
        assert f"the leader keeps nothing below {int(oldest.split('.')[0])}" in cluster.nodes[follower].log()
    finally:
        raw.close()
