"""Trailing bytes in request bodies, over raw TCP frames, on a real server.

Upstream decodes every request body with `WireDecode::decode_from`, which reads the fields a
command knows and ignores the rest (core/binary_protocol/src/codec.rs), and clients depend on
it: the Node.js SDK sends DeleteTopic as `[stream][topic][u32 partitions_count]`. Every command
with fixed fields is sent here with bytes appended and must do what it does without them. The
exceptions are upstream's too: an options block runs to the end of the body (so bytes there
are options, and junk is refused), a length-prefixed block must be consumed exactly, and
SendMessages refuses bytes after its batch (InvalidCommand, 3).

The module's server runs on the engine of IGGY_TEST_ENGINE (uring by default, rerun on
asyncio); the uring-only test checks that the C data plane serves the same requests itself.
The helpers (`World`, the body builders) are shared with test_upstream_answers.py.
"""

from __future__ import annotations

import os
import struct

import pytest

from iggy.control import permissions as perm
from iggy.protocol import codes
from iggy.protocol.batch import build_batch
from tests.conftest import ROOT_PASSWORD, ROOT_USER, uniq
from tests.rawclient import (
    RawClient,
    consumer_target,
    ident,
    login_body,
    pat_login_body,
    poll_body,
    store_offset_body,
    wire_name,
)

OP = codes.CODE_OPERATIONS
READ = 2
# what the Node.js SDK appends to DeleteTopic (a u32 partitions_count), then one more odd byte
TRAIL = struct.pack("<I", 7) + b"\xff"

STREAM_ID_NOT_FOUND, TOPIC_ID_NOT_FOUND, GROUP_ID_NOT_FOUND = 1009, 2010, 5000
INVALID_COMMAND = 3


def ok(reply):
    assert reply.command == 8 and reply.code == 0, reply
    return reply


def send_body(stream, topic="t", partition=0, payloads=(b"a", b"bb")) -> bytes:
    md = ident(stream) + ident(topic) + bytes([2, 4]) + struct.pack("<I", partition)
    batch = build_batch([(0, p, b"") for p in payloads], origin_timestamp=1_000_000)
    return struct.pack("<I", len(md) + 4) + md + struct.pack("<I", len(payloads)) + batch


def string8(text: str) -> bytes:
    return bytes([len(text)]) + text.encode()


def polled_count(reply) -> int:
    return struct.unpack_from("<IQI", reply.body)[2]


def topic_partitions(c: RawClient, stream) -> int:
    body = ok(c.read(codes.GET_TOPIC, ident(stream) + ident("t"))).body
    return struct.unpack_from("<I", body, 12)[0]


class World:
    """A fresh stream `s` with topic `t` (2 partitions, 2 messages in partition 0), group `g`,
    a user and a personal access token of root, made for one test."""

    def __init__(self, c: RawClient):
        self.c = c
        self.s = uniq("tb")
        self.user = uniq("u")[:20]
        self.token_name = uniq("pat")
        ok(c.call(OP[codes.CREATE_STREAM], 0, wire_name(self.s)))
        ok(c.call(OP[codes.CREATE_TOPIC], 0, ident(self.s) + struct.pack("<I", 2) + wire_name("t")))
        ok(c.call(OP[codes.CREATE_CONSUMER_GROUP], 0, ident(self.s) + ident("t") + wire_name("g")))
        ok(c.call(160, 0, send_body(self.s)))
        ok(c.call(OP[codes.CREATE_USER], 0, wire_name(self.user) + string8("secret1") + b"\x01\x00"))
        reply = ok(c.call(OP[codes.CREATE_PERSONAL_ACCESS_TOKEN], 0, wire_name(self.token_name) + bytes(8)))
        self.token = reply.body[5 : 5 + reply.body[4]].decode()


def _login(w, body: bytes) -> None:
    """A second connection logs in with `body` and makes one request."""
    host, port = w.c.sock.getpeername()[:2]
    other = RawClient(f"{host}:{port}")
    try:
        reply = other.call(1, 0, body)
        assert reply.command == 8 and reply.status == 0, reply
        other.session = struct.unpack_from("<Q", reply.body, 8)[0]
        ok(other.read(codes.GET_ME))
    finally:
        other.close()


