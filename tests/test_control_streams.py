"""Streams, topics and partitions through the official SDK, with the raw_root codes of each refusal.

One server serves the whole module (entities get unique names so tests don't interfere); the
id tests start their own server because ids depend on everything created before.
Error messages are the SDK's text for the numeric code (TCP.md 4.2: only the code travels);
the raw_root client checks the numeric code of the same refusal.
"""

from __future__ import annotations

import struct
import uuid
from datetime import timedelta

import pytest
from apache_iggy import (
    GlobalPermissions,
    IggyClient,
    IggyExpiry,
    MaxTopicSize,
    Permissions,
    PollingStrategy,
    SendMessage,
    StreamPermissions,
    TopicPermissions,
)

from tests.conftest import MiB, connect_root, every_topic_option, login_as, sdk_error, sdk_poll, uniq
from tests.rawclient import RawClient, ident, wire_name

GiB = 1024 * MiB
U64_MAX = 2**64 - 1

# write operations (TCP.md 2.5)
OP_CREATE_STREAM, OP_UPDATE_STREAM, OP_DELETE_STREAM, OP_PURGE_STREAM = 128, 129, 130, 131
OP_CREATE_TOPIC, OP_UPDATE_TOPIC, OP_DELETE_TOPIC, OP_PURGE_TOPIC = 132, 133, 134, 135
OP_CREATE_PARTITIONS, OP_DELETE_PARTITIONS = 136, 137
GET_STREAM, GET_STREAMS, GET_TOPIC, GET_TOPICS = 200, 201, 300, 301


def tlv(kind: int, raw_root: bytes) -> bytes:
    return bytes([kind]) + struct.pack("<I", len(raw_root)) + raw_root


def option(key: str, kind: int, raw_root: bytes) -> bytes:
    return tlv(2, key.encode()) + tlv(kind, raw_root)


def topic_body(stream, partitions: int, name: str) -> bytes:
    """CREATE_TOPIC without options."""
    return ident(stream) + struct.pack("<I", partitions) + wire_name(name)


def global_perms(**flags) -> Permissions:
    return Permissions(global_permissions=GlobalPermissions(**flags))


def stream_perms(stream_id: int, **flags) -> Permissions:
    return Permissions(streams={stream_id: StreamPermissions(**flags)})


# ------------------------------------------------------------------ streams


async def test_stream_create_get_list_update_delete(root):
    name = uniq("orders")
    await root.create_stream(name)
    by_name = await root.get_stream(name)
    assert by_name is not None and by_name.name == name
    assert by_name.topics_count == 0 and by_name.topics == []
    assert by_name.size == 0 and by_name.messages_count == 0
    assert by_name.created_at > 1_600_000_000_000_000  # microseconds since the epoch
    by_id = await root.get_stream(by_name.id)
    assert (by_id.id, by_id.name, by_id.created_at) == (by_name.id, name, by_name.created_at)
    listed = {s.name: s for s in await root.get_streams()}
    assert name in listed and listed[name].id == by_name.id and listed[name].topics_count == 0
    ids = [s.id for s in await root.get_streams()]
    assert ids == sorted(ids)

    renamed = uniq("renamed")
    await root.update_stream(name, renamed)
    assert await root.get_stream(name) is None
    after = await root.get_stream(by_name.id)
    assert after.name == renamed and after.created_at == by_name.created_at
    await root.update_stream(by_name.id, renamed)  # renaming to the current name succeeds
    assert (await root.get_stream(renamed)).id == by_name.id

    await root.delete_stream(renamed)
    assert await root.get_stream(renamed) is None
    assert await root.get_stream(by_name.id) is None
    assert renamed not in {s.name for s in await root.get_streams()}


async def test_stream_create_reply_carries_the_new_stream(raw_root):
    name = uniq("raw_root")
    reply = raw_root.call(OP_CREATE_STREAM, 0, wire_name(name))
    assert reply.status == 0 and reply.code == 0
    body = reply.body[4:]  # after the result section [u32 0]
    stream_id, created_at, topics = struct.unpack_from("<IQI", body)
    assert topics == 0 and created_at > 0
    assert body[32] == len(name) and body[33 : 33 + len(name)] == name.encode()
    got = raw_root.read(GET_STREAM, ident(name))
    assert got.status == 0 and struct.unpack_from("<I", got.body)[0] == stream_id


