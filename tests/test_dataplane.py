"""The shards' C data plane (iggy.engine.uring.dataplane, iggy.engine.uring.router).

Unit: the routing table's lookups (ids, names, digit strings) and its permission snapshot
checked against the Python rules for random permission sets. End to end on the uring engine:
the requests of an ordinary producer and consumer are served by the C path (the shard
counters in GET /metrics say so), with the same results as the Python path (named
consumers' offsets, balanced and keyed partitioning), and metadata changes reach the shards
before the reply that made them: permissions granted and revoked, users deleted, topics
deleted and recreated.
"""

from __future__ import annotations

import os
import struct

import httpx
import pytest
import xxhash
from apache_iggy import (
    Consumer,
    Durability,
    GlobalPermissions,
    Partitioning,
    Permissions,
    PollingStrategy,
    SendMessage,
    StreamPermissions,
    TopicPermissions,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from iggy.control import permissions as perm
from iggy.engine.uring.router import Counter, Router
from tests.conftest import ROOT_PASSWORD, ROOT_USER, login_as, sdk_error, sdk_poll, uniq
from tests.rawclient import ident

uring_only = pytest.mark.skipif(
    os.environ.get("IGGY_TEST_ENGINE") == "asyncio", reason="the C data plane belongs to the uring engine's shards"
)


# --------------------------------------------------------------------------- routing table (unit)


class _Log:
    pass


def _route_objects():
    """A real PartitionLog, Mutex and OffsetStore per partition (the table type-checks them)."""
    import tempfile

    from iggy._core.mutex import Mutex
    from iggy.storage.log import PartitionLog
    from iggy.storage.offset_store import OffsetStore

    d = tempfile.mkdtemp()
    return PartitionLog(d, 0), Mutex(), OffsetStore(d)


def _num(i: int) -> bytes:
    return b"\x01\x04" + struct.pack("<I", i)


def _name(s: str) -> bytes:
    raw = s.encode()
    return bytes([2, len(raw)]) + raw


def test_router_finds_topics_by_id_name_and_digit_string():
    lg, lock, offsets = _route_objects()
    r = Router()
    r.publish(
        [
            (3, "orders", 7, "eu", False, Counter(), [(2, lg, lock, offsets), (0, lg, lock, offsets)], []),
            (4, "naïve", 0, "x", True, Counter(), [], []),
        ],
        [],
    )
    for s in (_num(3), _name("orders"), _name("3"), _name("0003")):
        for t in (_num(7), _name("eu"), _name("7")):
            assert r.lookup(s, t) == (3, 7, [0, 2])  # partitions sorted by id
    assert r.lookup(_name("naïve"), _name("x")) == (4, 0, [])
    assert r.lookup(_num(3), _num(0)) is None
    assert r.lookup(_name("Orders"), _num(7)) is None  # names are exact
    assert r.lookup(_name("orders"), b"\x01\x02\x07\x00") is None  # a numeric id is 4 bytes
    assert r.lookup(b"\x03\x01x", _num(7)) is None
    assert r.lookup(_name("99999999999"), _num(7)) is None  # digits beyond u32: a name, unknown
    r.publish([], [])
    assert r.lookup(_num(3), _num(7)) is None  # the new table replaced the old


def test_router_holds_many_topics():
    lg, lock, offsets = _route_objects()
    r = Router()
    topics = [
        (s, f"s{s}", t, f"t{t}", False, Counter(), [(0, lg, lock, offsets)], []) for s in range(40) for t in range(50)
    ]
    r.publish(topics, [])
    for s, sname, t, tname, *_ in topics[::37]:
        assert r.lookup(_name(sname), _num(t)) == (s, t, [0])
        assert r.lookup(_num(s), _name(tname)) == (s, t, [0])


def test_router_group_owners():
    lg, lock, offsets = _route_objects()
    r = Router()
    parts = [(1, lg, lock, offsets), (0, lg, lock, offsets), (2, lg, lock, offsets)]
    r.publish([(0, "s", 0, "t", False, Counter(), parts, [(5, "readers", {0: 11, 2: 12}), (6, "idle", {})])], [])
    assert r.group_owner(_num(0), _num(0), _name("readers"), 0) == 11
    assert r.group_owner(_num(0), _num(0), _num(5), 2) == 12
    assert r.group_owner(_num(0), _name("t"), _name("5"), 1) == 0  # nobody owns partition 1
    assert r.group_owner(_num(0), _num(0), _name("idle"), 0) == 0
    assert r.group_owner(_num(0), _num(0), _name("missing"), 0) is None
    assert r.group_owner(_num(0), _num(0), _num(7), 0) is None


def test_router_refuses_wrong_objects():
    r = Router()
    with pytest.raises(TypeError):
        r.publish([(0, "s", 0, "t", False, Counter(), [(0, _Log(), None, None)], [])], [])


class _User:
    def __init__(self, uid, permissions):
        self.id = uid
        self.permissions = permissions


flags = st.lists(st.booleans(), min_size=10, max_size=10)
stream_perms = st.fixed_dictionaries(
    {
        "flags": st.lists(st.booleans(), min_size=6, max_size=6),
        "topics": st.dictionaries(st.integers(0, 3), st.lists(st.booleans(), min_size=4, max_size=4), max_size=3),
    }
)
permission_sets = st.one_of(
    st.none(),
    st.fixed_dictionaries({"global": flags, "streams": st.dictionaries(st.integers(0, 3), stream_perms, max_size=3)}),
)


@settings(max_examples=300, deadline=None)
@given(uid=st.integers(0, 5), permissions=permission_sets)
def test_permission_snapshot_matches_the_python_rules(uid, permissions):
    user = _User(uid, permissions)
    allow_all, grants = perm.data_plane_grants(user)
    r = Router()
    r.publish([], [(uid, allow_all, grants)])
    for sid in range(4):
        for tid in range(4):
            assert r.allows(uid, sid, tid, perm.Allow.ALLOW_SEND) == perm.can_send(user, sid, tid)
            assert r.allows(uid, sid, tid, perm.Allow.ALLOW_POLL) == perm.can_poll(user, sid, tid)
    assert not r.allows(uid + 1, 0, 0, perm.Allow.ALLOW_POLL)  # a user not in the table: nothing
    assert not r.allows(-1, 0, 0, perm.Allow.ALLOW_POLL)


# --------------------------------------------------------------------------- end to end


def _metrics(srv) -> dict:
    with httpx.Client(base_url=srv.http_url, timeout=10) as http:
        token = http.post("/users/login", json={"username": ROOT_USER, "password": ROOT_PASSWORD}).json()
        text = http.get("/metrics", headers={"Authorization": f"Bearer {token['access_token']['token']}"}).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def _topic(root, partitions=1):
    s, t = uniq("dp"), "t"
    await root.create_stream(s)
    await root.create_topic(s, t, partitions)
    return s, t


@uring_only
async def test_producer_and_consumer_are_served_by_the_c_path(root, srv):
    s, t = await _topic(root)
    before = _metrics(srv)
    for i in range(20):
        await root.send_messages(s, t, 0, [SendMessage(f"m{i}-{j}") for j in range(10)])
    got = []
    for _ in range(20):
        got += await sdk_poll(root, s, t, PollingStrategy.Next(), consumer=5, auto_commit=True)
    await root.ping()
    after = _metrics(srv)
    assert [m.payload() for m in got] == [f"m{i}-{j}".encode() for i in range(20) for j in range(10)]
    native = after["shard_requests_native"] - before["shard_requests_native"]
    total = after["shard_requests"] - before["shard_requests"]
    assert native >= 41  # 20 sends + 20 polls + 1 ping
    assert total - native <= 2  # nothing else of those went through Python


def _python_requests(m: dict) -> float:
    return m["shard_requests"] - m["shard_requests_native"]


@uring_only
async def test_errors_go_to_python(root, srv):
    s, t = await _topic(root)
    before = _metrics(srv)
    with pytest.raises(RuntimeError, match="was not found"):
        await root.send_messages(s, "missing", 0, [SendMessage("x")])
    with pytest.raises(RuntimeError, match="not found"):
        await sdk_poll(root, s, t, PollingStrategy.First(), count=1, partition=9)
    after = _metrics(srv)
    assert _python_requests(after) - _python_requests(before) >= 2
    assert after["shard_requests_native"] == before["shard_requests_native"]


@uring_only
async def test_consumer_group_polls_are_served_by_the_c_path(root, srv):
    s, t = await _topic(root, partitions=2)
    for pid in range(2):
        await root.send_messages(s, t, pid, [SendMessage(f"p{pid}-{i}") for i in range(3)])
    await root.create_consumer_group(s, t, "g")
    await root.join_consumer_group(s, t, "g")
    other = await login_as(srv, ROOT_USER, ROOT_PASSWORD)
    await other.join_consumer_group(s, t, "g")  # two members: one partition each
    before = _metrics(srv)
    got = {}
    for client in (root, other):
        for pid in range(2):
            try:
                msgs = await client.poll_messages(
                    s,
                    t,
                    consumer=Consumer.Group("g"),
                    polling_strategy=PollingStrategy.Next(),
                    count=10,
                    auto_commit=True,
                    partition_id=pid,
                )
            except RuntimeError as exc:  # the other member's partition: 5009
                assert "not" in str(exc).lower()
                continue
            got[(id(client), pid)] = [m.payload() for m in msgs]
    after = _metrics(srv)
    # each partition was served to exactly one member, whole, once
    served = sorted(p for payloads in got.values() for p in payloads)
    assert served == sorted(f"p{pid}-{i}".encode() for pid in range(2) for i in range(3))
    assert len(got) == 2 and {pid for _, pid in got} == {0, 1}
    assert after["shard_requests_native"] - before["shard_requests_native"] >= 2
    assert _python_requests(after) - _python_requests(before) >= 2  # the two refusals


async def test_named_consumer_offsets_agree_between_paths(root, srv):
    """The C path keys a named consumer by XXH32 of its name, as the Python path does."""
    s, t = await _topic(root)
    await root.send_messages(s, t, 0, [SendMessage(f"m{i}") for i in range(6)])
    await root.poll_messages(
        s,
        t,
        consumer=Consumer.Single("reader"),
        polling_strategy=PollingStrategy.First(),
        count=4,
        auto_commit=True,
        partition_id=0,
    )
    body = b"\x01" + ident("reader") + ident(s) + ident(t) + b"\x01" + struct.pack("<I", 0)
    raw = await root.send_binary_request(120, body)  # GET_CONSUMER_OFFSET: Python
    assert struct.unpack("<IQQ", raw) == (0, 5, 3)
    key = xxhash.xxh32_intdigest(b"reader")
    path = os.path.join(srv.data_dir, "streams")
    found = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f == str(key)]
    assert len(found) == 1 and found[0].endswith(os.path.join("offsets", "consumers", str(key)))
    nxt = await root.poll_messages(
        s,
        t,
        consumer=Consumer.Single("reader"),
        polling_strategy=PollingStrategy.Next(),
        count=10,
        auto_commit=False,
        partition_id=0,
    )
    assert [m.offset() for m in nxt] == [4, 5]


