"""Messages end to end with the official SDK (apache-iggy 0.9.0) against a real server.

Sending (confirmations, ids, timestamps, the three partitioning modes, user headers of every
kind), every polling strategy and its edges, consumer offsets (store/get/delete, auto-commit),
the high-level IggyProducer/IggyConsumer, several segments, purge, and partitions created or
deleted on a topic that holds data.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import os
import struct

import pytest
import xxhash
from apache_iggy import (
    AutoCommit,
    AutoCommitAfter,
    AutoCommitWhen,
    Consumer,
    HeaderKey,
    HeaderValue,
    Partitioning,
    PollingStrategy,
    SendMessage,
)

from iggy.protocol.batch import build_batch
from tests import conftest
from tests.conftest import connect_root, next_consumer
from tests.rawclient import ident

S, T = "s", "t"
MS = datetime.timedelta(milliseconds=1)


make_topic = functools.partial(conftest.make_topic, stream=S, topic=T)


async def poll(client, strategy, count=100, consumer=None, partition_id=0, auto_commit=False, stream=S, topic=T):
    return await client.poll_messages(
        stream,
        topic,
        consumer=consumer or Consumer.Single(1),
        polling_strategy=strategy,
        count=count,
        auto_commit=auto_commit,
        partition_id=partition_id,
    )


def offsets(messages):
    return [m.offset() for m in messages]


def payloads(messages):
    return [m.payload() for m in messages]


async def send_batches(client, sizes, partition=0, stream=S, topic=T, prefix="m"):
    """Send batches of the given sizes to one partition; payload '<prefix><n>' numbered per call."""
    confirmations, n = [], 0
    for size in sizes:
        r = await client.send_messages(stream, topic, partition, [SendMessage(f"{prefix}{n + i}") for i in range(size)])
        confirmations.append(r.confirmations)
        n += size
    return confirmations


def offset_request(consumer_kind: int, consumer_id, partition: int | None, stream=S, topic=T) -> bytes:
    return (
        bytes([consumer_kind])
        + ident(consumer_id)
        + ident(stream)
        + ident(topic)
        + (b"\x01" + struct.pack("<I", partition) if partition is not None else b"\x00" + bytes(4))
    )


async def get_offset(client, consumer_kind, consumer_id, partition=0, stream=S, topic=T):
    """GET_CONSUMER_OFFSET (code 120) through the SDK's raw request: (partition, current, stored) or None."""
    body = offset_request(consumer_kind, consumer_id, partition, stream, topic)
    raw = await client.send_binary_request(120, body)
    if not raw:
        return None
    assert len(raw) == 20
    return struct.unpack("<IQQ", raw)


async def store_single_offset(client, consumer_id, offset, partition=0, stream=S, topic=T):
    """STORE_CONSUMER_OFFSET (121 -> op 161) for a single consumer (the SDK has no call for it)."""
    body = offset_request(1, consumer_id, partition, stream, topic) + struct.pack("<Q", offset) + b"\x01"
    return await client.send_binary_request(121, body)


# ------------------------------------------------------------------------- sending


async def test_send_confirmations_ids_and_timestamps(client):
    await client.create_stream("first")  # so the ids under test are not all zero
    await make_topic(client, partitions=3)
    await client.create_topic(S, "t2", 1)
    before = await client.get_stream(S)
    r1 = await client.send_messages(S, "t2", 0, [SendMessage("x")])
    assert [(c.stream_id, c.topic_id, c.partition_id, c.base_offset) for c in r1.confirmations] == [
        (before.id, 1, 0, 0)
    ]
    confs = await send_batches(client, [3, 1, 4], partition=2)
    assert [[(c.stream_id, c.topic_id, c.partition_id, c.base_offset) for c in cs] for cs in confs] == [
        [(1, 0, 2, 0)],
        [(1, 0, 2, 3)],
        [(1, 0, 2, 4)],
    ]

    await client.send_messages(S, T, 2, [SendMessage("with-id", id=42), SendMessage(b"\x00\xffbin", id=2**128 - 1)])
    msgs = await poll(client, PollingStrategy.First(), partition_id=2)
    assert offsets(msgs) == list(range(10))
    assert payloads(msgs) == [f"m{i}".encode() for i in range(8)] + [b"with-id", b"\x00\xffbin"]
    assert msgs[8].id() == 42 and msgs[9].id() == 2**128 - 1
    assert all(m.id() != 0 for m in msgs) and len({m.id() for m in msgs[:8]}) == 8  # SDK-generated ids
    assert all(m.partition_id() == 2 for m in msgs)
    assert [m.length() for m in msgs[8:]] == [7, 5]
    # one server timestamp per batch, strictly increasing between batches
    stamps = [m.timestamp() for m in msgs]
    groups = [stamps[0:3], stamps[3:4], stamps[4:8], stamps[8:10]]
    assert all(len(set(g)) == 1 for g in groups)
    assert [g[0] for g in groups] == sorted({g[0] for g in groups})
    for m in msgs:
        assert abs(m.origin_timestamp() - m.timestamp()) < 60_000_000  # both µs since the epoch
    # the producer's message checksums are served verbatim (XXH3 of frame bytes 8..end)
    origin = min(m.origin_timestamp() for m in msgs[8:])
    for delta, m in enumerate(msgs[8:]):
        fields = struct.pack("<IIIIQ", delta, m.origin_timestamp() - origin, 0, len(m.payload()), 0)
        frame_tail = m.id().to_bytes(16, "little") + fields + m.payload()
        assert m.checksum() == xxhash.xxh3_64_intdigest(frame_tail)
    topic = await client.get_topic(S, T)
    assert [(p.id, p.messages_count, p.current_offset) for p in topic.partitions] == [(0, 0, 0), (1, 0, 0), (2, 10, 9)]
    assert topic.messages_count == 10 and (await client.get_stream(S)).messages_count == 11