async def test_stream_errors(root, raw_root):
    name = uniq("dup")
    await root.create_stream(name)
    with sdk_error("Stream with name:  already exists."):
        await root.create_stream(name)
    assert raw_root.call(OP_CREATE_STREAM, 0, wire_name(name)).code == 1012

    other = uniq("other")
    await root.create_stream(other)
    with sdk_error("Stream with name:  already exists."):
        await root.update_stream(other, name)  # rename onto an existing name
    assert raw_root.call(OP_UPDATE_STREAM, 0, ident(other) + wire_name(name)).code == 1012

    missing_id, missing_name = 999_999, uniq("missing")
    assert await root.get_stream(missing_id) is None
    assert await root.get_stream(missing_name) is None
    empty = raw_root.read(GET_STREAM, ident(missing_name))
    assert empty.status == 0 and empty.body == b""
    with sdk_error("Stream with ID: 0 was not found."):
        await root.delete_stream(missing_id)
    # a missing name answers the id code too, as upstream (1009, never 1010)
    with sdk_error("Stream with ID: 0 was not found."):
        await root.delete_stream(missing_name)
    with sdk_error("Stream with ID: 0 was not found."):
        await root.update_stream(missing_id, uniq("x"))
    with sdk_error("Stream with ID: 0 was not found."):
        await root.purge_stream(missing_name)
    assert raw_root.call(OP_DELETE_STREAM, 0, ident(missing_id)).code == 1009
    assert raw_root.call(OP_DELETE_STREAM, 0, ident(missing_name)).code == 1009
    assert raw_root.call(OP_UPDATE_STREAM, 0, ident(missing_id) + wire_name("x")).code == 1009
    assert raw_root.call(OP_PURGE_STREAM, 0, ident(missing_name)).code == 1009
    assert raw_root.call(OP_PURGE_STREAM, 0, ident(missing_id)).code == 1009

    # an empty name can't be decoded (WireName is 1..255 bytes): the request is refused
    bad = raw_root.call(OP_CREATE_STREAM, 0, b"\x00")
    assert bad.code == 3
    # there are no stream option keys: any key is unsupported
    with sdk_error("Unsupported option key: "):
        await root.update_stream(other, uniq("x"), options={"x_custom": "y"})
    assert raw_root.call(OP_CREATE_STREAM, 0, wire_name(uniq("opt")) + option("x_custom", 2, b"y")).code == 4041
    # both streams are still intact
    assert (await root.get_stream(name)).name == name and (await root.get_stream(other)).name == other


async def test_names_are_verbatim_and_case_sensitive(root):
    base = uniq("Case")
    await root.create_stream(base)
    await root.create_stream(base.lower())  # another name: no conflict
    assert (await root.get_stream(base)).id != (await root.get_stream(base.lower())).id
    fancy = "strumień-ü-" + uuid.uuid4().hex[:8] + " with spaces/and:colons"
    await root.create_stream(fancy)
    assert (await root.get_stream(fancy)).name == fancy
    longest = "n" * 245 + uuid.uuid4().hex[:10]  # 255 bytes, the WireName limit
    await root.create_stream(longest)
    assert (await root.get_stream(longest)).name == longest
    await root.create_topic(longest, longest, 1)
    assert (await root.get_topic(longest, longest)).name == longest
    for name in (base, base.lower(), fancy, longest):
        await root.delete_stream(name)


async def test_numeric_name_is_an_id_when_addressed(root):
    """A name made of digits is stored, but addressing it by that string means the id."""
    await root.create_stream("4242")
    s = next(s for s in await root.get_streams() if s.name == "4242")
    assert s.id != 4242
    assert await root.get_stream("4242") is None
    await root.delete_stream(s.id)


async def test_purge_stream_drops_messages_keeps_metadata(root):
    name = uniq("purge")
    await root.create_stream(name)
    await root.create_topic(name, "a", 2)
    await root.create_topic(name, "b", 1)
    await root.send_messages(name, "a", 1, [SendMessage("x"), SendMessage("y")])
    await root.send_messages(name, "b", 0, [SendMessage("z")])
    before = await root.get_stream(name)
    assert before.messages_count == 3
    await root.purge_stream(name)
    after = await root.get_stream(name)
    assert after.messages_count == 0 and after.size == 0
    assert [t.name for t in after.topics] == ["a", "b"] and after.id == before.id
    polled = await sdk_poll(root, name, "a", PollingStrategy.First(), partition=1)
    assert polled == []
    await root.send_messages(name, "a", 1, [SendMessage("again")])  # offsets restart at 0
    polled = await sdk_poll(root, name, "a", PollingStrategy.First(), partition=1)
    assert [(m.offset(), m.payload()) for m in polled] == [(0, b"again")]
    await root.purge_stream(name)  # purging an empty stream succeeds


# ------------------------------------------------------------------ topics