def _st(w) -> bytes:
    return ident(w.s) + ident("t")


def _stg(w) -> bytes:
    return _st(w) + ident("g")


def _read(w, code: int, body: bytes = b"") -> bytes:
    return ok(w.c.read(code, body)).body


def _offset(w):
    body = _read(w, codes.GET_CONSUMER_OFFSET, consumer_target(w.s, "t"))
    return struct.unpack_from("<Q", body, 12)[0] if body else None


def _join(w) -> bytes:
    ok(w.c.call(OP[codes.JOIN_CONSUMER_GROUP], 0, _stg(w)))
    return _stg(w)


def _store(w) -> bytes:
    ok(w.c.call(161, 0, store_offset_body(w.s, "t", 0, 1)))
    return consumer_target(w.s, "t") + b"\x01"


def _assert(condition, message="") -> None:
    assert condition, message


def _polled(w) -> int:
    return polled_count(ok(w.c.read(codes.POLL_MESSAGES, poll_body(w.s, "t"))))


# name: (operation, command code, body builder, check of (world, reply) after the call).
# The builder may prepare state (join, store) with ordinary requests; its body gets TRAIL.
CASES = {
    "ping": (READ, codes.PING, lambda w: b"", None),
    "get_stats": (READ, codes.GET_STATS, lambda w: b"", lambda w, r: _assert(r.body)),
    "get_cluster_metadata": (READ, codes.GET_CLUSTER_METADATA, lambda w: b"", lambda w, r: _assert(r.body)),
    "describe_options": (READ, codes.DESCRIBE_OPTIONS, lambda w: b"\x01", lambda w, r: _assert(r.body)),
    "get_me": (READ, codes.GET_ME, lambda w: b"", lambda w, r: _assert(r.body)),
    "get_client": (READ, codes.GET_CLIENT, lambda w: struct.pack("<I", 0xFFFFFF), None),
    "get_clients": (READ, codes.GET_CLIENTS, lambda w: b"", lambda w, r: _assert(r.body)),
    "get_user": (READ, codes.GET_USER, lambda w: ident(w.user), lambda w, r: _assert(r.body)),
    "get_users": (READ, codes.GET_USERS, lambda w: b"", lambda w, r: _assert(r.body)),
    "get_personal_access_tokens": (
        READ,
        codes.GET_PERSONAL_ACCESS_TOKENS,
        lambda w: b"",
        lambda w, r: _assert(w.token_name.encode() in r.body),
    ),
    "poll_messages": (
        READ,
        codes.POLL_MESSAGES,
        lambda w: poll_body(w.s, "t"),
        lambda w, r: _assert(polled_count(r) == 2, r),
    ),
    "get_consumer_offset": (READ, codes.GET_CONSUMER_OFFSET, lambda w: consumer_target(w.s, "t"), None),
    "get_stream": (READ, codes.GET_STREAM, lambda w: ident(w.s), lambda w, r: _assert(r.body)),
    "get_streams": (READ, codes.GET_STREAMS, lambda w: b"", lambda w, r: _assert(w.s.encode() in r.body)),
    "get_topic": (READ, codes.GET_TOPIC, _st, lambda w, r: _assert(r.body)),
    "get_topics": (
        READ,
        codes.GET_TOPICS,
        lambda w: ident(w.s),
        lambda w, r: _assert(struct.unpack_from("<I", r.body)[0] == 1, r),
    ),
    "get_consumer_group": (READ, codes.GET_CONSUMER_GROUP, _stg, lambda w, r: _assert(r.body)),
    "get_consumer_groups": (READ, codes.GET_CONSUMER_GROUPS, _st, lambda w, r: _assert(r.body)),
    "sync_consumer_group": (READ, codes.SYNC_CONSUMER_GROUP, _join, lambda w, r: _assert(r.body)),
    "store_consumer_offset": (
        161,
        0,
        lambda w: store_offset_body(w.s, "t", 0, 1),
        lambda w, r: _assert(_offset(w) == 1),
    ),
    "delete_consumer_offset": (162, 0, _store, lambda w, r: _assert(_offset(w) is None)),
    "delete_stream": (
        OP[codes.DELETE_STREAM],
        0,
        lambda w: ident(w.s),
        lambda w, r: _assert(_read(w, codes.GET_STREAM, ident(w.s)) == b""),
    ),
    "purge_stream": (OP[codes.PURGE_STREAM], 0, lambda w: ident(w.s), lambda w, r: _assert(_polled(w) == 0)),
    "delete_topic": (OP[codes.DELETE_TOPIC], 0, _st, lambda w, r: _assert(_read(w, codes.GET_TOPIC, _st(w)) == b"")),
    "purge_topic": (OP[codes.PURGE_TOPIC], 0, _st, lambda w, r: _assert(_polled(w) == 0)),
    "create_partitions": (
        OP[codes.CREATE_PARTITIONS],
        0,
        lambda w: _st(w) + struct.pack("<I", 1),
        lambda w, r: _assert(topic_partitions(w.c, w.s) == 3),
    ),
    "delete_partitions": (
        OP[codes.DELETE_PARTITIONS],
        0,
        lambda w: _st(w) + struct.pack("<I", 1),
        lambda w, r: _assert(topic_partitions(w.c, w.s) == 1),
    ),
    "delete_segments": (OP[codes.DELETE_SEGMENTS], 0, lambda w: _st(w) + struct.pack("<II", 0, 1), None),
    "create_consumer_group": (
        OP[codes.CREATE_CONSUMER_GROUP],
        0,
        lambda w: _st(w) + wire_name("g2"),
        lambda w, r: _assert(_read(w, codes.GET_CONSUMER_GROUP, _st(w) + ident("g2"))),
    ),
    "delete_consumer_group": (
        OP[codes.DELETE_CONSUMER_GROUP],
        0,
        _stg,
        lambda w, r: _assert(_read(w, codes.GET_CONSUMER_GROUP, _stg(w)) == b""),
    ),
    "join_consumer_group": (
        OP[codes.JOIN_CONSUMER_GROUP],
        0,
        _stg,
        lambda w, r: _assert(_read(w, codes.SYNC_CONSUMER_GROUP, _stg(w))),
    ),
    "leave_consumer_group": (
        OP[codes.LEAVE_CONSUMER_GROUP],
        0,
        _join,
        lambda w, r: _assert(_read(w, codes.SYNC_CONSUMER_GROUP, _stg(w)) == b""),
    ),
    "delete_user": (
        OP[codes.DELETE_USER],
        0,
        lambda w: ident(w.user),
        lambda w, r: _assert(_read(w, codes.GET_USER, ident(w.user)) == b""),
    ),
    "update_permissions": (OP[codes.UPDATE_PERMISSIONS], 0, lambda w: ident(w.user) + b"\x00", None),
    "change_password": (
        OP[codes.CHANGE_PASSWORD],
        0,
        lambda w: ident(w.user) + string8("secret1") + string8("secret2"),
        lambda w, r: _login(w, login_body(w.user, "secret2")),
    ),
    "create_personal_access_token": (
        OP[codes.CREATE_PERSONAL_ACCESS_TOKEN],
        0,
        lambda w: wire_name(uniq("pat2")) + bytes(8),
        lambda w, r: _assert(r.body[4] > 0, r),
    ),
    "delete_personal_access_token": (
        OP[codes.DELETE_PERSONAL_ACCESS_TOKEN],
        0,
        lambda w: wire_name(w.token_name),
        lambda w, r: _assert(w.token_name.encode() not in _read(w, codes.GET_PERSONAL_ACCESS_TOKENS)),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_command_ignores_trailing_bytes(raw_root, name):
    operation, code, body, check = CASES[name]
    w = World(raw_root)
    reply = ok(raw_root.call(operation, code, body(w) + TRAIL))
    if check is not None:
        check(w, reply)


@pytest.mark.parametrize("shape", ["password", "token"])
def test_login_and_logout_ignore_trailing_bytes(srv, raw_root, shape):
    w = World(raw_root)
    body = login_body(ROOT_USER, ROOT_PASSWORD) if shape == "password" else pat_login_body(w.token)
    c = RawClient(srv.tcp_address)
    try:
        reply = c.call(1, 0, body + TRAIL)
        assert reply.command == 8 and reply.status == 0, reply
        c.session = struct.unpack_from("<Q", reply.body, 8)[0]
        ok(c.read(codes.GET_ME))
        assert c.call(3, 0, TRAIL).status == 0  # logout
    finally:
        c.close()


def test_token_login_with_trailing_zeros_is_tried_after_the_password_shape(srv, raw_root):
    """A token body followed by zeros also parses as a password login (username = the token,
    empty password): as upstream, the wrong credentials lead on to the token shape."""
    w = World(raw_root)
    c = RawClient(srv.tcp_address)
    try:
        reply = c.call(1, 0, pat_login_body(w.token) + b"\0\0\0\0")
        assert reply.command == 8 and reply.status == 0, reply
    finally:
        c.close()


def test_node_sdk_delete_topic_shape(raw_root):
    w = World(raw_root)
    ok(raw_root.call(OP[codes.DELETE_TOPIC], 0, _st(w) + struct.pack("<I", 2)))
    assert _read(w, codes.GET_TOPIC, _st(w)) == b""


def test_send_refuses_bytes_after_the_batch_and_in_its_metadata(raw_root):
    """SendMessages is the one body upstream reads to a stated length: bytes after the batch,
    or a metadata section longer than its fields, are InvalidCommand; nothing is appended."""
    w = World(raw_root)
    assert raw_root.call(160, 0, send_body(w.s) + TRAIL).status == INVALID_COMMAND
    body = bytearray(send_body(w.s))
    body[0] += 1  # metadata_length one too long
    assert raw_root.call(160, 0, bytes(body)).status == INVALID_COMMAND
    assert _polled(w) == 2


def test_an_options_tail_is_read_as_options(raw_root):
    """Create/update bodies end in an options block that runs to the end of the body, so bytes
    there are options, not ignored: junk is InvalidCommand (upstream WireOptions::from_slice)."""
    name = uniq("opt")
    assert raw_root.call(OP[codes.CREATE_STREAM], 0, wire_name(name) + TRAIL).code == INVALID_COMMAND
    assert ok(raw_root.read(codes.GET_STREAM, ident(name))).body == b""
    w = World(raw_root)
    assert raw_root.call(OP[codes.UPDATE_TOPIC], 0, _st(w) + wire_name("t2") + TRAIL).code == INVALID_COMMAND


def test_a_length_prefixed_permissions_block_must_be_exact(raw_root):
    raw = perm.encode(perm.all_permissions())
    name = uniq("pu")[:20]
    head = wire_name(name) + string8("secret1") + b"\x01\x01"  # status active, has permissions
    assert (
        raw_root.call(OP[codes.CREATE_USER], 0, head + struct.pack("<I", len(raw) + 1) + raw + b"\x00").code
        == INVALID_COMMAND
    )
    ok(raw_root.call(OP[codes.CREATE_USER], 0, head + struct.pack("<I", len(raw)) + raw))


def test_c_data_plane_serves_requests_with_trailing_bytes(srv, raw_root):
    """On the uring engine the shards parse poll and store-offset bodies in C; trailing bytes
    must not send those requests to Python (the answer is the same either way, see
    test_dataplane_differential.py)."""
    from tests.test_dataplane import _metrics

    if os.environ.get("IGGY_TEST_ENGINE", "auto") == "asyncio":
        pytest.skip("the C data plane serves requests only on the uring engine")
    from iggy.engine.uring.engine import probe

    if probe() is not None:
        pytest.skip(f"io_uring engine unavailable: {probe()}")
    w = World(raw_root)
    before = _metrics(srv)["shard_requests_native"]
    for _ in range(3):
        assert polled_count(ok(raw_root.read(codes.POLL_MESSAGES, poll_body(w.s, "t") + TRAIL))) == 2
        ok(raw_root.call(161, 0, store_offset_body(w.s, "t", 0, 1) + TRAIL))
    assert _metrics(srv)["shard_requests_native"] - before >= 6
