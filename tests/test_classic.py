"""The classic protocol (clients before 0.9) on the 0.9 port, with raw frames.

Framing and sniffing (whole frames, frames split at every byte offset, truncated frames,
lying lengths, limits before login), every body that differs from 0.9, and the mixed case: what
a classic client sends a 0.9 client polls (the official SDK 0.9.0), and back, with the same
offsets, consumer offsets, users and groups. The real 0.8 SDK is in test_classic_sdk.py.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
import xxhash
from apache_iggy import HeaderKey, HeaderValue, PollingStrategy, SendMessage

from iggy.protocol.batch import encode_headers
from tests import classicclient as cc
from tests.classicclient import ClassicClient
from tests.conftest import sdk_poll, uniq

U64_MAX = 2**64 - 1


@pytest.fixture
def classic(srv):
    c = ClassicClient(srv.tcp_address)
    assert c.login() == (0, struct.pack("<I", 0))
    yield c
    c.close()


def make_topic(c: ClassicClient, partitions: int = 1) -> tuple[str, str]:
    s, t = uniq("cs"), uniq("ct")
    assert c.request(cc.CREATE_STREAM, cc.name(s))[0] == 0
    assert c.request(cc.CREATE_TOPIC, cc.create_topic_body(s, t, partitions))[0] == 0
    return s, t


def send(c: ClassicClient, s, t, messages, partition: int = 0) -> int:
    part = cc.partitioning(cc.PARTITION_ID, struct.pack("<I", partition))
    return c.request(cc.SEND_MESSAGES, cc.send_body(s, t, part, messages))[0]


def poll(c: ClassicClient, s, t, partition=0, strategy=cc.FIRST, value=0, count=100, cons=None, auto_commit=False):
    status, payload = c.request(
        cc.POLL_MESSAGES,
        cc.poll_body(cons or cc.consumer(cc.CONSUMER, 1), s, t, partition, strategy, value, count, auto_commit),
    )
    assert status == 0, status
    return cc.parse_poll(payload)


def server_alive(srv) -> bool:
    c = ClassicClient(srv.tcp_address)
    try:
        return c.request(cc.PING) == (0, b"")
    finally:
        c.close()


# ------------------------------------------------------------------------- framing and sniffing


def test_ping_and_login(srv):
    c = ClassicClient(srv.tcp_address)
    try:
        assert c.request(cc.PING) == (0, b"")
        assert c.request(cc.GET_STREAMS)[0] == 40  # not logged in
        assert c.login("iggy", "wrong")[0] == 42
        assert c.login("nobody", "iggy")[0] == 42
        assert c.login() == (0, struct.pack("<I", 0))  # root is user 0
        assert c.request(cc.GET_STREAMS)[0] == 0
        assert c.request(9999)[0] == 3  # unknown code: status, connection stays
        assert c.request(606, cc.ident(0) + cc.ident(0) + cc.ident(0))[0] == 3  # SYNC is 0.9 only
        assert c.request(cc.PING) == (0, b"")
        assert c.request(cc.LOGOUT_USER) == (0, b"")
        assert c.request(cc.GET_STREAMS)[0] == 40
    finally:
        c.close()


def test_frames_split_at_every_offset(srv):
    """The same four requests, cut in two at each byte (also inside the 8 sniffed bytes)."""
    s = uniq("split")
    stream = ClassicClient(srv.tcp_address)
    assert stream.login()[0] == 0
    assert stream.request(cc.CREATE_STREAM, cc.name(s))[0] == 0
    stream.close()
    data = (
        cc.frame(cc.PING)
        + cc.frame(cc.LOGIN_USER, cc.login_body("iggy", "iggy"))
        + cc.frame(cc.GET_STREAM, cc.ident(s))
        + cc.frame(cc.PING)
    )
    for cut in range(1, len(data)):
        c = ClassicClient(srv.tcp_address)
        try:
            c.sendall(data[:cut])
            time.sleep(0.002)  # let the first part arrive on its own
            c.sendall(data[cut:])
            assert c.reply() == (0, b"")
            assert c.reply() == (0, struct.pack("<I", 0))
            status, body = c.reply()
            assert status == 0 and body.endswith(cc.name(s)), cut
            assert c.reply() == (0, b"")
        finally:
            c.close()


def test_one_byte_at_a_time(srv):
    data = cc.frame(cc.PING) + cc.frame(cc.LOGIN_USER, cc.login_body("iggy", "iggy")) + cc.frame(cc.PING)
    c = ClassicClient(srv.tcp_address)
    try:
        for b in data:
            c.sendall(bytes([b]))
        assert c.reply() == (0, b"")
        assert c.reply() == (0, struct.pack("<I", 0))
        assert c.reply() == (0, b"")
    finally:
        c.close()


def test_many_frames_in_one_write(classic):
    classic.sendall(cc.frame(cc.PING) * 50)
    assert [classic.reply() for _ in range(50)] == [(0, b"")] * 50


@pytest.mark.parametrize(
    "first",
    [
        struct.pack("<II", 0, 1),  # length 0, code 1: neither protocol
        struct.pack("<II", 8, 0),  # code 0: neither protocol
        struct.pack("<II", 3, 1),  # length below 4 (the code alone is 4)
        struct.pack("<II", 0xFFFFFFFF, 1),  # far above the largest frame
        struct.pack("<II", 1 << 20, 1),  # above limits.max_unauthenticated_frame before login
    ],
)
def test_bad_first_frame_closes_and_server_stays_up(srv, first):
    c = ClassicClient(srv.tcp_address)
    try:
        c.sendall(first + bytes(64))
        assert c.closed()
    finally:
        c.close()
    assert server_alive(srv)


def test_big_frame_after_login_is_read(classic):
    s, t = make_topic(classic)
    payload = bytes(range(256)) * 4096  # 1 MiB, above the unauthenticated limit
    assert send(classic, s, t, [cc.message(payload)]) == 0
    _, _, count, msgs = poll(classic, s, t)
    assert count == 1 and msgs[0]["payload"] == payload


def test_truncated_frame_then_close(srv):
    c = ClassicClient(srv.tcp_address)
    c.sendall(struct.pack("<II", 100, cc.PING) + b"abc")  # 96 bytes promised, 3 sent
    c.close()
    assert server_alive(srv)


def test_lying_lengths_are_answered_or_close(srv, classic):
    # a length shorter than the body: the body's tail is read as the next frame, whose length
    # (here 0xFFFFFFFF bytes) is over the limit -> the connection is closed, nothing else
    body = cc.login_body("iggy", "iggy")
    classic.sendall(struct.pack("<II", 4 + 3, cc.GET_STREAM) + b"\x01\x04\x00" + b"\xff" * 4 + b"\x01\x00\x00\x00")
    status, _ = classic.reply()
    assert status == 3  # the 3-byte identifier does not decode
    assert classic.closed()
    # a length longer than the body: the next frame is swallowed into this body, which a
    # handler that ignores trailing bytes accepts; the connection then waits for more bytes
    c = ClassicClient(srv.tcp_address)
    try:
        c.sendall(struct.pack("<II", 4 + len(body) + 8, cc.LOGIN_USER) + body + cc.frame(cc.PING))
        assert c.reply() == (0, struct.pack("<I", 0))
        assert c.request(cc.PING) == (0, b"")
    finally:
        c.close()
    assert server_alive(srv)


def test_classic_and_current_clients_side_by_side(srv, classic):
    """A 0.9 raw client on the same port is unaffected by classic connections."""
    from tests.rawclient import RawClient

    raw = RawClient(srv.tcp_address)
    try:
        assert raw.login().status == 0
        assert classic.request(cc.PING) == (0, b"")
        assert raw.read(1).status == 0
    finally:
        raw.close()


# ------------------------------------------------------------------------- streams, topics, users


def test_stream_and_topic_layouts(classic):
    s, t = uniq("ls"), uniq("lt")
    status, body = classic.request(cc.CREATE_STREAM, cc.name(s))
    assert status == 0
    sid, created, topics, size, count = struct.unpack_from("<IQIQQ", body)
    assert (topics, size, count) == (0, 0, 0) and body[32:] == cc.name(s)  # no options block
    assert classic.request(cc.CREATE_STREAM, cc.name(s))[0] == 1012
    status, body = classic.request(
        cc.CREATE_TOPIC, cc.create_topic_body(sid, t, 3, compression=2, expiry=60_000_000, max_size=0)
    )
    assert status == 0
    tid, _created, parts, expiry, compression, max_size, replication, size, count = struct.unpack_from(
        "<IQIQBQBQQ", body
    )
    assert (parts, expiry, compression, max_size, replication) == (3, 60_000_000, 2, U64_MAX, 1)
    header_len = 50 + 1 + len(t)
    assert body[50:header_len] == cc.name(t) and len(body) == header_len + 3 * 40
    assert [struct.unpack_from("<I", body, header_len + 40 * i)[0] for i in range(3)] == [0, 1, 2]
    status, listed = classic.request(cc.GET_TOPICS, cc.ident(sid))
    assert status == 0 and listed == body[:header_len]  # no count, no options
    status, details = classic.request(cc.GET_STREAM, cc.ident(s))
    assert status == 0 and details == struct.pack("<IQIQQ", sid, created, 1, 0, 0) + cc.name(s) + listed
    assert classic.request(cc.GET_STREAM, cc.ident("missing-" + s)) == (0, b"")
    assert classic.request(cc.GET_TOPIC, cc.ident(s) + cc.ident("nope")) == (0, b"")
    assert classic.request(cc.GET_TOPICS, cc.ident("missing-" + s)) == (0, b"")
    # update: new name, no expiry (0 = server default = never), gzip -> none
    upd = cc.ident(s) + cc.ident(t) + struct.pack("<BQQB", 1, 0, 0, 0) + cc.name(t + "-2")
    assert classic.request(cc.UPDATE_TOPIC, upd) == (0, b"")
    status, body = classic.request(cc.GET_TOPIC, cc.ident(s) + cc.ident(t + "-2"))
    assert struct.unpack_from("<QB", body, 16) == (U64_MAX, 1)
    bad = cc.create_topic_body(s, "x" + t, 1, compression=7)
    assert classic.request(cc.CREATE_TOPIC, bad)[0] == 4042
    assert classic.request(cc.DELETE_STREAM, cc.ident(s)) == (0, b"")
    assert classic.request(cc.DELETE_STREAM, cc.ident(s))[0] == 1009


async def test_created_by_one_protocol_seen_by_the_other(classic, root):
    s, t = uniq("xs"), uniq("xt")
    await root.create_stream(s)
    await root.create_topic(s, t, 2)
    status, body = classic.request(cc.GET_TOPIC, cc.ident(s) + cc.ident(t))
    assert status == 0 and struct.unpack_from("<I", body, 12)[0] == 2
    s2 = uniq("xs")
    assert classic.request(cc.CREATE_STREAM, cc.name(s2))[0] == 0
    assert classic.request(cc.CREATE_TOPIC, cc.create_topic_body(s2, t, 4))[0] == 0
    topic = await root.get_topic(s2, t)
    assert topic.partitions_count == 4 and topic.name == t


def test_users(srv, classic):
    name, password = uniq("u")[:20], "secret-pass"
    pw = password.encode()
    body = cc.name(name) + bytes([len(pw)]) + pw + b"\x01" + b"\x00"  # active, no permissions
    status, details = classic.request(cc.CREATE_USER, body)
    assert status == 0
    uid, _created, user_status = struct.unpack_from("<IQB", details)
    assert user_status == 1 and details[13:] == cc.name(name) + struct.pack("<I", 0)
    assert classic.request(cc.CREATE_USER, body)[0] == 46
    status, got = classic.request(cc.GET_USER, cc.ident(name))
    assert status == 0 and got == details
    status, users = classic.request(cc.GET_USERS)
    assert status == 0 and cc.name(name) in users and b"\x00\x00\x00\x00" + cc.name(name) not in users
    other = ClassicClient(srv.tcp_address)
    try:
        assert other.login(name, "wrong-pass")[0] == 42
        assert other.login(name, password) == (0, struct.pack("<I", uid))
        assert other.request(cc.CREATE_STREAM, cc.name(uniq("no")))[0] == 41  # no permissions
        assert other.request(cc.GET_USER, cc.ident(name))[0] == 0  # itself
        assert classic.request(cc.DELETE_USER, cc.ident(name)) == (0, b"")
        assert other.request(cc.PING) == (0, b"")
        assert other.request(cc.GET_STREAMS)[0] == 40  # deleted meanwhile
    finally:
        other.close()


async def test_personal_access_token_login(srv, classic):
    status, body = classic.request(cc.CREATE_PAT, cc.name(uniq("tok")[:20]) + struct.pack("<Q", 0))
    assert status == 0
    token = body[1 : 1 + body[0]].decode()
    c = ClassicClient(srv.tcp_address)
    try:
        assert c.request(cc.LOGIN_WITH_PAT, cc.name("not-a-token"))[0] == 53
        assert c.request(cc.LOGIN_WITH_PAT, cc.name(token)) == (0, struct.pack("<I", 0))
        assert c.request(cc.GET_STREAMS)[0] == 0
    finally:
        c.close()


# ------------------------------------------------------------------------- messages


def test_send_and_poll_layout(classic):
    s, t = make_topic(classic)
    headers = encode_headers([(2, b"k", 2, b"v")])
    origin = 1_700_000_000_000_000
    msgs = [
        cc.message(b"one", id_=7, headers=headers, origin=origin),
        cc.message(b"two", origin=origin + 5),
        cc.message(b"three", id_=2**128 - 1, origin=origin + 9),
    ]
    assert send(classic, s, t, msgs) == 0
    before = time.time_ns() // 1000
    assert send(classic, s, t, [cc.message(b"four", id_=4)]) == 0
    pid, current, count, got = poll(classic, s, t)
    assert (pid, current, count) == (0, 3, 4)
    assert [m["offset"] for m in got] == [0, 1, 2, 3]
    assert [m["payload"] for m in got] == [b"one", b"two", b"three", b"four"]
    assert [m["origin"] for m in got[:3]] == [origin, origin + 5, origin + 9]
    assert got[0]["id"] == 7 and got[1]["id"] != 0 and got[2]["id"] == 2**128 - 1
    assert got[0]["headers"] == headers and got[1]["headers"] == b""
    assert got[0]["timestamp"] == got[2]["timestamp"] < got[3]["timestamp"]  # one time per batch
    assert got[3]["timestamp"] >= before - 1_000_000
    for m in got:
        assert m["reserved"] == 0
        assert m["checksum"] == xxhash.xxh3_64_intdigest(m["raw"][8:])
    # strategies and partial reads
    assert [m["offset"] for m in poll(classic, s, t, strategy=cc.OFFSET, value=1, count=2)[3]] == [1, 2]
    assert [m["offset"] for m in poll(classic, s, t, strategy=cc.LAST, count=2)[3]] == [2, 3]
    assert poll(classic, s, t, strategy=cc.OFFSET, value=10)[2:] == (0, [])


def test_send_refusals(classic):
    s, t = make_topic(classic)
    part = cc.partitioning(cc.PARTITION_ID, struct.pack("<I", 0))
    one = cc.message(b"x")
    # the count says two, one message follows; one message and trailing bytes
    assert classic.request(cc.SEND_MESSAGES, cc.send_body(s, t, part, [one], count=2))[0] == 3
    assert classic.request(cc.SEND_MESSAGES, cc.send_body(s, t, part, [one]) + b"\x00")[0] == 3
    assert classic.request(cc.SEND_MESSAGES, cc.send_body(s, t, part, [], count=0))[0] == 4009
    assert send(classic, s, t, [cc.message(b"")]) == 4024
    assert send(classic, s, t, [cc.message(b"a", origin=0), cc.message(b"b", origin=2**33)]) == 4038
    assert send(classic, s, t, [cc.message(b"a", headers=b"\x00\x01\x00\x00\x00k")]) == 4040
    assert send(classic, s, t, [one], partition=5) == 3007
    body = cc.send_body(s, t, part, [one])
    assert classic.request(cc.SEND_MESSAGES, struct.pack("<I", 99) + body[4:])[0] == 3  # metadata length
    assert classic.request(cc.SEND_MESSAGES, cc.send_body("nope-" + s, t, part, [one]))[0] == 1009
    assert poll(classic, s, t)[2] == 0  # nothing was appended


def test_partitioning_kinds(classic):
    s, t = make_topic(classic, partitions=3)
    for i in range(3):
        status = classic.request(
            cc.SEND_MESSAGES, cc.send_body(s, t, cc.partitioning(cc.BALANCED), [cc.message(b"b%d" % i)])
        )[0]
        assert status == 0
    assert sorted(poll(classic, s, t, partition=p)[2] for p in range(3)) == [1, 1, 1]
    key = cc.partitioning(cc.MESSAGES_KEY, b"user-1")
    for _ in range(2):
        assert classic.request(cc.SEND_MESSAGES, cc.send_body(s, t, key, [cc.message(b"k")]))[0] == 0
    counts = [poll(classic, s, t, partition=p)[2] for p in range(3)]
    assert sorted(counts) == [1, 1, 3]


async def test_classic_send_current_poll_and_back(classic, root):
    s, t = make_topic(classic)
    headers = encode_headers([(2, b"k", 2, b"v")])
    assert send(classic, s, t, [cc.message(b"from-classic", id_=42, headers=headers, origin=123_456)]) == 0
    await root.send_messages(s, t, 0, [SendMessage("from-current", id=43)])
    got = await sdk_poll(root, s, t, PollingStrategy.First())
    assert [(m.offset(), m.payload(), m.id()) for m in got] == [(0, b"from-classic", 42), (1, b"from-current", 43)]
    assert got[0].origin_timestamp() == 123_456
    assert got[0].user_headers() == {HeaderKey.String("k"): HeaderValue.String("v")}
    _, current, _, back = poll(classic, s, t)
    assert current == 1
    assert [(m["offset"], m["payload"], m["id"]) for m in back] == [(0, b"from-classic", 42), (1, b"from-current", 43)]
    assert back[0]["timestamp"] == got[0].timestamp() and back[1]["timestamp"] == got[1].timestamp()
    assert back[1]["origin"] == got[1].origin_timestamp()


async def test_consumer_offsets_shared(classic, root):
    s, t = make_topic(classic)
    assert send(classic, s, t, [cc.message(b"m%d" % i) for i in range(5)]) == 0
    me = cc.consumer(cc.CONSUMER, 9)
    assert classic.request(cc.GET_CONSUMER_OFFSET, cc.offset_body(me, s, t, 0)) == (0, b"")
    assert classic.request(cc.STORE_CONSUMER_OFFSET, cc.offset_body(me, s, t, 0, 2)) == (0, b"")
    assert classic.request(cc.GET_CONSUMER_OFFSET, cc.offset_body(me, s, t, 0)) == (0, struct.pack("<IQQ", 0, 4, 2))
    assert classic.request(cc.STORE_CONSUMER_OFFSET, cc.offset_body(me, s, t, 0, 9))[0] == 4100
    # the 0.9 client reads the same offset and continues after it
    got = await sdk_poll(root, s, t, PollingStrategy.Next(), consumer=9, auto_commit=True)
    assert [m.offset() for m in got] == [3, 4]
    assert classic.request(cc.GET_CONSUMER_OFFSET, cc.offset_body(me, s, t, 0)) == (0, struct.pack("<IQQ", 0, 4, 4))
    # auto-commit from the classic side, seen by the 0.9 side
    other = cc.consumer(cc.CONSUMER, 10)
    assert [m["offset"] for m in poll(classic, s, t, cons=other, strategy=cc.NEXT, count=3, auto_commit=True)[3]] == [
        0,
        1,
        2,
    ]
    assert (await root.send_binary_request(120, cc.offset_body(other, s, t, 0))) == struct.pack("<IQQ", 0, 4, 2)
    assert classic.request(cc.DELETE_CONSUMER_OFFSET, cc.offset_body(me, s, t, 0)) == (0, b"")
    assert classic.request(cc.DELETE_CONSUMER_OFFSET, cc.offset_body(me, s, t, 0))[0] == 3021


def test_group_members_poll_their_partitions_in_turn(srv, classic):
    s, t = make_topic(classic, partitions=3)
    for p in range(3):
        assert send(classic, s, t, [cc.message(b"p%d-%d" % (p, i)) for i in range(2)], partition=p) == 0
    g = uniq("g")
    status, body = classic.request(cc.CREATE_CONSUMER_GROUP, cc.ident(s) + cc.ident(t) + cc.name(g))
    assert status == 0
    gid = struct.unpack_from("<I", body)[0]
    group = cc.consumer(cc.GROUP, g)
    assert classic.request(cc.POLL_MESSAGES, cc.poll_body(group, s, t, None, cc.NEXT, 0, 10))[0] == 5006
    assert classic.request(cc.JOIN_CONSUMER_GROUP, cc.ident(s) + cc.ident(t) + cc.ident(gid)) == (0, b"")
    seen = {}
    for _ in range(3):  # the only member owns every partition and is served each in turn
        pid, _, count, msgs = poll(classic, s, t, partition=None, strategy=cc.NEXT, cons=group, auto_commit=True)
        seen[pid] = [m["payload"] for m in msgs]
    assert seen == {p: [b"p%d-0" % p, b"p%d-1" % p] for p in range(3)}
    # a store without a partition is for the partition polled last
    last = pid
    assert classic.request(cc.STORE_CONSUMER_OFFSET, cc.offset_body(group, s, t, None, 0)) == (0, b"")
    assert classic.request(cc.GET_CONSUMER_OFFSET, cc.offset_body(group, s, t, last)) == (
        0,
        struct.pack("<IQQ", last, 1, 0),
    )
    # a second member takes partitions over: each member is served only its own
    other = ClassicClient(srv.tcp_address)
    try:
        assert other.login()[0] == 0
        assert other.request(cc.JOIN_CONSUMER_GROUP, cc.ident(s) + cc.ident(t) + cc.ident(g)) == (0, b"")
        status, details = classic.request(cc.GET_CONSUMER_GROUP, cc.ident(s) + cc.ident(t) + cc.ident(g))
        assert status == 0 and struct.unpack_from("<III", details)[1:] == (3, 2)
        mine = {poll(classic, s, t, partition=None, strategy=cc.FIRST, cons=group)[0] for _ in range(4)}
        theirs = {poll(other, s, t, partition=None, strategy=cc.FIRST, cons=group)[0] for _ in range(4)}
        assert mine and theirs and not mine & theirs and mine | theirs == {0, 1, 2}
        # a partition it does not own: nothing, as before 0.9
        foreign = next(iter(theirs))
        assert poll(classic, s, t, partition=foreign, cons=group)[:3] == (0, 0, 0)
        assert other.request(cc.LEAVE_CONSUMER_GROUP, cc.ident(s) + cc.ident(t) + cc.ident(g)) == (0, b"")
    finally:
        other.close()


def test_a_group_member_without_partitions(srv, classic):
    """Two members of a one-partition topic's group: the one that got none polls nothing, has
    no offset to get, and a store or delete without a partition is 6 (InvalidIdentifier)."""
    s, t = make_topic(classic, partitions=1)
    assert send(classic, s, t, [cc.message(b"only")]) == 0
    g = uniq("g")
    assert classic.request(cc.CREATE_CONSUMER_GROUP, cc.ident(s) + cc.ident(t) + cc.name(g))[0] == 0
    group = cc.consumer(cc.GROUP, g)
    other = ClassicClient(srv.tcp_address)
    try:
        assert other.login()[0] == 0
        for c in (classic, other):
            assert c.request(cc.JOIN_CONSUMER_GROUP, cc.ident(s) + cc.ident(t) + cc.ident(g)) == (0, b"")
        polled = {c: poll(c, s, t, partition=None, cons=group)[2] for c in (classic, other)}
        assert sorted(polled.values()) == [0, 1]  # one member owns the partition
        idle = classic if polled[classic] == 0 else other
        assert poll(idle, s, t, partition=None, cons=group)[:3] == (0, 0, 0)
        assert idle.request(cc.GET_CONSUMER_OFFSET, cc.offset_body(group, s, t, None)) == (0, b"")
        assert idle.request(cc.STORE_CONSUMER_OFFSET, cc.offset_body(group, s, t, None, 0)) == (6, b"")
        assert idle.request(cc.DELETE_CONSUMER_OFFSET, cc.offset_body(group, s, t, None)) == (6, b"")
    finally:
        other.close()


def test_flush_unsaved_buffer(classic):
    s, t = make_topic(classic)
    assert send(classic, s, t, [cc.message(b"x")]) == 0
    for fsync in (0, 1):
        body = cc.ident(s) + cc.ident(t) + struct.pack("<IB", 0, fsync)
        assert classic.request(cc.FLUSH_UNSAVED_BUFFER, body) == (0, b"")
    assert classic.request(cc.FLUSH_UNSAVED_BUFFER, cc.ident(s) + cc.ident(t) + struct.pack("<IB", 7, 0))[0] == 3007


def test_get_me_reports_tcp_client(classic):
    status, body = classic.request(cc.GET_ME)
    assert status == 0
    client_id, user_id, transport = struct.unpack_from("<IIB", body)
    assert user_id == 0 and transport == 1


def test_classic_connection_counts_as_one_client(srv, classic):
    """The uring engine hands the socket over: the client list holds it once, logged in."""
    from tests.rawclient import RawClient

    raw = RawClient(srv.tcp_address)
    try:
        assert raw.login().status == 0
        status, body = classic.request(cc.GET_ME)
        me = struct.unpack_from("<I", body)[0]
        r = raw.read(22)
        ids, pos = [], 0
        while pos < len(r.body):
            cid, uid, _transport, alen = struct.unpack_from("<IIBI", r.body, pos)
            ids.append((cid, uid))
            pos += 13 + alen + 4
        assert ids.count((me, 0)) == 1
    finally:
        raw.close()


def test_socket_closed_mid_request_leaves_server_up(srv):
    host, port = srv.tcp_address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.sendall(cc.frame(cc.LOGIN_USER, cc.login_body("iggy", "iggy"))[:11])
    s.close()
    assert server_alive(srv)