async def test_topic_create_with_every_option(root):
    s = uniq("opts")
    await root.create_stream(s)
    await root.create_topic(s, "full", 3, **every_topic_option())
    t = await root.get_topic(s, "full")
    assert t.name == "full" and t.partitions_count == 3
    assert [p.id for p in t.partitions] == [0, 1, 2]
    assert all(p.current_offset == 0 and p.messages_count == 0 and p.segments_count >= 1 for p in t.partitions)
    assert t.compression_algorithm == "gzip"
    assert isinstance(t.message_expiry, IggyExpiry.ExpireDuration)
    assert t.message_expiry.duration == timedelta(seconds=60)
    assert isinstance(t.max_topic_size, MaxTopicSize.Custom) and t.max_topic_size.bytes == 100 * MiB
    assert t.options.to_scalar_dict() == {
        "compression_algorithm": "gzip",
        "message_expiry": 60_000_000,
        "max_topic_size": 100 * MiB,
        "segment_size": 2 * MiB,
        "durability": "persisted",
        "consumer_offset_durability": "replicated",
        "messages_required_to_save": 100,
        "size_of_messages_required_to_save": 4096,
        "preallocate_segments": False,
    }
    assert t.derived_options.to_scalar_dict() == {"enforce_fsync": False}

    # nothing given: the server defaults are resolved and frozen (SEMANTICS 3.2, 3.3)
    await root.create_topic(s, "plain", 1)
    p = await root.get_topic(s, "plain")
    assert p.compression_algorithm == "none"
    assert isinstance(p.message_expiry, IggyExpiry.NeverExpire)
    assert isinstance(p.max_topic_size, MaxTopicSize.Unlimited)
    assert p.options.to_scalar_dict() == {"durability": "replicated", "consumer_offset_durability": "replicated"}
    assert p.derived_options.to_scalar_dict() == {
        "compression_algorithm": "none",
        "message_expiry": U64_MAX,
        "max_topic_size": U64_MAX,
        "segment_size": GiB,
        "enforce_fsync": False,
        "messages_required_to_save": 1024,
        "size_of_messages_required_to_save": MiB,
        "preallocate_segments": False,
    }
    # "server default" sentinels resolve to real values too
    await root.create_topic(
        s, "defaults", 1, message_expiry=IggyExpiry.ServerDefault(), max_topic_size=MaxTopicSize.ServerDefault()
    )
    d = await root.get_topic(s, "defaults")
    assert isinstance(d.message_expiry, IggyExpiry.NeverExpire)
    assert isinstance(d.max_topic_size, MaxTopicSize.Unlimited)
    # options given as text (the SDK's `options` map) are parsed by the key's type
    await root.create_topic(
        s, "text", 1, options={"message_expiry": "1h", "max_topic_size": "2 GiB", "enforce_fsync": "true"}
    )
    x = await root.get_topic(s, "text")
    assert x.message_expiry.duration == timedelta(hours=1)
    assert x.max_topic_size.bytes == 2 * GiB
    assert x.options.to_scalar_dict()["enforce_fsync"] is True
    await root.delete_topic(s, "text")
    # a topic may have no partitions at all
    await root.create_topic(s, "empty", 0)
    assert (await root.get_topic(s, "empty")).partitions == []

    listed = await root.get_topics(s)
    assert [(t.id, t.name, t.partitions_count) for t in listed] == [
        (0, "full", 3),
        (1, "plain", 1),
        (2, "defaults", 1),
        (3, "empty", 0),
    ]
    assert listed[0].compression_algorithm == "gzip"
    details = await root.get_stream(s)
    assert details.topics_count == 4
    assert [t.name for t in details.topics] == ["full", "plain", "defaults", "empty"]
    # by id as well as by name
    assert (await root.get_topic(details.id, 0)).name == "full"


async def test_topic_update_is_a_patch(root):
    s = uniq("upd")
    await root.create_stream(s)
    await root.create_topic(
        s,
        "t",
        1,
        compression_algorithm="gzip",
        segment_size=2 * MiB,
        message_expiry=IggyExpiry.ExpireDuration(timedelta(seconds=30)),
    )
    await root.update_topic(s, "t", "t2", max_topic_size=MaxTopicSize.Custom(50 * MiB))
    t = await root.get_topic(s, "t2")
    assert await root.get_topic(s, "t") is None
    assert t.compression_algorithm == "gzip"  # untouched
    assert t.message_expiry.duration == timedelta(seconds=30)  # untouched
    assert t.max_topic_size.bytes == 50 * MiB
    await root.update_topic(
        s,
        "t2",
        "t2",
        compression_algorithm="none",
        message_expiry=IggyExpiry.NeverExpire(),
        max_topic_size=MaxTopicSize.Unlimited(),
    )
    t = await root.get_topic(s, "t2")
    assert t.compression_algorithm == "none"
    assert isinstance(t.message_expiry, IggyExpiry.NeverExpire)
    assert isinstance(t.max_topic_size, MaxTopicSize.Unlimited)
    assert t.options.to_scalar_dict()["segment_size"] == 2 * MiB  # create-only value kept
    await root.update_topic(s, "t2", "t2")  # name only, same name
    assert (await root.get_topic(s, "t2")).id == t.id