async def test_send_to_missing_partition_or_topic_fails(client):
    await make_topic(client, partitions=2)
    with pytest.raises(RuntimeError):
        await client.send_messages(S, T, 2, [SendMessage("x")])
    with pytest.raises(RuntimeError):
        await client.send_messages(S, "nope", 0, [SendMessage("x")])
    assert (await client.get_topic(S, T)).messages_count == 0


# ------------------------------------------------------------------------- partitioning


async def test_balanced_partitioning_round_robin(client, server):
    await make_topic(client, partitions=3)
    seen = []
    for i in range(7):
        r = await client.send_messages(S, T, Partitioning.balanced(), [SendMessage(f"b{i}")])
        seen.append(r.confirmations[0].partition_id)
    assert seen == [0, 1, 2, 0, 1, 2, 0]
    other = await connect_root(server.tcp_address)  # the cursor is per client, from 0
    r = await other.send_messages(S, T, Partitioning.balanced(), [SendMessage("o0"), SendMessage("o1")])
    assert r.confirmations[0].partition_id == 0
    contents = [payloads(await poll(client, PollingStrategy.First(), partition_id=p)) for p in range(3)]
    assert contents == [[b"b0", b"b3", b"b6", b"o0", b"o1"], [b"b1", b"b4"], [b"b2", b"b5"]]


async def test_partition_id_partitioning(client):
    await make_topic(client, partitions=4)
    for p in (3, 1, 3):
        r = await client.send_messages(S, T, Partitioning.partition_id(p), [SendMessage(f"p{p}")])
        assert r.confirmations[0].partition_id == p
    await client.send_messages(S, T, 2, [SendMessage("int")])  # an int is partition_id(n)
    counts = [len(await poll(client, PollingStrategy.First(), partition_id=p)) for p in range(4)]
    assert counts == [0, 1, 1, 2]


async def test_messages_key_partitioning(client):
    await make_topic(client, partitions=3)
    keys = ["user-1", "user-2", "order-17", "a", "zz", "ключ"] + [f"k{i}" for i in range(12)]
    expected = {p: [] for p in range(3)}
    for key in [*keys, b"\x00bytes-key", b"\xff" * 255]:
        raw = key.encode() if isinstance(key, str) else key
        want = xxhash.xxh32_intdigest(raw) % 3
        r = await client.send_messages(S, T, Partitioning.messages_key(key), [SendMessage(raw)])
        assert r.confirmations[0].partition_id == want, key
        expected[want].append(raw)
    assert len({p for p in expected if expected[p]}) == 3  # all partitions were hit
    for p in range(3):
        assert payloads(await poll(client, PollingStrategy.First(), partition_id=p)) == expected[p]
    # the same key always lands on the same partition
    r = await client.send_messages(S, T, Partitioning.messages_key("user-1"), [SendMessage("again")])
    assert r.confirmations[0].partition_id == xxhash.xxh32_intdigest(b"user-1") % 3


def raw_send_body(stream, topic, kind: int, value: bytes, batch: bytes, count: int) -> bytes:
    meta = ident(stream) + ident(topic) + bytes([kind, len(value)]) + value + struct.pack("<I", count)
    return struct.pack("<I", len(meta)) + meta + batch


async def test_server_side_balanced_and_key_partitioning(server, client, raw):
    """Kinds 1 and 3 never come from the 0.9.0 SDK, but the server resolves them (SEMANTICS 4.3)."""
    await make_topic(client, partitions=3)
    raw.login()
    batch = build_batch([(1, b"x", b"")])
    got = []
    for _ in range(4):
        reply = raw.call(160, 0, raw_send_body(S, T, 1, b"", batch, 1))
        assert reply.status == 0
        got.append(struct.unpack("<IIIIQ", reply.body)[3])
    assert got == [0, 1, 2, 0]
    reply = raw.call(160, 0, raw_send_body(S, T, 3, b"order-17", batch, 1))
    assert struct.unpack("<IIIIQ", reply.body)[3] == xxhash.xxh32_intdigest(b"order-17") % 3
    # a corrupt batch is refused with its code and nothing is appended
    bad = bytearray(batch)
    bad[-1] ^= 1
    reply = raw.call(160, 0, raw_send_body(S, T, 2, struct.pack("<I", 0), bytes(bad), 1))
    assert reply.code == 4027
    reply = raw.call(160, 0, raw_send_body(S, T, 2, struct.pack("<I", 0), batch, 2))
    assert reply.code == 4009
    assert (await client.get_topic(S, T)).messages_count == 5


