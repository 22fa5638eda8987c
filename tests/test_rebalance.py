"""Cooperative consumer-group rebalancing against a real server (iggy.control.groups).

A member that joins gets a partition at once only when its owner has nothing in flight there
(never polled it, or committed what it was served); otherwise the partition is handed over:
its owner may no longer poll it (SYNC leaves it out, a poll answers 5009) but may still
commit it, and it moves when that commit arrives, or when consumer_group.rebalancing_timeout
passes. A member that leaves or disconnects gives its partitions to the others at once and the
others keep theirs. Group polls and group offset stores/deletes are fenced (5009, member or
not). Raw frames play the members, as the SDK does (SYNC 606, explicit partition, re-sync on
5009); the official SDK's own group consumer checks the whole protocol end to end.
"""

from __future__ import annotations

import asyncio
import datetime
import struct

from apache_iggy import AutoCommit, AutoCommitWhen, SendMessage

from tests.conftest import GroupDelivery, connect_root, next_consumer, server_with_env
from tests.rawclient import RawClient, ident
from tests.reliability.common import verify_batches
from tests.test_consumer_groups import eventually, group_body, members, raw_member, raw_poll, raw_sync

S, T = "gs", "gt"
NOT_OWNED = 5009
MS = datetime.timedelta(milliseconds=1)


def offset_body(group, partition: int) -> bytes:
    return b"\x02" + ident(group) + ident(S) + ident(T) + b"\x01" + struct.pack("<I", partition)


def raw_store(raw: RawClient, group, partition: int, offset: int) -> int:
    """STORE_CONSUMER_OFFSET (op 161) of the group; the outcome code."""
    return raw.call(161, 0, offset_body(group, partition) + struct.pack("<Q", offset)).code


def raw_delete(raw: RawClient, group, partition: int) -> int:
    return raw.call(162, 0, offset_body(group, partition)).code


def raw_get(raw: RawClient, group, partition: int):
    reply = raw.read(120, offset_body(group, partition))
    assert reply.status == 0
    return struct.unpack("<IQQ", reply.body)[2] if reply.body else None


def polled(reply) -> list[int]:
    """Offsets of the messages of a successful poll reply."""
    assert reply.status == 0, reply
    count = struct.unpack_from("<IQI", reply.body)[2]
    offsets = [m["offset"] for m in verify_batches(reply.body[16:])]
    assert len(offsets) == count
    return offsets


async def topic_with_messages(client, partitions: int, per_partition: int = 5):
    await client.create_stream(S)
    await client.create_topic(S, T, partitions)
    await client.create_consumer_group(S, T, "g")
    for p in range(partitions):
        await client.send_messages(S, T, p, [SendMessage(f"{p}:{i}") for i in range(per_partition)])


async def test_joining_member_waits_for_partitions_in_flight(client, server):
    await topic_with_messages(client, 4)
    a = raw_member(server.tcp_address, "g")
    gen0, parts = raw_sync(a, "g")
    assert parts == [0, 1, 2, 3]
    for p in parts:  # a has messages in flight on every partition
        assert polled(raw_poll(a, "g", p, count=3)) == [0, 1, 2]
    b = raw_member(server.tcp_address, "g")
    gen1, theirs = raw_sync(b, "g")
    assert gen1 > gen0 and theirs == []  # nothing taken from a in flight
    _, mine = raw_sync(a, "g")
    assert len(mine) == 2  # a polls only what it keeps...
    moving = sorted(set(parts) - set(mine))
    assert await members(client, "g") == [(0, [0, 1, 2, 3]), (1, [])]  # ...but still owns all four
    for p in moving:
        assert raw_poll(a, "g", p).status == NOT_OWNED  # being handed over
        assert raw_poll(b, "g", p).status == NOT_OWNED  # not b's yet
        assert raw_store(b, "g", p, 2) == NOT_OWNED
    assert polled(raw_poll(a, "g", mine[0], count=1, strategy=5)) == [0]  # the kept ones poll as before
    # a commits one of them: it moves to b, and b goes on after what a processed
    assert raw_store(a, "g", moving[0], 2) == 0

    async def b_has(wanted):
        got = raw_sync(b, "g")
        return got if got[1] == wanted else None

    gen2, _ = await eventually(lambda: b_has([moving[0]]))
    assert gen2 > gen1
    assert polled(raw_poll(b, "g", moving[0], strategy=5)) == [3, 4]  # nothing delivered twice
    assert raw_store(a, "g", moving[0], 4) == NOT_OWNED  # a's commits there are fenced now
    assert raw_get(a, "g", moving[0]) == 2
    # the other one waits for its own commit (the 30 s timeout is far)
    await asyncio.sleep(0.3)
    assert raw_sync(b, "g")[1] == [moving[0]]
    assert raw_store(a, "g", moving[1], 2) == 0
    await eventually(lambda: b_has(moving))
    assert sorted(raw_sync(a, "g")[1]) == mine  # a kept its two throughout
    assert await members(client, "g") == [(0, mine), (1, moving)]
    for c in (a, b):
        c.close()


