"""A follower's appends (PartitionLog.append_stored, iggy.cluster.follower_log) on real storage in a temp dir.

The "leader" is a PartitionLog appending client batches as the send path does (with `head_out`,
the header as stored); its stored batches go to a follower Partition through FollowerLog, and:
the follower's segment files are the leader's byte for byte; a batch that does not start at
the follower's end (gap or overlap), a damaged one, one of another partition: refused with a
clear code, nothing written, the ack says where the log really ends; `persisted` acks fsynced.
"""

from __future__ import annotations

import os

import pytest

from iggy.cluster.follower_log import FollowerLog
from iggy.cluster.replica_frames import LinkError
from iggy.protocol.batch import build_batch
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.storage.log import PartitionLog
from iggy.storage.partitions import Partition

KEY = (1, 1, 1)


def settings(durability: str = "replicated", segment_size: int = 1 << 20) -> dict:
    return {
        "segment_size": segment_size,
        "preallocate_segments": False,
        "consumer_offset_durability": "replicated",
        "durability": durability,
        "enforce_fsync": False,
    }


class Leader:
    """A leader's log: append client batches, keep what it stored (header as stored + frames)."""

    def __init__(self, directory: str, segment_size: int = 1 << 20):
        self.log = PartitionLog(directory, 1, segment_size)
        self.stored: list[bytes] = []

    def send(self, n: int, now_us: int = 1_000_000) -> bytes:
        batch = build_batch([(i + 1, b"m%d" % i * 50, b"") for i in range(n)])
        head = bytearray(256)
        self.log.append(batch, 0, len(batch), now_us, head_out=head)
        self.stored.append(bytes(head) + batch[256:])
        return self.stored[-1]


def segment_bytes(directory: str) -> dict[str, bytes]:
    return {
        name: open(os.path.join(directory, name), "rb").read()
        for name in sorted(os.listdir(directory))
        if name.endswith((".log", ".index"))
    }


@pytest.fixture
def pair(tmp_path):
    leader = Leader(str(tmp_path / "leader"))
    follower = Partition(str(tmp_path / "follower"), 1, settings(), True)
    sink = FollowerLog(lambda s, t, p: follower if (s, t, p) == KEY else None)
    yield leader, follower, sink
    leader.log.close()
    follower.close()


def test_head_out_is_the_header_as_stored(tmp_path):
    leader = Leader(str(tmp_path / "leader"))
    for n in (3, 1, 5):
        leader.send(n)
    data, count = leader.log.read(0, 9)
    assert count == 9 and data == b"".join(leader.stored)
    leader.log.close()


def test_batches_in_order_make_the_same_files(pair, tmp_path):
    leader, follower, sink = pair
    for n in (3, 1, 5, 2):
        leader.send(n)
    sink.batches(KEY, 4, [memoryview(b) for b in leader.stored[:2]])
    assert sink.acks() == [(KEY, 4, 0, 0)]
    sink.batches(KEY, 9, [memoryview(leader.stored[2])])
    sink.batches(KEY, 9, [memoryview(leader.stored[3])])
    assert sink.acks() == [(KEY, 11, 0, 0)]
    assert sink.visible_end(KEY) == 9
    leader.log.fsync()
    follower.log.fsync()
    assert segment_bytes(str(tmp_path / "follower")) == segment_bytes(str(tmp_path / "leader"))
    assert follower.log.read(0, 100) == leader.log.read(0, 100)
    # the follower's own next append (were it to lead) goes on after the leader's timestamps
    nxt = build_batch([(99, b"x", b"")])
    follower.log.append(nxt, 0, len(nxt), 1)
    assert follower.log.next_offset == 12


@pytest.mark.parametrize(("which", "end"), [(3, 4), (0, 4)])  # a gap (offset 6 after 4), an overlap (0 again)
def test_a_batch_not_at_the_end_is_refused(pair, which, end):
    leader, follower, sink = pair
    for n in (3, 1, 2, 2):
        leader.send(n)
    sink.batches(KEY, 0, [memoryview(b) for b in leader.stored[:2]])
    sink.acks()
    size = follower.log.size_bytes
    sink.batches(KEY, 0, [memoryview(leader.stored[which])])
    assert sink.acks() == [(KEY, end, 0, ErrorCode.INVALID_OFFSET)]
    assert follower.log.size_bytes == size and follower.log.next_offset == end
    with pytest.raises(IggyError, match="gap" if which == 3 else "overlap") as err:
        follower.log.append_stored(leader.stored[which], 0, len(leader.stored[which]))
    assert err.value.code == ErrorCode.INVALID_OFFSET


def test_after_a_refusal_the_rest_of_the_frame_is_not_written(pair):
    leader, follower, sink = pair
    for n in (3, 1, 2):
        leader.send(n)
    sink.batches(KEY, 0, [memoryview(leader.stored[1]), memoryview(leader.stored[2])])
    sink.batches(KEY, 0, [memoryview(leader.stored[0])])  # same read: the partition already refused
    assert sink.acks() == [(KEY, 0, 0, ErrorCode.INVALID_OFFSET)]
    assert follower.log.next_offset == 0


def test_damaged_or_misrouted_batches_are_refused(pair):
    leader, follower, sink = pair
    damaged = bytearray(leader.send(2))
    damaged[-1] ^= 1  # the last message's payload: its checksum no longer matches
    with pytest.raises(IggyError) as err:
        follower.log.append_stored(damaged, 0, len(damaged))
    assert err.value.code == ErrorCode.INVALID_MESSAGE_CHECKSUM
    other = bytearray(leader.stored[0])
    other[0] = 2  # partition id 2 in the header
    with pytest.raises(IggyError) as err:
        follower.log.append_stored(other, 0, len(other))
    assert err.value.code == ErrorCode.INVALID_COMMAND
    sink.batches(KEY, 0, [memoryview(damaged)])
    assert sink.acks() == [(KEY, 0, 0, ErrorCode.INVALID_MESSAGE_CHECKSUM)]
    assert follower.log.is_empty and follower.log.size_bytes == 0