# ------------------------------------------------------------------------- headers


async def test_user_headers_of_every_kind_round_trip(client):
    await make_topic(client)
    plain = {
        "s": "text",
        "b": b"\x00\x01raw",
        "t": True,
        "f": False,
        "u8": 7,
        "u16": 300,
        "u32": 70_000,
        "u64": 2**40,
        "i8": -1,
        "i16": -300,
        "i32": -70_000,
        "i64": -(2**40),
        "f32": 1.5,
        "f64": 0.1,
    }
    typed = {
        HeaderKey.Raw(b"\x01key"): HeaderValue.Raw(b"\xff"),
        HeaderKey.Bool(True): HeaderValue.Bool(False),
        HeaderKey.Int8(-5): HeaderValue.Int8(-128),
        HeaderKey.Int16(-500): HeaderValue.Int16(32767),
        HeaderKey.Int32(5): HeaderValue.Int32(-(2**31)),
        HeaderKey.Int64(2**40): HeaderValue.Int64(2**63 - 1),
        HeaderKey.Int128(-(2**100)): HeaderValue.Int128(-(2**127)),
        HeaderKey.UnsignedInt8(1): HeaderValue.UnsignedInt8(255),
        HeaderKey.UnsignedInt16(2): HeaderValue.UnsignedInt16(65535),
        HeaderKey.UnsignedInt32(3): HeaderValue.UnsignedInt32(2**32 - 1),
        HeaderKey.UnsignedInt64(4): HeaderValue.UnsignedInt64(2**64 - 1),
        HeaderKey.UnsignedInt128(6): HeaderValue.UnsignedInt128(2**128 - 1),
        HeaderKey.Float32(0.5): HeaderValue.Float32(-2.25),
        HeaderKey.Float64(0.1): HeaderValue.Float64(1e300),
        HeaderKey.String("typed-str"): HeaderValue.String("ü" * 100),
        "u8-as-u64": HeaderValue.UnsignedInt64(7),
    }
    await client.send_messages(
        S,
        T,
        0,
        [SendMessage("plain", user_headers=plain), SendMessage("none"), SendMessage("typed", user_headers=typed)],
    )
    msgs = await poll(client, PollingStrategy.First())
    assert payloads(msgs) == [b"plain", b"none", b"typed"]
    assert msgs[1].user_headers() is None
    got = msgs[0].user_headers()
    assert got.to_scalar_dict() == plain
    kinds = {k.value: type(v).__name__ for k, v in got.items()}
    assert kinds == {
        "s": "String",
        "b": "Raw",
        "t": "Bool",
        "f": "Bool",
        "u8": "UnsignedInt8",
        "u16": "UnsignedInt16",
        "u32": "UnsignedInt32",
        "u64": "UnsignedInt64",
        "i8": "Int8",
        "i16": "Int16",
        "i32": "Int32",
        "i64": "Int64",
        "f32": "Float32",
        "f64": "Float64",
    }
    typed_back = msgs[2].user_headers()
    expected = {(HeaderKey.String(k) if isinstance(k, str) else k): v for k, v in typed.items()}
    assert dict(typed_back) == expected
    for k, v in typed_back.items():
        assert type(v) is type(expected[k]) and v.value == expected[k].value


# ------------------------------------------------------------------------- polling strategies


@pytest.fixture
async def filled(client):
    """Partition 0 with 4 batches: offsets 0..2, 3..7, 8, 9..12 (13 messages)."""
    await make_topic(client, partitions=2)
    await send_batches(client, [3, 5, 1, 4])
    return client


async def test_poll_offset(filled):
    c = filled
    assert offsets(await poll(c, PollingStrategy.Offset(0))) == list(range(13))
    assert offsets(await poll(c, PollingStrategy.Offset(4), count=3)) == [4, 5, 6]  # inside a batch
    assert offsets(await poll(c, PollingStrategy.Offset(1), count=9)) == list(range(1, 10))  # spans 4
    assert payloads(await poll(c, PollingStrategy.Offset(6), count=4)) == [b"m6", b"m7", b"m8", b"m9"]
    assert offsets(await poll(c, PollingStrategy.Offset(12), count=10)) == [12]
    assert await poll(c, PollingStrategy.Offset(13)) == []  # one past the end
    assert await poll(c, PollingStrategy.Offset(10_000)) == []
    assert await poll(c, PollingStrategy.Offset(0), partition_id=1) == []  # empty partition