async def test_partitions_without_messages_in_flight_move_at_once(client, server):
    await topic_with_messages(client, 4)
    a = raw_member(server.tcp_address, "g")
    assert polled(raw_poll(a, "g", 0, count=5, auto_commit=True)) == [0, 1, 2, 3, 4]  # committed
    assert polled(raw_poll(a, "g", 1, count=2)) == [0, 1]
    assert raw_store(a, "g", 1, 1) == 0  # committed by hand
    # partitions 2 and 3 were never polled: a has nothing in flight anywhere
    b = raw_member(server.tcp_address, "g")
    _, theirs = raw_sync(b, "g")
    _, mine = raw_sync(a, "g")
    assert len(theirs) == len(mine) == 2 and sorted(mine + theirs) == [0, 1, 2, 3]
    assert await members(client, "g") == [(0, mine), (1, theirs)]
    for p in theirs:
        assert raw_poll(b, "g", p).status == 0
        assert raw_poll(a, "g", p).status == NOT_OWNED
    # in a group nobody polled yet, members share the partitions from each join on
    await client.create_consumer_group(S, T, "h")
    for x in (a, b):
        assert x.call(148, 0, group_body("h")).code == 0
    c = raw_member(server.tcp_address, "h")
    assert sorted(len(raw_sync(x, "h")[1]) for x in (a, b, c)) == [1, 1, 2]
    for x in (a, b, c):
        x.close()


async def test_leaver_partitions_move_and_the_others_keep_theirs(client, server):
    await topic_with_messages(client, 7)
    clients = [raw_member(server.tcp_address, "g") for _ in range(3)]
    before = [raw_sync(c, "g")[1] for c in clients]
    assert sorted(p for b in before for p in b) == list(range(7)) and sorted(map(len, before)) == [2, 2, 3]
    # the middle one leaves with messages in flight: its partitions move at once all the same
    for p in before[1]:
        assert polled(raw_poll(clients[1], "g", p, count=2)) == [0, 1]
    assert clients[1].call(149, 0, group_body("g")).code == 0
    after = [raw_sync(c, "g")[1] for c in (clients[0], clients[2])]
    assert set(before[0]) <= set(after[0]) and set(before[2]) <= set(after[1])
    assert sorted(after[0] + after[1]) == list(range(7)) and sorted(map(len, after)) == [3, 4]
    # a disconnect is a leave: the last member ends with everything it had and the rest
    keep = raw_sync(clients[0], "g")[1]
    clients[2].close()

    async def alone():
        got = raw_sync(clients[0], "g")
        return got if got[1] == list(range(7)) else None

    await eventually(alone)
    assert set(keep) <= set(range(7))
    # the leaver's uncommitted messages go to the new owner (at least once)
    p = before[1][0]
    owner = clients[0]
    assert polled(raw_poll(owner, "g", p, strategy=5)) == [0, 1, 2, 3, 4]
    for c in (clients[0], clients[1]):
        c.close()


async def test_join_keeps_assignment_balanced(client, server):
    await topic_with_messages(client, 5, per_partition=1)
    clients = []
    for n in range(1, 7):
        clients.append(raw_member(server.tcp_address, "g"))
        shares = sorted(len(raw_sync(c, "g")[1]) for c in clients)
        assert sum(shares) == 5 and shares[-1] - shares[0] <= 1, (n, shares)
    previous = {i: set(raw_sync(c, "g")[1]) for i, c in enumerate(clients)}
    clients.pop(0).close()  # a disconnect

    async def all_assigned():
        return sum(len(raw_sync(c, "g")[1]) for c in clients) == 5

    await eventually(all_assigned)
    now = {i + 1: set(raw_sync(c, "g")[1]) for i, c in enumerate(clients)}
    assert all(previous[i] <= now[i] for i in now)  # nobody lost a partition
    assert sorted(len(v) for v in now.values()) == [1, 1, 1, 1, 1]
    for c in clients:
        c.close()


