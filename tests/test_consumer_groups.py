"""Consumer groups with the official SDK and raw frames against a real server.

Management (create/get/list/delete/join/leave), the assignment the SDK learns with SYNC (606):
disjoint partitions covering the topic, a rebalance with a higher generation when a member
joins, leaves, disconnects or is evicted by the heartbeat check, or the partition count changes;
fencing of group polls (5009); each message of a partition delivered to one member. How the
partitions move (cooperatively) is tested in test_rebalance.py.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import struct
import time

import pytest
from apache_iggy import (
    AutoCommit,
    AutoCommitWhen,
    AutoLogin,
    Consumer,
    IggyClient,
    PollingStrategy,
    SendMessage,
    TcpConfig,
)

from tests import conftest
from tests.conftest import ROOT_PASSWORD, ROOT_USER, GroupDelivery, connect_root, next_consumer, server_with_env
from tests.rawclient import RawClient, ident

S, T = "gs", "gt"
MS = datetime.timedelta(milliseconds=1)


make_topic = functools.partial(conftest.make_topic, stream=S, topic=T)


def group_body(group, stream=S, topic=T) -> bytes:
    return ident(stream) + ident(topic) + ident(group)


def parse_sync(body: bytes):
    if not body:
        return None
    generation, count = struct.unpack_from("<QI", body)
    assert len(body) == 12 + 4 * count
    return generation, list(struct.unpack_from(f"<{count}I", body, 12))


async def sync(client: IggyClient, group):
    """SYNC_CONSUMER_GROUP (606) as the SDK sends it: (generation, partitions) or None (not a member)."""
    return parse_sync(await client.send_binary_request(606, group_body(group)))


def raw_sync(raw: RawClient, group):
    reply = raw.read(606, group_body(group))
    assert reply.status == 0
    return parse_sync(reply.body)


def raw_member(address: str, group) -> RawClient:
    raw = RawClient(address)
    assert raw.login().status == 0
    assert raw.call(148, 0, group_body(group)).code == 0
    return raw


def raw_poll(raw: RawClient, group, partition, count=100, strategy=3, value=0, auto_commit=False):
    body = (
        b"\x02"
        + ident(group)
        + ident(S)
        + ident(T)
        + b"\x01"
        + struct.pack("<I", partition)
        + bytes([strategy])
        + struct.pack("<Q", value)
        + struct.pack("<I", count)
        + bytes([auto_commit])
    )
    return raw.read(100, body)


async def members(client, group):
    details = await client.get_consumer_group(S, T, group)
    return sorted((m.id, sorted(m.partitions)) for m in details.members)


async def eventually(predicate, timeout=8.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------- management


async def test_create_get_list_delete(client):
    await make_topic(client, 3)
    assert await client.get_consumer_groups(S, T) == []
    assert await client.get_consumer_group(S, T, "g1") is None
    await client.create_consumer_group(S, T, "g1")
    await client.create_consumer_group(S, T, "g2")
    with pytest.raises(RuntimeError):
        await client.create_consumer_group(S, T, "g1")  # 5004
    g1 = await client.get_consumer_group(S, T, "g1")
    assert (g1.id, g1.name, g1.partitions_count, g1.members_count, g1.members) == (0, "g1", 3, 0, [])
    assert (await client.get_consumer_group(S, T, 1)).name == "g2"
    listed = await client.get_consumer_groups(S, T)
    assert [(g.id, g.name, g.partitions_count, g.members_count) for g in listed] == [(0, "g1", 3, 0), (1, "g2", 3, 0)]
    await client.delete_consumer_group(S, T, "g1")
    assert await client.get_consumer_group(S, T, "g1") is None
    with pytest.raises(RuntimeError):
        await client.delete_consumer_group(S, T, "g1")
    await client.create_consumer_group(S, T, "g3")
    assert (await client.get_consumer_group(S, T, "g3")).id == 2  # group ids are never reused
    await client.delete_consumer_group(S, T, 1)
    assert [g.name for g in await client.get_consumer_groups(S, T)] == ["g3"]
    with pytest.raises(RuntimeError):
        await client.create_consumer_group(S, "missing-topic", "g")


async def test_join_leave_and_sync(client):
    await make_topic(client, 3)
    await client.create_consumer_group(S, T, "g")
    assert await sync(client, "g") is None  # not a member: empty body
    await client.join_consumer_group(S, T, "g")
    await client.join_consumer_group(S, T, "g")  # idempotent
    generation, partitions = await sync(client, "g")
    assert partitions == [0, 1, 2]
    assert await members(client, "g") == [(0, [0, 1, 2])]
    assert (await client.get_consumer_group(S, T, "g")).members_count == 1
    await client.leave_consumer_group(S, T, "g")
    assert await sync(client, "g") is None
    assert await members(client, "g") == []
    with pytest.raises(RuntimeError):
        await client.leave_consumer_group(S, T, "g")  # 5006: not a member
    with pytest.raises(RuntimeError):
        await client.join_consumer_group(S, T, "nope")
    await client.join_consumer_group(S, T, 0)  # by id
    assert (await sync(client, 0))[0] > generation
    # deleting the group ends the membership
    await client.delete_consumer_group(S, T, "g")
    await client.create_consumer_group(S, T, "g")
    assert await sync(client, "g") is None


# ------------------------------------------------------------------------- assignment


async def test_two_members_disjoint_then_rebalance_on_leave(client, server):
    await make_topic(client, 5)
    await client.create_consumer_group(S, T, "g")
    a = await connect_root(server.tcp_address)
    b = await connect_root(server.tcp_address)
    await a.join_consumer_group(S, T, "g")
    gen_a1, parts = await sync(a, "g")
    assert parts == [0, 1, 2, 3, 4]
    await b.join_consumer_group(S, T, "g")
    gen_a, parts_a = await sync(a, "g")
    gen_b, parts_b = await sync(b, "g")
    assert gen_a == gen_b > gen_a1
    assert not set(parts_a) & set(parts_b) and sorted(parts_a + parts_b) == [0, 1, 2, 3, 4]
    assert {len(parts_a), len(parts_b)} == {2, 3}  # balanced
    assert sorted(p for _, p in await members(client, "g")) == sorted([sorted(parts_a), sorted(parts_b)])

    # group polls without a partition read only the caller's partitions
    for p in range(5):
        await client.send_messages(S, T, p, [SendMessage(f"p{p}")])
    for member, owned in ((a, parts_a), (b, parts_b)):
        seen = set()
        for _ in range(len(owned) * 2):
            for m in await member.poll_messages(
                S,
                T,
                consumer=Consumer.Group("g"),
                polling_strategy=PollingStrategy.First(),
                count=10,
                auto_commit=False,
            ):
                seen.add(m.partition_id())
        assert seen == set(owned)

    await b.leave_consumer_group(S, T, "g")
    gen_after, parts_after = await sync(a, "g")
    assert gen_after > gen_a and parts_after == [0, 1, 2, 3, 4]
    assert await sync(b, "g") is None


async def test_disconnect_rebalances(client, server):
    await make_topic(client, 4)
    await client.create_consumer_group(S, T, "g")
    await client.join_consumer_group(S, T, "g")
    raw = raw_member(server.tcp_address, "g")
    gen, raw_parts = raw_sync(raw, "g")
    gen_c, mine = await sync(client, "g")
    assert gen_c == gen and sorted(raw_parts + mine) == [0, 1, 2, 3] and raw_parts and mine
    raw.close()  # no leave: just gone

    async def all_mine():
        got = await sync(client, "g")
        return got if got[1] == [0, 1, 2, 3] else None

    gen_after, _ = await eventually(all_mine)
    assert gen_after > gen
    assert len(await members(client, "g")) == 1


async def test_partition_count_change_rebalances(client, server):
    await make_topic(client, 2)
    await client.create_consumer_group(S, T, "g")
    await client.join_consumer_group(S, T, "g")
    raw = raw_member(server.tcp_address, "g")
    gen0, mine0 = await sync(client, "g")
    await client.create_partitions(S, T, 4)
    gen1, mine1 = await sync(client, "g")
    _, theirs1 = raw_sync(raw, "g")
    assert gen1 > gen0
    assert sorted(mine1 + theirs1) == [0, 1, 2, 3, 4, 5] and len(mine1) == len(theirs1) == 3
    await client.delete_partitions(S, T, 5)
    gen2, mine2 = await sync(client, "g")
    _, theirs2 = raw_sync(raw, "g")
    assert gen2 > gen1 and sorted(mine2 + theirs2) == [0]
    raw.close()


async def test_group_poll_fencing(client, server):
    await make_topic(client, 2)
    await client.create_consumer_group(S, T, "g")
    for p in range(2):
        await client.send_messages(S, T, p, [SendMessage(f"p{p}-{i}") for i in range(3)])
    a = raw_member(server.tcp_address, "g")
    b = raw_member(server.tcp_address, "g")
    _, pa = raw_sync(a, "g")
    _, pb = raw_sync(b, "g")
    assert len(pa) == len(pb) == 1 and pa != pb
    reply = raw_poll(a, "g", pa[0])
    assert reply.status == 0 and struct.unpack_from("<IQI", reply.body) == (pa[0], 2, 3)
    assert raw_poll(a, "g", pb[0]).status == 5009  # owned by the other member
    outsider = RawClient(server.tcp_address)
    outsider.login()
    assert raw_poll(outsider, "g", 0).status in (5006, 5009)  # not a member at all
    # a group poll must name a partition
    body = (
        b"\x02"
        + ident("g")
        + ident(S)
        + ident(T)
        + b"\x00"
        + bytes(4)
        + b"\x03"
        + bytes(8)
        + struct.pack("<I", 10)
        + b"\x00"
    )
    assert a.read(100, body).status == 6
    # group offsets are shared by the members: auto-commit by one moves the group's offset
    assert raw_poll(a, "g", pa[0], count=2, strategy=5, auto_commit=True).status == 0
    b.close()
    await asyncio.sleep(0.2)
    _, pa2 = raw_sync(a, "g")
    assert pa2 == [0, 1]
    reply = raw_poll(a, "g", pa[0], strategy=5)
    assert struct.unpack_from("<IQI", reply.body)[2] == 1  # only the uncommitted one
    for c in (a, outsider):
        c.close()


# ------------------------------------------------------------------------- delivery


async def test_each_message_delivered_to_one_member(client, server):
    partitions, per_partition = 4, 25
    await make_topic(client, partitions)
    c1 = await connect_root(server.tcp_address)
    c2 = await connect_root(server.tcp_address)
    commit = AutoCommit.When(AutoCommitWhen.PollingMessages())
    consumer1 = await next_consumer(c1, "g", S, T, batch_length=7, poll_ms=10, auto_commit=commit)
    consumer2 = await next_consumer(c2, "g", S, T, batch_length=7, poll_ms=10, auto_commit=commit)
    assert len(await members(client, "g")) == 2
    for p in range(partitions):
        for b in range(5):
            await client.send_messages(S, T, p, [SendMessage(f"{p}:{b * 5 + i}") for i in range(5)])
    total = partitions * per_partition
    delivery = GroupDelivery(total)
    delivery.start("1", consumer1)
    delivery.start("2", consumer2)
    got = await delivery.wait(30)
    everything = got["1"] + got["2"]
    assert len(everything) == total and len(set(everything)) == total  # no duplicates
    assert sorted((p, o) for p, o, _ in everything) == [(p, o) for p in range(partitions) for o in range(per_partition)]
    for p, o, payload in everything:
        assert payload == f"{p}:{o}".encode()
    parts1 = {p for p, _, _ in got["1"]}
    parts2 = {p for p, _, _ in got["2"]}
    assert parts1 and parts2 and not parts1 & parts2  # each partition to one member
    for name in ("1", "2"):  # in order within a partition
        for p in range(partitions):
            mine = [o for q, o, _ in got[name] if q == p]
            assert mine == sorted(mine)


# ------------------------------------------------------------------------- heartbeat eviction

fast_heartbeat_server = server_with_env(IGGY_HEARTBEAT_INTERVAL="1s")


async def test_silent_member_is_evicted(fast_heartbeat_server):
    srv = fast_heartbeat_server
    config = TcpConfig(
        server_address=srv.tcp_address,
        heartbeat_interval=MS * 200,
        auto_login=AutoLogin.username_password(ROOT_USER, ROOT_PASSWORD),
    )
    client = IggyClient(config)
    await client.connect()
    await make_topic(client, 4)
    await client.create_consumer_group(S, T, "g")
    await client.join_consumer_group(S, T, "g")
    silent = raw_member(srv.tcp_address, "g")
    bystander = RawClient(srv.tcp_address)  # logged in, in no group
    bystander.login()
    gen, theirs = raw_sync(silent, "g")
    assert theirs and len(await members(client, "g")) == 2
    started = time.monotonic()

    async def evicted():
        got = await sync(client, "g")
        return got if got[1] == [0, 1, 2, 3] else None

    gen_after, _ = await eventually(evicted, timeout=6)
    assert time.monotonic() - started < 5
    assert gen_after > gen
    assert len(await members(client, "g")) == 1
    silent.sock.settimeout(3)  # and its connection is closed
    with pytest.raises((ConnectionError, OSError)):
        for _ in range(3):
            silent.read(1)
    # a heartbeating member and a silent non-member both stay
    await asyncio.sleep(1.5)
    assert (await sync(client, "g"))[1] == [0, 1, 2, 3]
    assert bystander.read(1).status == 0
    bystander.close()


async def _at_least(items, n):
    return len(items) >= n


async def test_no_message_lost_or_duplicated_across_rebalances(client, server):
    """Members join and leave while messages flow; polls commit on the server (auto_commit), and
    fencing makes a member that lost a partition re-sync: every message arrives exactly once."""
    partitions, batches, per_batch = 6, 30, 10
    await make_topic(client, partitions)
    commit = AutoCommit.When(AutoCommitWhen.PollingMessages())
    got: list[tuple[str, int, int, bytes]] = []
    tasks = {}

    async def run(name, consumer):
        async for m in consumer.iter_messages():
            got.append((name, m.partition_id(), m.offset(), m.payload()))

    async def start(name):
        c = await connect_root(server.tcp_address)
        consumer = await next_consumer(c, "g", S, T, batch_length=5, poll_ms=5, auto_commit=commit)
        tasks[name] = asyncio.ensure_future(run(name, consumer))
        return c

    clients = {"a": await start("a"), "b": await start("b")}
    sent = []
    for n in range(batches):
        p = n % partitions
        payloads = [f"{n}:{i}".encode() for i in range(per_batch)]
        await client.send_messages(S, T, p, [SendMessage(x) for x in payloads])
        sent += [(p, x) for x in payloads]
        if n == 10:
            clients["c"] = await start("c")  # a member joins mid-stream
        if n == 20:
            # a member leaves mid-stream; first let it hand out what it polled (its polls
            # committed on the server, so what it still buffered would be nobody's)
            await eventually(functools.partial(_at_least, got, len(sent)), timeout=20)
            tasks.pop("a").cancel()
            await clients["a"].leave_consumer_group(S, T, "g")
        await asyncio.sleep(0.03)
    try:
        await eventually(lambda: _at_least(got, len(sent)), timeout=20)
        await asyncio.sleep(0.3)
    finally:
        for task in tasks.values():
            task.cancel()
    received = [(p, x) for _, p, _, x in got]
    assert len(received) == len(set(received)), "a message was delivered twice"
    assert sorted(received) == sorted(sent)
    for p in range(partitions):  # offsets of a partition: each once, in order
        offs = [o for _, q, o, _ in got if q == p]
        assert sorted(offs) == list(range(len(offs)))
    assert {name for name, *_ in got} >= {"b", "c"}


async def test_logout_leaves_groups_and_non_member_group_poll_fails(client, server):
    await make_topic(client, 3)
    await client.create_consumer_group(S, T, "g")
    raw = raw_member(server.tcp_address, "g")
    assert len(await members(client, "g")) == 1
    assert raw.call(3).status == 0  # logout
    assert await members(client, "g") == []
    raw.close()
    # the SDK polls a group it has not joined: SYNC says "not a member", the poll fails
    with pytest.raises(RuntimeError):
        await client.poll_messages(
            S, T, consumer=Consumer.Group("g"), polling_strategy=PollingStrategy.First(), count=1, auto_commit=False
        )
    # deleting the topic ends the group and its memberships
    await client.join_consumer_group(S, T, "g")
    await client.delete_topic(S, T)
    await client.create_topic(S, T, 1)
    assert await client.get_consumer_groups(S, T) == []