async def test_poll_timestamp(filled):
    c = filled
    msgs = await poll(c, PollingStrategy.First())
    stamps = sorted({m.timestamp() for m in msgs})
    assert len(stamps) == 4
    assert offsets(await poll(c, PollingStrategy.Timestamp(0))) == list(range(13))
    assert offsets(await poll(c, PollingStrategy.Timestamp(stamps[1]))) == list(range(3, 13))
    assert offsets(await poll(c, PollingStrategy.Timestamp(stamps[1] + 1), count=2)) == [8, 9]
    assert offsets(await poll(c, PollingStrategy.Timestamp(stamps[3]))) == [9, 10, 11, 12]
    assert await poll(c, PollingStrategy.Timestamp(stamps[3] + 1)) == []  # after the newest
    assert await poll(c, PollingStrategy.Timestamp(2**63)) == []


async def test_poll_first_and_last(filled):
    c = filled
    assert offsets(await poll(c, PollingStrategy.First(), count=4)) == [0, 1, 2, 3]
    assert offsets(await poll(c, PollingStrategy.Last(), count=1)) == [12]
    assert offsets(await poll(c, PollingStrategy.Last(), count=3)) == [10, 11, 12]
    assert offsets(await poll(c, PollingStrategy.Last(), count=6)) == [7, 8, 9, 10, 11, 12]
    assert offsets(await poll(c, PollingStrategy.Last(), count=13)) == list(range(13))
    assert offsets(await poll(c, PollingStrategy.Last(), count=500)) == list(range(13))
    assert await poll(c, PollingStrategy.Last(), count=5, partition_id=1) == []
    assert await poll(c, PollingStrategy.First(), partition_id=1) == []


async def test_poll_next_without_auto_commit_repeats(filled):
    c = filled
    for _ in range(2):
        assert offsets(await poll(c, PollingStrategy.Next(), count=4)) == [0, 1, 2, 3]
    assert await get_offset(c, 1, 1) is None


async def test_poll_next_with_auto_commit_advances(filled):
    c = filled
    seen = []
    for _ in range(4):
        seen += offsets(await poll(c, PollingStrategy.Next(), count=4, auto_commit=True))
    assert seen == list(range(13))
    assert await poll(c, PollingStrategy.Next(), count=4, auto_commit=True) == []
    assert await get_offset(c, 1, 1) == (0, 12, 12)
    await c.send_messages(S, T, 0, [SendMessage("late")])
    late = await poll(c, PollingStrategy.Next(), count=4, auto_commit=True)
    assert offsets(late) == [13] and payloads(late) == [b"late"]
    # auto-commit stores the last returned offset for other strategies too, and only moves forward
    await poll(c, PollingStrategy.Offset(2), count=2, consumer=Consumer.Single(9), auto_commit=True)
    assert (await get_offset(c, 1, 9))[2] == 3
    await poll(c, PollingStrategy.First(), count=1, consumer=Consumer.Single(9), auto_commit=True)
    assert (await get_offset(c, 1, 9))[2] == 3
    assert offsets(await poll(c, PollingStrategy.Next(), count=2, consumer=Consumer.Single(9))) == [4, 5]


async def test_two_consumers_are_independent(filled):
    c = filled
    a, b = Consumer.Single(1), Consumer.Single("worker-b")
    assert offsets(await poll(c, PollingStrategy.Next(), count=5, consumer=a, auto_commit=True)) == [0, 1, 2, 3, 4]
    assert offsets(await poll(c, PollingStrategy.Next(), count=2, consumer=b, auto_commit=True)) == [0, 1]
    assert offsets(await poll(c, PollingStrategy.Next(), count=2, consumer=a, auto_commit=True)) == [5, 6]
    assert offsets(await poll(c, PollingStrategy.Next(), count=2, consumer=b, auto_commit=True)) == [2, 3]
    # a named consumer is keyed by XXH32(name): the same key by number is the same consumer
    alias = Consumer.Single(xxhash.xxh32_intdigest(b"worker-b"))
    assert offsets(await poll(c, PollingStrategy.Next(), count=1, consumer=alias)) == [4]
    # per partition as well
    await c.send_messages(S, T, 1, [SendMessage("p1")])
    assert offsets(await poll(c, PollingStrategy.Next(), consumer=a, partition_id=1, auto_commit=True)) == [0]
    assert offsets(await poll(c, PollingStrategy.Next(), count=1, consumer=a)) == [7]


async def test_count_zero_rejected(filled, raw):
    with pytest.raises(RuntimeError, match=r"(?i)messages count"):
        await poll(filled, PollingStrategy.First(), count=0)
    raw.login()
    body = (
        b"\x01"
        + ident(1)
        + ident(S)
        + ident(T)
        + b"\x01"
        + struct.pack("<I", 0)
        + b"\x03"
        + bytes(8)
        + struct.pack("<I", 0)
        + b"\x00"
    )
    assert raw.read(100, body).status == 4009
    body = body[:-5] + struct.pack("<I", 2) + b"\x00"
    reply = raw.read(100, body)
    assert reply.status == 0
    assert struct.unpack_from("<IQI", reply.body) == (0, 12, 2)