async def test_topic_errors(root, raw_root):
    s = uniq("terr")
    await root.create_stream(s)
    sid = (await root.get_stream(s)).id
    await root.create_topic(s, "t", 2)
    await root.create_topic(s, "u", 1)

    with sdk_error("Topic with name:  for stream with ID: 0 already exists."):
        await root.create_topic(s, "t", 1)
    assert raw_root.call(OP_CREATE_TOPIC, 0, topic_body(sid, 1, "t")).code == 2013
    with sdk_error("Topic with name:  for stream with ID: 0 already exists."):
        await root.update_topic(s, "u", "t")
    assert raw_root.call(OP_UPDATE_TOPIC, 0, ident(sid) + ident("u") + wire_name("t")).code == 2013

    # missing stream / topic on writes
    with sdk_error("Stream with ID: 0 was not found."):
        await root.create_topic(uniq("nostream"), "t", 1)
    with sdk_error("Stream with ID: 0 was not found."):
        await root.create_topic(999_999, "t", 1)
    assert raw_root.call(OP_CREATE_TOPIC, 0, topic_body(999_999, 1, "t")).code == 1009
    assert raw_root.call(OP_CREATE_TOPIC, 0, topic_body("nostream-x", 1, "t")).code == 1009
    with sdk_error("Topic with ID: 0 for stream with ID: 0 was not found."):
        await root.delete_topic(s, 77)
    with sdk_error("Topic with ID: 0 for stream with ID: 0 was not found."):
        await root.delete_topic(s, "nope")
    with sdk_error("Topic with ID: 0 for stream with ID: 0 was not found."):
        await root.update_topic(s, "nope", "x")
    with sdk_error("Topic with ID: 0 for stream with ID: 0 was not found."):
        await root.purge_topic(s, 77)
    assert raw_root.call(OP_DELETE_TOPIC, 0, ident(sid) + ident(77)).code == 2010
    assert raw_root.call(OP_DELETE_TOPIC, 0, ident(sid) + ident("nope")).code == 2010
    assert raw_root.call(OP_PURGE_TOPIC, 0, ident(sid) + ident("nope")).code == 2010
    assert raw_root.call(OP_DELETE_TOPIC, 0, ident(999_999) + ident(0)).code == 1009
    assert raw_root.call(OP_CREATE_PARTITIONS, 0, ident(sid) + ident(77) + struct.pack("<I", 1)).code == 2010

    # missing entities on reads: the SDK gets None, the wire an empty body
    assert await root.get_topic(s, "nope") is None
    assert await root.get_topic(s, 77) is None
    assert await root.get_topic(uniq("nostream"), "t") is None
    empty = raw_root.read(GET_TOPIC, ident(sid) + ident(77))
    assert empty.status == 0 and empty.body == b""
    # the topics of a missing stream are an empty list, as upstream ([u32 0], not 1009)
    assert await root.get_topics(uniq("nostream")) == []
    listed = raw_root.read(GET_TOPICS, ident(999_999))
    assert (listed.status, listed.body) == (0, b"\0\0\0\0")

    # options: unknown key 4041, bad value 4042, max size below segment size 1019
    with sdk_error("Unsupported option key: "):
        await root.create_topic(s, "v", 1, options={"bogus": "1"})
    body = topic_body(sid, 1, "v")

    def refused(key: str, kind: int, raw_value: bytes) -> int:
        return raw_root.call(OP_CREATE_TOPIC, 0, body + option(key, kind, raw_value)).code

    assert refused("bogus", 2, b"1") == 4041
    with sdk_error("Invalid option value for key: "):
        await root.create_topic(s, "v", 1, options={"segment_size": "abc"})
    with sdk_error("Invalid option value for key: "):
        await root.create_topic(s, "v", 1, segment_size=1000)  # below 1 MiB
    with sdk_error("Invalid option value for key: "):
        await root.create_topic(s, "v", 1, messages_required_to_save=0)
    assert refused("segment_size", 12, struct.pack("<Q", 1000)) == 4042
    assert refused("segment_size", 12, struct.pack("<Q", 2 * MiB + 1)) == 4042  # not a multiple of 512
    assert refused("segment_size", 12, struct.pack("<Q", 2 * GiB)) == 4042
    assert refused("size_of_messages_required_to_save", 12, struct.pack("<Q", 2 * GiB)) == 4042
    assert refused("messages_required_to_save", 11, struct.pack("<I", 16_777_217)) == 4042
    with sdk_error("Invalid option value for key: "):
        await root.create_topic(s, "v", 65, preallocate_segments=True)  # 65 x 1 GiB > 64 GiB
    assert refused("compression_algorithm", 2, b"zstd") == 4042
    assert refused("durability", 2, b"sometimes") == 4042
    msg = "Max topic size cannot be lower than segment size. Max topic size: server_default < segment size: 0 B."
    with sdk_error(msg):
        await root.create_topic(s, "v", 1, max_topic_size=MaxTopicSize.Custom(MiB))  # default segment 1 GiB
    assert refused("max_topic_size", 12, struct.pack("<Q", MiB)) == 1019
    with sdk_error(msg):
        await root.update_topic(s, "t", "t", max_topic_size=MaxTopicSize.Custom(MiB))
    # create-only keys can't be changed later
    with sdk_error("Unsupported option key: "):
        await root.update_topic(s, "t", "t", options={"segment_size": "4194304"})
    assert (
        raw_root.call(
            OP_UPDATE_TOPIC,
            0,
            ident(sid) + ident("t") + wire_name("t") + option("segment_size", 12, struct.pack("<Q", 4 * MiB)),
        ).code
        == 4041
    )

    # partition counts
    with sdk_error("Too many partitions"):
        await root.create_topic(s, "v", 1001)
    assert raw_root.call(OP_CREATE_TOPIC, 0, topic_body(sid, 1001, "v")).code == 2015
    with sdk_error("Invalid partitions count"):
        await root.create_partitions(s, "t", 1001)
    assert raw_root.call(OP_CREATE_PARTITIONS, 0, ident(sid) + ident("t") + struct.pack("<I", 0)).code == 2019
    with sdk_error("Invalid partitions count"):
        await root.delete_partitions(s, "t", 3)  # only 2 exist
    assert raw_root.call(OP_DELETE_PARTITIONS, 0, ident(sid) + ident("t") + struct.pack("<I", 3)).code == 2019

    # none of the refused requests left anything behind
    topics = await root.get_topics(s)
    assert [(t.name, t.partitions_count) for t in topics] == [("t", 2), ("u", 1)]
    t = await root.get_topic(s, "t")
    assert isinstance(t.max_topic_size, MaxTopicSize.Unlimited)
    assert "segment_size" not in t.options.to_scalar_dict()


