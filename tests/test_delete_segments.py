"""DELETE_SEGMENTS (code 503, op 138) over raw frames: the oldest sealed segments go, the
active one stays, and polls then start at the oldest retained message."""

import struct

from iggy.protocol.batch import build_batch, iter_messages
from tests.rawclient import ident, topic_option, wire_name

MiB = 1024 * 1024


def _partition_segments(raw, stream, topic):
    body = raw.read(300, ident(stream) + ident(topic)).body
    # TopicHeader: skip fixed 49 bytes, name, then two u32-prefixed option blocks
    pos = 49
    pos += 1 + body[pos]
    for _ in range(2):
        pos += 4 + struct.unpack_from("<I", body, pos)[0]
    return struct.unpack_from("<I", body, pos + 12)[0]  # first partition's segments_count


def test_delete_segments_removes_the_oldest_sealed_ones(raw):
    assert raw.login().status == 0
    assert raw.call(128, 0, wire_name("seg")).code == 0
    topic = (
        ident("seg") + struct.pack("<I", 1) + wire_name("t") + topic_option("segment_size", 12, struct.pack("<Q", MiB))
    )
    assert raw.call(132, 0, topic).code == 0
    batch = build_batch([(i + 1, b"p" * 1000, b"") for i in range(1100)])  # > 1 MiB: seals a segment each
    meta = ident("seg") + ident("t") + b"\x02\x04" + struct.pack("<I", 0) + struct.pack("<I", 1100)
    for _ in range(3):
        assert raw.call(160, 0, struct.pack("<I", len(meta)) + meta + batch).status == 0
    assert _partition_segments(raw, "seg", "t") == 4  # 3 sealed + the active one
    reply = raw.call(138, 0, ident("seg") + ident("t") + struct.pack("<II", 0, 2))
    assert reply.status == 0
    assert _partition_segments(raw, "seg", "t") == 2
    poll = b"\x01\x01\x04" + struct.pack("<I", 1) + ident("seg") + ident("t") + b"\x01" + struct.pack("<I", 0)
    poll += b"\x03" + struct.pack("<Q", 0) + struct.pack("<I", 5) + b"\x00"  # strategy First
    body = raw.read(100, poll).body
    assert [m["offset"] for m in iter_messages(body[16:])] == [2200, 2201, 2202, 2203, 2204]
    # the active segment is never deleted, and a missing partition is refused
    assert raw.call(138, 0, ident("seg") + ident("t") + struct.pack("<II", 0, 10)).status == 0
    assert _partition_segments(raw, "seg", "t") == 1
    assert raw.call(138, 0, ident("seg") + ident("t") + struct.pack("<II", 7, 1)).status == 3007