async def test_poll_missing_partition_or_topic(filled):
    with pytest.raises(RuntimeError):
        await poll(filled, PollingStrategy.First(), partition_id=2)
    with pytest.raises(RuntimeError):
        await poll(filled, PollingStrategy.First(), topic="nope")


# ------------------------------------------------------------------------- consumer offsets


async def test_store_get_delete_single_consumer_offset(filled, raw):
    c = filled
    assert await get_offset(c, 1, 7) is None
    assert await store_single_offset(c, 7, 5) == b""
    assert await get_offset(c, 1, 7) == (0, 12, 5)
    assert offsets(await poll(c, PollingStrategy.Next(), count=2, consumer=Consumer.Single(7))) == [6, 7]
    await store_single_offset(c, 7, 1)  # an explicit store may go back
    assert (await get_offset(c, 1, 7))[2] == 1
    with pytest.raises(RuntimeError):
        await store_single_offset(c, 7, 13)  # beyond the current offset: 4100
    with pytest.raises(RuntimeError):
        await store_single_offset(c, 7, 0, partition=1)  # empty partition: 4100
    raw.login()
    base = offset_request(1, 7, 0)
    assert raw.call(161, 0, base + struct.pack("<Q", 13) + b"\x01").code == 4100
    assert raw.call(162, 0, offset_request(1, 8, 0) + b"\x01").code == 3021  # never stored
    assert raw.call(162, 0, base + b"\x01").code == 0
    assert await get_offset(c, 1, 7) is None
    assert raw.read(120, base).body == b""
    assert offsets(await poll(c, PollingStrategy.Next(), count=1, consumer=Consumer.Single(7))) == [0]


async def test_iggy_consumer_store_and_delete_offset(filled, raw):
    c = filled
    consumer = await next_consumer(c, "g-off", S, T, batch_length=5, poll_ms=10, auto_commit=AutoCommit.Disabled())
    await consumer.store_offset(6, 0)
    assert await get_offset(c, 2, "g-off", 0) == (0, 12, 6)
    group = await c.get_consumer_group(S, T, "g-off")
    assert await get_offset(c, 2, group.id, 0) == (0, 12, 6)  # by id and by name alike
    raw.login()
    assert raw.read(120, offset_request(2, "g-off", 0)).body == struct.pack("<IQQ", 0, 12, 6)
    got = await iterate(consumer, 3)  # resumes after the stored offset
    assert got == [(0, 7, b"m7"), (0, 8, b"m8"), (0, 9, b"m9")]
    await consumer.delete_offset(0)
    assert await get_offset(c, 2, "g-off", 0) is None
    with pytest.raises(RuntimeError):
        await consumer.delete_offset(0)
    with pytest.raises(RuntimeError):
        await consumer.store_offset(99, 0)


# ------------------------------------------------------------------------- high-level API


async def test_iggy_producer_end_to_end(client):
    producer = await client.producer("hs", "ht", topic_partitions_count=2)  # creates stream and topic
    r = await producer.send([SendMessage(f"m{i}") for i in range(10)])
    assert [(c.partition_id, c.base_offset) for c in r.confirmations] == [(0, 0)]
    r = await producer.send_one(SendMessage("one"))
    assert [(c.partition_id, c.base_offset) for c in r.confirmations] == [(1, 0)]
    r = await producer.send_with_partitioning([SendMessage("to-1")], Partitioning.partition_id(1))
    assert [(c.partition_id, c.base_offset) for c in r.confirmations] == [(1, 1)]
    await client.create_topic("hs", "other", 1)
    r = await producer.send_to("hs", "other", [SendMessage("elsewhere")])
    assert r.confirmations[0].base_offset == 0
    await producer.shutdown()
    topic = await client.get_topic("hs", "ht")
    assert topic.partitions_count == 2 and [p.messages_count for p in topic.partitions] == [10, 2]
    assert payloads(await poll(client, PollingStrategy.First(), stream="hs", topic="ht", partition_id=1)) == [
        b"one",
        b"to-1",
    ]
    assert payloads(await poll(client, PollingStrategy.First(), stream="hs", topic="other")) == [b"elsewhere"]
    async with await client.producer("hs", "ht", partitioning=Partitioning.messages_key("k")) as keyed:
        r = await keyed.send([SendMessage("keyed")])
        assert r.confirmations[0].partition_id == xxhash.xxh32_intdigest(b"k") % 2


async def fill_two_partitions(client, stream="cs", topic="ct", per_partition=(10, 6)):
    await client.create_stream(stream)
    await client.create_topic(stream, topic, len(per_partition))
    for p, n in enumerate(per_partition):
        await client.send_messages(stream, topic, p, [SendMessage(f"p{p}-{i}") for i in range(n)])