async def test_balanced_and_keyed_partitioning(root):
    s, t = await _topic(root, partitions=3)
    for i in range(6):
        await root.send_messages(s, t, Partitioning.balanced(), [SendMessage(f"b{i}")])
    counts = []
    for pid in range(3):
        msgs = await sdk_poll(root, s, t, PollingStrategy.First(), count=100, partition=pid)
        counts.append(len(msgs))
    assert counts == [2, 2, 2]
    key = b"customer-42"
    await root.send_messages(s, t, Partitioning.messages_key(key), [SendMessage("k")])
    want = xxhash.xxh32_intdigest(key) % 3
    msgs = await sdk_poll(root, s, t, PollingStrategy.Last(), count=1, partition=want)
    assert [m.payload() for m in msgs] == [b"k"]


async def test_permission_changes_reach_the_shards_at_once(root, srv):
    s, t = await _topic(root)
    sid = (await root.get_stream(s)).id
    name = uniq("dpuser")
    created = await root.create_user(name, "secret")
    u = await login_as(srv, name, "secret")
    with sdk_error("Unauthorized"):
        await u.send_messages(s, t, 0, [SendMessage("no")])
    await root.update_permissions(
        created.id, Permissions(streams={sid: StreamPermissions(topics={0: TopicPermissions(send_messages=True)})})
    )
    await u.send_messages(s, t, 0, [SendMessage("yes")])  # granted on the topic
    with sdk_error("Unauthorized"):  # sending does not grant polling
        await sdk_poll(u, s, t, PollingStrategy.First(), count=1)
    await root.update_permissions(created.id, Permissions(global_permissions=GlobalPermissions(poll_messages=True)))
    polled = await sdk_poll(u, s, t, PollingStrategy.First(), count=1)
    assert [m.payload() for m in polled] == [b"yes"]
    with sdk_error("Unauthorized"):  # revoked by the replacement
        await u.send_messages(s, t, 0, [SendMessage("no")])
    await root.delete_user(created.id)
    # refused as Unauthenticated (the SDK then tries to log in again: Invalid credentials)
    with pytest.raises(RuntimeError, match=r"^(Unauthenticated|Invalid credentials)$"):
        await sdk_poll(u, s, t, PollingStrategy.First(), count=1)