async def test_topic_delete_and_purge(root):
    s = uniq("tdel")
    await root.create_stream(s)
    await root.create_topic(s, "keep", 1)
    await root.create_topic(s, "gone", 1)
    await root.send_messages(s, "keep", 0, [SendMessage("1"), SendMessage("2"), SendMessage("3")])
    t = await root.get_topic(s, "keep")
    assert t.messages_count == 3 and t.partitions[0].current_offset == 2 and t.size > 0
    await root.purge_topic(s, "keep")
    t = await root.get_topic(s, "keep")
    assert t.messages_count == 0 and t.size == 0 and t.partitions[0].current_offset == 0
    assert t.partitions_count == 1
    await root.delete_topic(s, "gone")
    assert await root.get_topic(s, "gone") is None
    assert [t.name for t in await root.get_topics(s)] == ["keep"]
    assert (await root.get_stream(s)).topics_count == 1


async def test_partitions_create_and_delete(root, raw_root):
    s = uniq("parts")
    await root.create_stream(s)
    await root.create_topic(s, "t", 2)
    await root.create_partitions(s, "t", 3)
    t = await root.get_topic(s, "t")
    assert t.partitions_count == 5 and [p.id for p in t.partitions] == [0, 1, 2, 3, 4]
    await root.delete_partitions(s, "t", 2)
    t = await root.get_topic(s, "t")
    assert [p.id for p in t.partitions] == [0, 1, 2]  # the highest ids go
    await root.send_messages(s, "t", 2, [SendMessage("in p2")])
    await root.delete_partitions(s, "t", 1)
    await root.create_partitions(s, "t", 1)  # id 2 comes back, empty
    t = await root.get_topic(s, "t")
    assert [p.id for p in t.partitions] == [0, 1, 2]
    assert t.partitions[2].messages_count == 0 and t.messages_count == 0
    sid = (await root.get_stream(s)).id
    reply = raw_root.call(OP_CREATE_PARTITIONS, 0, ident(sid) + ident("t") + struct.pack("<I", 2))
    assert reply.status == 0 and reply.body == b"\x00\x00\x00\x00"
    assert (await root.get_topic(s, "t")).partitions_count == 5
    await root.delete_partitions(s, "t", 5)
    assert (await root.get_topic(s, "t")).partitions == []
    stats = (await root.get_stream(s)).topics[0]
    assert stats.partitions_count == 0