async def iterate(consumer, n: int, timeout: float = 15.0):
    got = []

    async def run():
        async for m in consumer.iter_messages():
            got.append((m.partition_id(), m.offset(), m.payload()))
            if len(got) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return got


def per_partition(got):
    out = {}
    for p, o, _ in got:
        out.setdefault(p, []).append(o)
    return out


async def wait_offset(client, group, partition, want, stream="cs", topic="ct", timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await get_offset(client, 2, group, partition, stream, topic)
        if got is not None and got[2] == want:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"offset of {group}/{partition} is {got}, wanted {want}")
        await asyncio.sleep(0.05)


def cs_ct_consumer(client, group: str, batch_length: int, auto_commit):
    """The SDK's consumer of `group` on cs/ct: polls `next`, every 10 ms, committing as told."""
    return next_consumer(client, group, "cs", "ct", batch_length=batch_length, poll_ms=10, auto_commit=auto_commit)


async def test_iggy_consumer_iterates_with_commit_on_poll(client, server):
    await fill_two_partitions(client)
    consumer = await cs_ct_consumer(client, "g", 4, AutoCommit.When(AutoCommitWhen.PollingMessages()))
    assert consumer.name() == "g" and consumer.stream() == "cs" and consumer.topic() == "ct"
    got = await iterate(consumer, 16)
    assert per_partition(got) == {0: list(range(10)), 1: list(range(6))}
    assert sorted(p for _, _, p in got) == sorted(
        [f"p0-{i}".encode() for i in range(10)] + [f"p1-{i}".encode() for i in range(6)]
    )
    await wait_offset(client, "g", 0, 9)
    await wait_offset(client, "g", 1, 5)
    # a second client of the same group continues after the committed offsets
    await client.send_messages("cs", "ct", 1, [SendMessage("new")])
    other = await connect_root(server.tcp_address)
    await client.leave_consumer_group("cs", "ct", "g")
    successor = await cs_ct_consumer(other, "g", 4, AutoCommit.When(AutoCommitWhen.PollingMessages()))
    assert await iterate(successor, 1) == [(1, 6, b"new")]


async def test_iggy_consumer_consume_messages_commit_after_each(client):
    await fill_two_partitions(client)
    consumer = await cs_ct_consumer(client, "g2", 3, AutoCommit.After(AutoCommitAfter.ConsumingEachMessage()))
    got = []
    done = asyncio.Event()

    async def callback(m):
        got.append((m.partition_id(), m.offset(), m.payload()))
        if len(got) == 16:
            done.set()

    await asyncio.wait_for(consumer.consume_messages(callback, done), 15)
    assert per_partition(got) == {0: list(range(10)), 1: list(range(6))}
    await wait_offset(client, "g2", 0, 9)
    await wait_offset(client, "g2", 1, 5)


async def test_iggy_consumer_interval_commit_and_manual_mode(client):
    await fill_two_partitions(client)
    consumer = await cs_ct_consumer(client, "g3", 5, AutoCommit.Interval(MS * 100))
    got = await iterate(consumer, 16)
    assert per_partition(got) == {0: list(range(10)), 1: list(range(6))}
    await wait_offset(client, "g3", 0, 9)
    await wait_offset(client, "g3", 1, 5)
    # manual mode: nothing is stored until the consumer stores it
    manual = await cs_ct_consumer(client, "g4", 5, AutoCommit.Disabled())
    got = await iterate(manual, 5)
    assert len(got) == 5
    await asyncio.sleep(0.3)
    assert await get_offset(client, 2, "g4", 0, "cs", "ct") is None
    assert await get_offset(client, 2, "g4", 1, "cs", "ct") is None
    p, o, _ = got[-1]
    await manual.store_offset(o, p)
    assert (await get_offset(client, 2, "g4", p, "cs", "ct"))[2] == o


# ------------------------------------------------------------------------- segments


def partition_dir(server, sid=0, tid=0, pid=0) -> str:
    return os.path.join(server.data_dir, "streams", str(sid), "topics", str(tid), "partitions", str(pid))