async def test_topic_deleted_and_recreated(root):
    s, t = await _topic(root)
    await root.send_messages(s, t, 0, [SendMessage("old")])
    await root.delete_topic(s, t)
    with pytest.raises(RuntimeError, match="was not found"):
        await root.send_messages(s, t, 0, [SendMessage("lost")])
    await root.create_topic(s, t, 2)
    await root.send_messages(s, t, 1, [SendMessage("new")])
    msgs = await sdk_poll(root, s, t, PollingStrategy.First(), partition=1)
    assert [(m.offset(), m.payload()) for m in msgs] == [(0, b"new")]
    assert await sdk_poll(root, s, t, PollingStrategy.First()) == []


@uring_only
async def test_persisted_topic_acknowledges_after_fsyncs_on_the_ring(root, srv):
    """Every acknowledged batch of a persisted topic waited for an fsync submitted by the shard
    (concurrent producers may share one, so never more fsyncs than sends); a replicated topic
    submits none. Whether sharing happens depends on timing, so it is not asserted."""
    import asyncio

    s = uniq("dp")
    await root.create_stream(s)
    await root.create_topic(s, "p", 1, durability=Durability.PERSISTED)
    await root.create_topic(s, "r", 1)
    before = _metrics(srv)
    for i in range(10):
        await root.send_messages(s, "p", 0, [SendMessage(f"one-{i}")])
    middle = _metrics(srv)
    assert middle["shard_fsyncs"] - before["shard_fsyncs"] >= 10  # one each: nothing to share
    producers = [root] + [await login_as(srv, ROOT_USER, ROOT_PASSWORD) for _ in range(3)]

    async def produce(k, client):
        for i in range(25):
            await client.send_messages(s, "p", 0, [SendMessage(f"c{k}-{i}")])

    await asyncio.gather(*(produce(k, c) for k, c in enumerate(producers)))
    after = _metrics(srv)
    assert 1 <= after["shard_fsyncs"] - middle["shard_fsyncs"] <= 100
    for i in range(10):
        await root.send_messages(s, "r", 0, [SendMessage(f"r-{i}")])
    assert _metrics(srv)["shard_fsyncs"] == after["shard_fsyncs"]  # replicated: none
    got = await sdk_poll(root, s, "p", PollingStrategy.First(), count=1000)
    payloads = [m.payload().decode() for m in got]
    assert payloads[:10] == [f"one-{i}" for i in range(10)]
    assert sorted(payloads[10:]) == sorted(f"c{k}-{i}" for k in range(4) for i in range(25))