async def test_ids_are_zero_based_and_reused(server):
    root = await connect_root(server.tcp_address)
    for name in ("s0", "s1", "s2"):
        await root.create_stream(name)
    assert [(s.id, s.name) for s in await root.get_streams()] == [(0, "s0"), (1, "s1"), (2, "s2")]
    await root.delete_stream(1)
    await root.create_stream("s1b")
    assert (await root.get_stream("s1b")).id == 1  # the lowest free id
    await root.delete_stream(0)
    await root.create_stream("s0b")
    assert (await root.get_stream("s0b")).id == 0
    await root.create_stream("s3")
    assert (await root.get_stream("s3")).id == 3

    for name in ("t0", "t1", "t2"):
        await root.create_topic("s2", name, 1)
    assert [(t.id, t.name) for t in await root.get_topics("s2")] == [(0, "t0"), (1, "t1"), (2, "t2")]
    await root.delete_topic("s2", 0)
    await root.create_topic("s2", "t0b", 1)
    assert (await root.get_topic("s2", "t0b")).id == 0
    # topic ids are per stream
    await root.create_topic("s3", "other", 1)
    assert (await root.get_topic("s3", "other")).id == 0
    # the same stream id after delete + create starts with no topics, and no old messages
    await root.send_messages("s2", "t1", 0, [SendMessage("old-1"), SendMessage("old-2")])
    await root.delete_stream("s2")
    await root.create_stream("s2b")
    again = await root.get_stream("s2b")
    assert again.id == 2 and again.topics == []
    await root.create_topic("s2b", "fresh", 3)
    assert [p.id for p in (await root.get_topic(2, 0)).partitions] == [0, 1, 2]
    assert (await root.get_topic(2, 0)).messages_count == 0
    polled = await sdk_poll(root, 2, 0, PollingStrategy.First())
    assert polled == []
    # the same for a topic id
    await root.send_messages("s3", "other", 0, [SendMessage("old")])
    await root.delete_topic("s3", "other")
    await root.create_topic("s3", "other2", 1)
    t = await root.get_topic("s3", "other2")
    assert t.id == 0 and t.messages_count == 0 and t.partitions[0].current_offset == 0


# ------------------------------------------------------------------ permissions (SEMANTICS 7.1)


class World:
    """Streams A (topics a1, a2), B (topic b1) and C, plus their ids."""


@pytest.fixture
async def world(root):
    w = World()
    w.a, w.b, w.c = uniq("A"), uniq("B"), uniq("C")
    for s in (w.a, w.b, w.c):
        await root.create_stream(s)
    await root.create_topic(w.a, "a1", 2)
    await root.create_topic(w.a, "a2", 1)
    await root.create_topic(w.b, "b1", 1)
    w.aid = (await root.get_stream(w.a)).id
    w.bid = (await root.get_stream(w.b)).id
    w.cid = (await root.get_stream(w.c)).id
    w.a1 = (await root.get_topic(w.a, "a1")).id
    w.a2 = (await root.get_topic(w.a, "a2")).id
    w.root = root
    return w


async def user_with(srv, root, permissions) -> IggyClient:
    name = uniq("u")[:40]
    await root.create_user(name, "secret", permissions=permissions)
    return await login_as(srv, name, "secret")


UNAUTHORIZED = "Unauthorized"


async def all_refused(*calls) -> None:
    """Each call (a coroutine function) is refused with Unauthorized."""
    for call in calls:
        with sdk_error(UNAUTHORIZED):
            await call()


def server_wide_calls(u) -> tuple:
    """The calls refused to a user without global permissions whatever its stream grants:
    creating a stream (manage_streams) and listing them (read_streams)."""
    return (lambda: u.create_stream(uniq("x")), lambda: u.get_streams())