async def test_several_segments_and_polls_across_boundaries(client, server):
    await make_topic(client, segment_size=1 << 20)  # the minimum segment size
    # 1000 messages of 1100 bytes per batch: every batch passes 1 MiB, so every batch rolls
    for b in range(3):
        msgs = [SendMessage(bytes([65 + b]) * 1090 + f"{b * 1000 + i:010d}".encode()) for i in range(1000)]
        r = await client.send_messages(S, T, 0, msgs)
        assert r.confirmations[0].base_offset == b * 1000
    await client.send_messages(S, T, 0, [SendMessage("tail")])
    topic = await client.get_topic(S, T)
    part = topic.partitions[0]
    assert part.segments_count == 4 and part.messages_count == 3001 and part.current_offset == 3000
    logs = sorted(f for f in os.listdir(partition_dir(server)) if f.endswith(".log"))
    assert logs == [f"{o:020d}.log" for o in (0, 1000, 2000, 3000)]

    def number(m):
        return int(m.payload()[-10:]) if m.offset() < 3000 else 3000

    for start, count in ((990, 20), (999, 2), (1999, 1002), (0, 1000), (500, 1000), (2995, 100)):
        msgs = await poll(client, PollingStrategy.Offset(start), count=count)
        want = list(range(start, min(start + count, 3001)))
        assert offsets(msgs) == want, (start, count)
        assert [number(m) for m in msgs] == want
    last = await poll(client, PollingStrategy.Last(), count=1500)
    assert offsets(last) == list(range(1501, 3001))
    seen = []
    while True:
        batch = await poll(client, PollingStrategy.Next(), count=700, auto_commit=True)
        if not batch:
            break
        seen += offsets(batch)
    assert seen == list(range(3001))
    stamps = {m.offset(): m.timestamp() for m in await poll(client, PollingStrategy.Offset(999), count=2)}
    after = await poll(client, PollingStrategy.Timestamp(stamps[1000]), count=3)
    assert offsets(after) == [1000, 1001, 1002]


# ------------------------------------------------------------------------- purge


async def test_purge_topic_restarts_offsets_and_clears_stored(client, server):
    await make_topic(client, partitions=2, segment_size=1 << 20)
    for _ in range(2):
        await client.send_messages(S, T, 0, [SendMessage(b"x" * 1100) for _ in range(1000)])
    await send_batches(client, [5], partition=1)
    await poll(client, PollingStrategy.Next(), count=10, auto_commit=True)
    await store_single_offset(client, 3, 2, partition=1)
    consumer = await client.consumer_group("pg", S, T, auto_commit=AutoCommit.Disabled())
    await consumer.store_offset(4, 1)
    assert (await client.get_topic(S, T)).partitions[0].segments_count == 3
    await client.purge_topic(S, T)
    topic = await client.get_topic(S, T)
    assert topic.messages_count == 0 and topic.size == 0
    assert [(p.messages_count, p.current_offset, p.segments_count) for p in topic.partitions] == [(0, 0, 1)] * 2
    assert sorted(f for f in os.listdir(partition_dir(server)) if f.endswith(".log")) == [f"{0:020d}.log"]
    for p in (0, 1):
        assert await poll(client, PollingStrategy.First(), partition_id=p) == []
    assert await get_offset(client, 1, 1, 0) is None
    assert await get_offset(client, 1, 3, 1) is None
    assert await get_offset(client, 2, "pg", 1) is None
    r = await client.send_messages(S, T, 0, [SendMessage("again")])
    assert r.confirmations[0].base_offset == 0
    assert offsets(await poll(client, PollingStrategy.Next(), auto_commit=True)) == [0]
    assert (await client.get_consumer_group(S, T, "pg")) is not None  # groups survive a purge


async def test_purge_stream(client):
    await make_topic(client, partitions=1)
    await client.create_topic(S, "t2", 2)
    await send_batches(client, [3, 3])
    await send_batches(client, [4], topic="t2", partition=1)
    await poll(client, PollingStrategy.Next(), count=2, auto_commit=True)
    await client.purge_stream(S)
    assert (await client.get_stream(S)).messages_count == 0
    assert await poll(client, PollingStrategy.First()) == []
    assert await poll(client, PollingStrategy.First(), topic="t2", partition_id=1) == []
    assert await get_offset(client, 1, 1, 0) is None
    assert offsets(await poll(client, PollingStrategy.Next())) == []
    r = await client.send_messages(S, "t2", 1, [SendMessage("fresh")])
    assert r.confirmations[0].base_offset == 0
    await client.purge_stream(S)  # purging an empty stream is fine


# ------------------------------------------------------------------------- partitions with data


async def test_create_and_delete_partitions_on_a_topic_with_data(client):
    await make_topic(client, partitions=2)
    await send_batches(client, [3], partition=0, prefix="a")
    await send_batches(client, [2], partition=1, prefix="b")
    await client.create_partitions(S, T, 2)
    topic = await client.get_topic(S, T)
    assert [p.id for p in topic.partitions] == [0, 1, 2, 3]
    assert [p.messages_count for p in topic.partitions] == [3, 2, 0, 0]
    assert await poll(client, PollingStrategy.First(), partition_id=3) == []
    r = await client.send_messages(S, T, 3, [SendMessage("d0"), SendMessage("d1")])
    assert r.confirmations[0].base_offset == 0
    assert payloads(await poll(client, PollingStrategy.First(), partition_id=0)) == [b"a0", b"a1", b"a2"]
    # balanced partitioning sees the new count (a new client reads the topic afresh)
    keyed = xxhash.xxh32_intdigest(b"key-x") % 4
    r = await client.send_messages(S, T, Partitioning.messages_key("key-x"), [SendMessage("k")])
    assert r.confirmations[0].partition_id == keyed

    await poll(client, PollingStrategy.Next(), partition_id=3, auto_commit=True)
    await client.delete_partitions(S, T, 2)
    topic = await client.get_topic(S, T)
    assert [p.id for p in topic.partitions] == [0, 1]
    assert topic.messages_count == 5 + (1 if keyed < 2 else 0)
    with pytest.raises(RuntimeError):
        await poll(client, PollingStrategy.First(), partition_id=3)
    with pytest.raises(RuntimeError):
        await client.send_messages(S, T, 2, [SendMessage("gone")])
    assert payloads(await poll(client, PollingStrategy.First(), partition_id=1))[:2] == [b"b0", b"b1"]
    # a partition created again with a deleted id starts empty: no old messages, no old offsets
    await client.create_partitions(S, T, 2)
    assert [p.messages_count for p in (await client.get_topic(S, T)).partitions] == [
        3 + (keyed == 0),
        2 + (keyed == 1),
        0,
        0,
    ]
    assert await poll(client, PollingStrategy.First(), partition_id=3) == []
    assert await get_offset(client, 1, 1, 3) is None
    r = await client.send_messages(S, T, 3, [SendMessage("new")])
    assert r.confirmations[0].base_offset == 0