fast_timeout_server = server_with_env(IGGY_CONSUMER_GROUP_REBALANCING_TIMEOUT="1s")


async def test_rebalancing_timeout_forces_the_move(fast_timeout_server):
    srv = fast_timeout_server
    client = await connect_root(srv.tcp_address)
    await topic_with_messages(client, 2)
    a = raw_member(srv.tcp_address, "g")
    for p in (0, 1):
        assert polled(raw_poll(a, "g", p, count=2)) == [0, 1]
    b = raw_member(srv.tcp_address, "g")
    assert raw_sync(b, "g")[1] == []  # in flight: handed over...
    assert len(raw_sync(a, "g")[1]) == 1

    async def moved():
        got = raw_sync(b, "g")
        return got if len(got[1]) == 1 else None

    _, theirs = await eventually(moved, timeout=15)  # ...and moved without a commit
    p = theirs[0]
    assert raw_store(a, "g", p, 1) == NOT_OWNED  # the late commit is refused
    assert polled(raw_poll(b, "g", p, strategy=5)) == [0, 1, 2, 3, 4]  # redelivered from the last commit
    for c in (a, b):
        c.close()


async def test_fencing_codes(client, server):
    await topic_with_messages(client, 2)
    a = raw_member(server.tcp_address, "g")
    b = raw_member(server.tcp_address, "g")
    (pa,), (pb,) = raw_sync(a, "g")[1], raw_sync(b, "g")[1]
    outsider = RawClient(server.tcp_address)
    outsider.login()
    # polls, offset stores and deletes: another member's partition or no membership at all
    for who, p in ((a, pb), (outsider, pa), (outsider, pb)):
        assert raw_poll(who, "g", p).status == NOT_OWNED
        assert raw_store(who, "g", p, 0) == NOT_OWNED
        assert raw_delete(who, "g", p) == NOT_OWNED
    # the owner may; reading a group offset is not fenced
    assert raw_store(a, "g", pa, 1) == 0
    assert raw_get(outsider, "g", pa) == 1 and raw_get(b, "g", pa) == 1
    assert raw_delete(a, "g", pa) == 0
    assert raw_get(b, "g", pa) is None
    # a single consumer is never fenced
    single = b"\x01" + ident(7) + ident(S) + ident(T) + b"\x01" + struct.pack("<I", pa)
    assert outsider.call(161, 0, single + struct.pack("<Q", 1)).code == 0
    # leave by a non-member stays 5006
    assert outsider.call(149, 0, group_body("g")).code == 5006
    for c in (a, b, outsider):
        c.close()


async def test_sdk_consumers_joining_under_load_get_each_message_once(client, server):
    """Two official-SDK group consumers, the second joining while the first is consuming and
    committing after each batch: every message arrives, none twice, each partition in order."""
    partitions, total = 4, 400
    await client.create_stream(S)
    await client.create_topic(S, T, partitions)
    commit = AutoCommit.When(AutoCommitWhen.ConsumingAllMessages())
    delivery = GroupDelivery(total)

    async def produce():
        for i in range(total // partitions):
            for p in range(partitions):
                await client.send_messages(S, T, p, [SendMessage(f"{p}:{i}")])
            await asyncio.sleep(0.002)

    c1 = await connect_root(server.tcp_address)
    c2 = await connect_root(server.tcp_address)
    delivery.start("1", await next_consumer(c1, "g", S, T, batch_length=5, poll_ms=5, auto_commit=commit))
    producing = asyncio.ensure_future(produce())
    try:

        async def first_is_consuming():
            return len(delivery.got["1"]) > 40

        await eventually(first_is_consuming, timeout=20)
        delivery.start("2", await next_consumer(c2, "g", S, T, batch_length=5, poll_ms=5, auto_commit=commit))
        received = await delivery.wait(60)
    finally:
        producing.cancel()
        delivery.stop()
    got = {name: [(p, o) for p, o, _ in messages] for name, messages in received.items()}
    everything = got["1"] + got["2"]
    assert sorted(everything) == [(p, o) for p in range(partitions) for o in range(total // partitions)]
    assert got["2"], "the member that joined got nothing"
    for name in ("1", "2"):
        for p in range(partitions):
            mine = [o for q, o in got[name] if q == p]
            assert mine == sorted(mine)