async def test_user_without_permissions_is_refused_everything(srv, world, raw_root):
    u = await user_with(srv, world.root, None)
    await all_refused(
        *server_wide_calls(u),
        lambda: u.get_stream(world.a),
        lambda: u.update_stream(world.a, uniq("x")),
        lambda: u.delete_stream(world.c),
        lambda: u.purge_stream(world.a),
        lambda: u.get_topics(world.a),
        lambda: u.get_topic(world.a, "a1"),
        lambda: u.create_topic(world.a, "x", 1),
        lambda: u.update_topic(world.a, "a1", "a1"),
        lambda: u.delete_topic(world.a, "a2"),
        lambda: u.purge_topic(world.a, "a1"),
        lambda: u.create_partitions(world.a, "a1", 1),
        lambda: u.delete_partitions(world.a, "a1", 1),
    )
    # reads of a missing entity say "not found" before any permission check
    assert await u.get_stream(uniq("missing")) is None
    # the raw_root code is 41 on both channels (reads and writes)
    name = uniq("lowly")
    await world.root.create_user(name, "secret")
    low = RawClient(srv.tcp_address)
    try:
        assert low.login(name, "secret").status == 0
        assert low.read(GET_STREAMS).code == 41
        assert low.read(GET_STREAM, ident(world.aid)).code == 41
        assert low.call(OP_CREATE_STREAM, 0, wire_name(uniq("x"))).code == 41
        assert low.call(OP_DELETE_STREAM, 0, ident(world.cid)).code == 41
    finally:
        low.close()
    # nothing changed
    assert (await world.root.get_stream(world.c)) is not None
    assert len(await world.root.get_topics(world.a)) == 2


async def test_stream_read_permission(srv, world):
    u = await user_with(srv, world.root, stream_perms(world.aid, read_stream=True))
    assert (await u.get_stream(world.a)).name == world.a
    assert [t.name for t in await u.get_topics(world.a)] == ["a1", "a2"]
    assert (await u.get_topic(world.a, "a1")).partitions_count == 2
    await all_refused(
        *server_wide_calls(u),
        lambda: u.get_stream(world.b),
        lambda: u.get_topics(world.b),
        lambda: u.get_topic(world.b, "b1"),
        lambda: u.create_topic(world.a, "x", 1),
        lambda: u.update_stream(world.a, uniq("x")),
        lambda: u.update_topic(world.a, "a1", "a1"),
    )


async def test_stream_manage_permission(srv, world):
    perms = Permissions(
        streams={world.aid: StreamPermissions(manage_stream=True), world.cid: StreamPermissions(manage_stream=True)}
    )
    u = await user_with(srv, world.root, perms)
    assert (await u.get_stream(world.a)).name == world.a  # manage implies read
    renamed = uniq("A2")
    await u.update_stream(world.a, renamed)
    await u.update_stream(renamed, world.a)
    await u.purge_stream(world.a)
    await u.create_topic(world.a, "mine", 1)
    await u.update_topic(world.a, "mine", "mine2")
    await u.create_partitions(world.a, "mine2", 2)
    await u.delete_partitions(world.a, "mine2", 1)
    await u.purge_topic(world.a, "mine2")
    await u.delete_topic(world.a, "mine2")
    await u.delete_stream(world.c)
    assert await world.root.get_stream(world.c) is None
    await all_refused(
        *server_wide_calls(u),
        lambda: u.get_stream(world.b),
        lambda: u.update_stream(world.b, uniq("x")),
        lambda: u.delete_stream(world.b),
        lambda: u.create_topic(world.b, "x", 1),
        lambda: u.delete_topic(world.b, "b1"),
    )
    assert (await world.root.get_stream(world.b)).topics_count == 1


async def test_stream_manage_topics_permission(srv, world):
    u = await user_with(srv, world.root, stream_perms(world.aid, manage_topics=True))
    await u.create_topic(world.a, "mt", 1)
    assert "mt" in [t.name for t in await u.get_topics(world.a)]  # manage_topics lists topics
    await u.update_topic(world.a, "mt", "mt", compression_algorithm="gzip")
    await u.create_partitions(world.a, "mt", 1)
    await u.delete_topic(world.a, "mt")
    await all_refused(
        lambda: u.update_stream(world.a, uniq("x")),
        lambda: u.purge_stream(world.a),
        lambda: u.get_stream(world.a),
        lambda: u.create_topic(world.b, "x", 1),
    )


async def test_topic_level_permissions(srv, world):
    manage = Permissions(streams={world.aid: StreamPermissions(topics={world.a1: TopicPermissions(manage_topic=True)})})
    u = await user_with(srv, world.root, manage)
    assert (await u.get_topic(world.a, "a1")).name == "a1"
    await u.update_topic(world.a, "a1", "a1", compression_algorithm="gzip")
    await u.purge_topic(world.a, "a1")
    await u.create_partitions(world.a, "a1", 1)
    await u.delete_partitions(world.a, "a1", 1)
    assert (await world.root.get_topic(world.a, "a1")).compression_algorithm == "gzip"
    await all_refused(
        lambda: u.get_topic(world.a, "a2"),
        lambda: u.update_topic(world.a, "a2", "a2"),
        lambda: u.delete_topic(world.a, "a2"),
        lambda: u.create_topic(world.a, "x", 1),
        lambda: u.get_topics(world.a),
        lambda: u.get_stream(world.a),
        lambda: u.purge_stream(world.a),
    )

    read = stream_perms(world.aid, topics={world.a1: TopicPermissions(read_topic=True)})
    r = await user_with(srv, world.root, read)
    assert (await r.get_topic(world.a, "a1")).partitions_count == 2
    await all_refused(
        lambda: r.update_topic(world.a, "a1", "a1"),
        lambda: r.purge_topic(world.a, "a1"),
        lambda: r.create_partitions(world.a, "a1", 1),
        lambda: r.get_topic(world.a, "a2"),
    )