# ------------------------------------------------------------------------- retention


@pytest.fixture
def retention_server(tmp_path):
    from tests.conftest import ServerProcess

    srv = ServerProcess(tmp_path / "data", extra_env={"IGGY_DATA_MAINTENANCE_MESSAGES_INTERVAL": "200ms"}).start()
    yield srv
    srv.stop()


async def segments_of(client, partition=0):
    return (await client.get_topic(S, T)).partitions[partition].segments_count


async def test_message_expiry_deletes_sealed_segments(retention_server):
    from apache_iggy import IggyExpiry

    client = await connect_root(retention_server.tcp_address)
    await make_topic(
        client,
        partitions=2,
        segment_size=1 << 20,
        message_expiry=IggyExpiry.ExpireDuration(datetime.timedelta(seconds=1)),
    )
    for p in (0, 1):
        for b in range(3):  # every batch seals a segment
            await client.send_messages(
                S, T, p, [SendMessage(f"{b * 1000 + i:06d}".encode() + b"e" * 1094) for i in range(1000)]
            )
        await client.send_messages(S, T, p, [SendMessage("active")])
    assert await segments_of(client, 0) == 4 and await segments_of(client, 1) == 4
    # on partition 1 a consumer has only processed up to 1500: segments after that are kept
    await store_single_offset(client, 1, 1500, partition=1)
    deadline = asyncio.get_running_loop().time() + 8
    while await segments_of(client, 0) > 1 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert await segments_of(client, 0) == 1  # the active segment always stays
    assert offsets(await poll(client, PollingStrategy.First())) == [3000]
    assert offsets(await poll(client, PollingStrategy.Offset(0), count=5)) == [3000]
    assert offsets(await poll(client, PollingStrategy.Next(), consumer=Consumer.Single(5))) == [3000]
    part = (await client.get_topic(S, T)).partitions[0]
    assert part.messages_count == 1 and part.current_offset == 3000
    r = await client.send_messages(S, T, 0, [SendMessage("next")])
    assert r.confirmations[0].base_offset == 3001
    await asyncio.sleep(0.5)
    assert await segments_of(client, 1) == 3  # only 0..999 went (barrier at 1500)
    msgs = await poll(client, PollingStrategy.First(), count=2, partition_id=1)
    assert offsets(msgs) == [1000, 1001] and msgs[0].payload().startswith(b"001000")


async def test_max_topic_size_deletes_oldest_sealed_segments(retention_server):
    """The per-partition budget is at least segment_size + 64 MiB: fill ~80 MiB of 1 MiB segments."""
    from apache_iggy import MaxTopicSize

    client = await connect_root(retention_server.tcp_address)
    await make_topic(client, segment_size=1 << 20, max_topic_size=MaxTopicSize.Custom(2 << 20))
    from tests.rawclient import RawClient

    raw = RawClient(retention_server.tcp_address)
    raw.login()
    batch = build_batch([(i + 1, b"s" * 1100, b"") for i in range(1000)])
    body = raw_send_body(S, T, 2, struct.pack("<I", 0), batch, 1000)
    for _ in range(80):
        assert raw.call(160, 0, body).status == 0
    budget = (1 << 20) + (64 << 20)
    deadline = asyncio.get_running_loop().time() + 8
    while (await client.get_topic(S, T)).size > budget + len(batch) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    topic = await client.get_topic(S, T)
    assert budget - len(batch) <= topic.size <= budget + len(batch)
    first = (await poll(client, PollingStrategy.First(), count=1))[0].offset()
    assert first > 0 and first % 1000 == 0  # whole segments, oldest first
    assert topic.partitions[0].current_offset == 79_999
    assert offsets(await poll(client, PollingStrategy.Last(), count=2)) == [79_998, 79_999]
    raw.close()