def test_a_partition_this_node_lacks_is_answered_not_found(pair):
    leader, _, sink = pair
    sink.batches((1, 1, 2), 0, [memoryview(leader.send(1))])
    assert sink.acks() == [((1, 1, 2), 0, 0, ErrorCode.PARTITION_NOT_FOUND)]


def test_persisted_acks_are_fsynced_and_commits_only_grow(tmp_path):
    leader = Leader(str(tmp_path / "leader"))
    follower = Partition(str(tmp_path / "follower"), 1, settings("persisted"), True)
    sink = FollowerLog(lambda s, t, p: follower)
    sink.batches(KEY, 0, [memoryview(leader.send(3))])
    assert sink.acks() == [(KEY, 3, 3, 0)]
    sink.commit(KEY, 3)
    sink.commit(KEY, 1)  # an older frame's commit does not move it back
    assert sink.visible_end(KEY) == 3
    assert sink.acks() == [(KEY, 3, 3, 0)]  # a commit alone is acknowledged too (the leader's probe)
    leader.log.close()
    follower.close()


def test_epochs_offered_a_truncate_and_a_fetch(pair):
    leader, follower, sink = pair
    sink = FollowerLog(lambda s, t, p: follower if (s, t, p) == KEY else None, lambda: [KEY, (9, 9, 9)])
    stored = [leader.send(n) for n in (3, 2, 4)]
    sink.batches(KEY, 0, [memoryview(b) for b in stored], 7)  # appended in epoch 7: recorded
    assert sink.acks() == [(KEY, 9, 0, 0)]
    assert sink.start() == [(KEY, 9, [(7, 0)])]  # (9, 9, 9): no such partition here
    assert sink.fetch(KEY, 3, 9, 1 << 20) == b"".join(stored[1:])
    assert sink.fetch(KEY, 9, 12, 1 << 20) == b""
    sink.truncate(KEY, 3, 8)  # the leader of epoch 8: equal below 3
    assert sink.acks() == [(KEY, 3, 0, 0)]
    assert follower.log.next_offset == 3 and follower.epochs.records == [(7, 0), (8, 3)]
    sink.truncate(KEY, 50, 8)  # past its end: nothing to cut
    assert follower.log.next_offset == 3
    sink.truncate((9, 9, 9), 0, 8)
    assert sink.acks() == [(KEY, 3, 0, 0), ((9, 9, 9), 0, 0, ErrorCode.PARTITION_NOT_FOUND)]
    os.mkdir(follower.epochs.path + ".tmp")  # the epoch file cannot be written: no ACK, the link drops
    sink.truncate(KEY, 0, 9)  # cut now; its record is written with the ACKs of this read
    with pytest.raises(LinkError):
        sink.acks()
    assert follower.log.next_offset == 0 and follower.epochs.records == [(7, 0), (8, 3)]  # as on disk
    os.rmdir(follower.epochs.path + ".tmp")
    assert sink.start() == [(KEY, 0, [(7, 0), (8, 3)])]  # the next link starts over from there
    assert sink.acks() == []


def test_retain_drops_the_leaders_segments_and_a_copy_that_ends_below_starts_there(tmp_path):
    size = 4096
    leader = Leader(str(tmp_path / "leader"), size)
    copies = {name: Partition(str(tmp_path / name), 1, settings(segment_size=size), True) for name in ("f", "late")}
    sinks = {name: FollowerLog(lambda s, t, p, c=c: c if (s, t, p) == KEY else None) for name, c in copies.items()}
    try:
        for _ in range(40):
            sinks["f"].batches(KEY, 0, [memoryview(leader.send(5))])
        sinks["f"].acks()
        assert leader.log.segments_count > 4
        assert segment_bytes(str(tmp_path / "f")) == segment_bytes(str(tmp_path / "leader"))
        assert leader.log.delete_oldest_segments(3) == 3  # the leader's retention
        start = leader.log.first_offset
        assert start > 0
        sinks["f"].retain(KEY, start)
        assert sinks["f"].acks() == [(KEY, 200, 0, 0)]
        assert copies["f"].log.first_offset == start
        assert segment_bytes(str(tmp_path / "f")) == segment_bytes(str(tmp_path / "leader"))

        # an empty copy (a lost data directory, or one down while these were removed)
        late = sinks["late"]
        late.retain(KEY, start)
        assert late.acks() == [(KEY, start, start, 0)]  # it goes on from the leader's start
        assert copies["late"].epochs.records == []
        with pytest.raises(IggyError):  # nothing below it fits any more
            copies["late"].log.append_stored(leader.stored[0], 0, len(leader.stored[0]))
        late.batches(KEY, 0, [memoryview(b) for b in leader.stored[start // 5 :]], epoch=3)
        assert late.acks() == [(KEY, 200, start, 0)]  # synced: the empty start, durable
        assert copies["late"].epochs.records == [(3, start)]
        assert segment_bytes(str(tmp_path / "late")) == segment_bytes(str(tmp_path / "leader"))

        # a RETAIN below what it holds, or of a partition it lacks, changes nothing
        late.retain(KEY, 0)
        late.retain((9, 9, 9), 5)
        assert late.acks() == [(KEY, 200, start, 0), ((9, 9, 9), 0, 0, ErrorCode.PARTITION_NOT_FOUND)]
        assert segment_bytes(str(tmp_path / "late")) == segment_bytes(str(tmp_path / "leader"))
    finally:
        leader.log.close()
        for c in copies.values():
            c.close()