async def test_read_topics_permissions(srv, world):
    """read_topics (global or per stream) reads topics, but not the stream itself."""
    g = await user_with(srv, world.root, global_perms(read_topics=True))
    assert [t.name for t in await g.get_topics(world.b)] == ["b1"]
    assert (await g.get_topic(world.a, "a2")).name == "a2"
    await all_refused(
        lambda: g.get_streams(),
        lambda: g.get_stream(world.a),
        lambda: g.create_topic(world.a, "x", 1),
        lambda: g.update_topic(world.a, "a1", "a1"),
    )
    s = await user_with(srv, world.root, stream_perms(world.aid, read_topics=True))
    assert [t.name for t in await s.get_topics(world.a)] == ["a1", "a2"]
    assert (await s.get_topic(world.a, "a1")).name == "a1"
    await all_refused(
        lambda: s.get_stream(world.a), lambda: s.get_topics(world.b), lambda: s.purge_topic(world.a, "a1")
    )
    poller = await user_with(srv, world.root, global_perms(poll_messages=True, send_messages=True))
    with sdk_error(UNAUTHORIZED):
        await poller.get_topic(world.a, "a1")  # message rights don't read metadata


async def test_topic_permissions_are_scoped_to_their_stream(srv, world, root):
    """Topic ids repeat in every stream: a grant on (B, topic 0) says nothing about (A, topic 0)."""
    b1 = (await root.get_topic(world.b, "b1")).id
    u = await user_with(
        srv, root, Permissions(streams={world.bid: StreamPermissions(topics={b1: TopicPermissions(manage_topic=True)})})
    )
    await u.update_topic(world.b, b1, "b1")
    assert b1 in (world.a1, world.a2)
    with sdk_error(UNAUTHORIZED):
        await u.update_topic(world.a, b1, "x")
    with sdk_error(UNAUTHORIZED):
        await u.get_topic(world.a, b1)


async def test_global_permissions(srv, world):
    reader = await user_with(srv, world.root, global_perms(read_streams=True))
    names = {s.name for s in await reader.get_streams()}
    assert {world.a, world.b} <= names
    assert (await reader.get_stream(world.b)).name == world.b
    assert (await reader.get_topic(world.b, "b1")).name == "b1"
    await all_refused(
        lambda: reader.create_stream(uniq("x")),
        lambda: reader.create_topic(world.b, "x", 1),
        lambda: reader.purge_stream(world.b),
        lambda: reader.delete_topic(world.b, "b1"),
    )

    topics = await user_with(srv, world.root, global_perms(manage_topics=True))
    await topics.create_topic(world.b, "gt", 1)
    await topics.update_topic(world.b, "gt", "gt2")
    assert [t.name for t in await topics.get_topics(world.b)] == ["b1", "gt2"]
    await topics.delete_topic(world.b, "gt2")
    await all_refused(
        lambda: topics.create_stream(uniq("x")),
        lambda: topics.update_stream(world.b, uniq("x")),
        lambda: topics.get_streams(),
        lambda: topics.delete_stream(world.c),
    )

    streams = await user_with(srv, world.root, global_perms(manage_streams=True))
    own = uniq("gs")
    await streams.create_stream(own)
    await streams.create_topic(own, "t", 1)
    assert own in {s.name for s in await streams.get_streams()}
    await streams.delete_stream(own)
    assert await world.root.get_stream(own) is None
    with sdk_error(UNAUTHORIZED):
        await streams.get_stats()  # servers are another permission


async def test_permission_changes_take_effect_on_live_sessions(srv, world):
    name = uniq("live")
    await world.root.create_user(name, "secret")
    u = await login_as(srv, name, "secret")
    with sdk_error(UNAUTHORIZED):
        await u.get_stream(world.b)
    await world.root.update_permissions(name, stream_perms(world.bid, read_stream=True))
    assert (await u.get_stream(world.b)).name == world.b
    await world.root.update_permissions(name, None)
    with sdk_error(UNAUTHORIZED):
        await u.get_stream(world.b)
