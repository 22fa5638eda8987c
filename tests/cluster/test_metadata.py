"""Metadata through etcd (docs/CLUSTER.md, "Metadata through etcd"), with a real etcd and three
nodes on loopback:

- streams, topics, partitions, groups, users and tokens created through the SDK on the leader
  reach both followers: the same records (ids, timestamps, password hashes) in each follower's
  own journal, with the partitions' directories, and the users log in there;
- after a SIGKILL of the leader, the new leader has every change that was acknowledged, even when
  the followers were paused while they were made (it applies meta/ before it serves);
- a leader paused (SIGSTOP) until another was elected refuses a metadata change after it resumes,
  and the change is on no node;
- a follower restarted applies what it missed from the index after its last applied one: every
  index once, in order, in its journal;
- only the leader runs the expired-token cleaner; the followers apply its deletion;
- a change made while etcd is unavailable is refused, and ends the same on every node once etcd
  is back (its write may still land in etcd after the leader gave up waiting: then every node,
  the one that refused it included, applies it).

A follower answers no metadata reads (it refuses them, docs/CLUSTER.md), so what a follower
holds is read from its metadata directory (tests.cluster.nodes.local_metadata).
"""

from __future__ import annotations

import asyncio
import time

import aetcd
import httpx
import psutil
import pytest

from iggy.protocol.errors import ErrorCode
from tests.cluster.nodes import (
    HEARTBEAT_TIMEOUT,
    START_ELECTION,
    TestCluster,
    local_journal,
    local_metadata,
    metadata,
    sdk,
    wait_for,
)
from tests.rawclient import COMMAND_REPLY, RawClient, ident, sdk_request, wire_name

pytestmark = pytest.mark.engine

APPLIED = 15.0  # seconds for a follower to apply what the leader committed


def shared_part(state) -> dict:
    """What every node must hold alike: the streams and every user but root (each node creates
    its own root user at first start, with its own salt and time)."""
    d = state.to_dict()
    return {
        "streams": d["streams"],
        "users": [u for u in d["users"] if u[0] != 0],
        "tokens": d["tokens"],
        "cluster_index": state.cluster_index,
    }


def stream_names(state) -> set[str]:
    return {s.name for s in state.streams.values()}


def raw_login(address: str, username: str, password: str) -> bool:
    """Whether the login is accepted (a refused one is an Eviction frame)."""
    raw = RawClient(address)
    try:
        reply = raw.login(username, password)
        return reply.command == COMMAND_REPLY and reply.status == 0
    finally:
        raw.close()


def create_stream(address: str, name: str) -> None:
    raw = RawClient(address)
    try:
        assert raw.login().status == 0
        assert raw.call(128, body=wire_name(name)).status == 0
    finally:
        raw.close()


def states_with_stream(cluster: TestCluster, name: str) -> list:
    """Each node's own metadata, once it has applied the stream `name`."""
    return [
        wait_for(
            lambda i=i: (s := local_metadata(cluster.nodes[i])).stream_by_name(name) is not None and s,
            APPLIED,
            f"node {i} applies the stream {name!r}",
        )
        for i in range(3)
    ]


async def test_changes_on_the_leader_reach_every_follower_and_users_log_in_there(cluster):
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    followers = [i for i in range(3) if i != leader]
    client = await sdk(cluster.address(leader))
    await client.create_stream("orders")
    await client.create_topic("orders", "eu", 3)
    await client.create_topic("orders", "us", 1)
    await client.create_partitions("orders", "us", 2)
    await client.create_consumer_group("orders", "eu", "billing")
    await client.create_stream("scratch")
    await client.delete_stream("scratch")
    await client.create_user("alice", "secret-1")
    await client.update_stream("orders", "orders-v2")
    await client.purge_topic("orders-v2", "eu")  # a purge is a record too in cluster mode
    await client.purge_stream("orders-v2")

    leader_state = await asyncio.to_thread(local_metadata, cluster.nodes[leader])
    assert stream_names(leader_state) == {"orders-v2"}
    assert leader_state.cluster_index == 11  # one meta/ record per change
    expected = shared_part(leader_state)
    for f in followers:
        state = await asyncio.to_thread(
            wait_for,
            lambda f=f: (s := local_metadata(cluster.nodes[f])).cluster_index >= expected["cluster_index"] and s,
            APPLIED,
            f"node {f} applies meta/ up to index {expected['cluster_index']}",
        )
        assert shared_part(state) == expected  # the leader's ids, timestamps and password hash
        _snapshot, records = local_journal(cluster.nodes[f])
        assert [r["op"] for r in records[-2:]] == ["topic.purge", "stream.purge"]
        # the storage side: the partitions' directories exist, the deleted stream's do not
        streams = cluster.nodes[f].data_dir / "streams"
        stream = leader_state.stream_by_name("orders-v2")
        for t in stream.topics.values():
            for pid in t.partitions:
                assert (streams / str(stream.id) / "topics" / str(t.id) / "partitions" / str(pid)).is_dir()
        assert sorted(p.name for p in streams.iterdir()) == [str(stream.id)]
        # a user created on the leader logs in on a follower, over TCP and HTTP
        assert raw_login(cluster.address(f), "alice", "secret-1")
        assert not raw_login(cluster.address(f), "alice", "wrong-password")
        with httpx.Client(base_url=f"http://127.0.0.1:{cluster.ports[f]['http']}", timeout=10) as http:
            login = http.post("/users/login", json={"username": "alice", "password": "secret-1"})
            assert login.status_code == 200, login.text
    # the SDK logs in on a follower as alice, then goes to the leader and finds the stream there
    alice = await sdk(cluster.address(followers[0]), "alice", "secret-1")
    with pytest.raises(RuntimeError):  # alice has no permissions: logged in, but refused
        await alice.get_streams()
    await client.change_password("alice", "secret-1", "secret-2")
    await asyncio.to_thread(
        wait_for,
        lambda: raw_login(cluster.address(followers[1]), "alice", "secret-2"),
        APPLIED,
        "the new password on a follower",
    )


async def wait_leader_key_gone(url: str, name: str = "test-cluster") -> None:
    host, port = url.removeprefix("http://").split(":")
    async with aetcd.Client(host=host, port=int(port), timeout=5) as client:
        for _ in range(100):
            if await client.get(f"/iggy/{name}/leader".encode()) is None:
                return
            await asyncio.sleep(0.1)
    raise AssertionError("the killed leader's key did not expire")


async def test_the_new_leader_has_every_acknowledged_change(cluster, etcd):
    """Both followers paused while the leader commits: the changes are only in etcd (and on the
    leader, killed next). The node elected after must apply meta/ before it serves."""
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    followers = [i for i in range(3) if i != leader]
    client = await sdk(cluster.address(leader))
    paused = [psutil.Process(cluster.nodes[f].pid) for f in followers]
    for p in paused:
        p.suspend()
    try:
        acknowledged = []
        for i in range(5):
            await client.create_stream(f"s{i}")
            await client.create_topic(f"s{i}", "t", 2)
            acknowledged.append(f"s{i}")
        await client.delete_stream("s1")
        acknowledged.remove("s1")
        await client.create_user("bob", "bob-password")
        cluster.nodes[leader].kill()
        # until the dead leader's lease is gone: on resuming, a follower can win at its first
        # round, before anything else made it read meta/
        await wait_leader_key_gone(etcd.url)
    finally:
        for p in paused:
            p.resume()
    new_leader = await asyncio.to_thread(cluster.wait_leader, 4 * HEARTBEAT_TIMEOUT, followers, leader)
    # the first request the new leader serves already sees every change (it reports itself
    # leader once it holds the key and answers 58 until it has caught up on meta/)
    raw = RawClient(cluster.address(new_leader))
    try:
        assert raw.login().status == 0
        first = acknowledged[0]
        await asyncio.to_thread(
            wait_for,
            lambda: raw.read(200, ident(first)).status != ErrorCode.TRANSIENT_NOT_ACCEPTED,
            APPLIED,
            "the new leader serves",
        )
        for name in acknowledged:
            reply = raw.read(200, ident(name))
            assert reply.status == 0 and reply.body, f"stream {name} missing on the new leader"
        assert raw.read(200, ident("s1")).body == b""  # deleted before the failover
    finally:
        raw.close()
    assert raw_login(cluster.address(new_leader), "bob", "bob-password")
    other = next(f for f in followers if f != new_leader)
    state = await asyncio.to_thread(
        wait_for,
        lambda: (s := local_metadata(cluster.nodes[other])).cluster_index >= 12 and s,
        APPLIED,
        "the other follower applies meta/",
    )
    assert stream_names(state) == set(acknowledged)
    # and the new leader commits after the old leader's last index
    after = await sdk(cluster.address(new_leader))
    await after.create_stream("after-failover")
    assert (await asyncio.to_thread(local_metadata, cluster.nodes[new_leader])).cluster_index == 13


def test_a_deposed_leader_refuses_a_metadata_change_and_it_lands_nowhere(cluster):
    leader = cluster.wait_leader(START_ELECTION)
    others = [i for i in range(3) if i != leader]
    raw = RawClient(cluster.address(leader), timeout=30)
    try:
        assert raw.login().status == 0
        process = psutil.Process(cluster.nodes[leader].pid)
        process.suspend()
        try:
            new_leader = cluster.wait_leader(4 * HEARTBEAT_TIMEOUT, others, leader)
            # sent while it is paused: the request waits in its socket and is the first thing
            # it reads when it resumes, believing for a moment it still leads
            raw.request += 1
            raw.send_raw(sdk_request(128, 0, wire_name("ghost"), raw.session, raw.request, raw.client))
        finally:
            process.resume()
        reply = raw.read_reply()
        assert reply.status == ErrorCode.TRANSIENT_NOT_ACCEPTED, reply
        assert raw.call(128, body=wire_name("ghost-2")).status == ErrorCode.TRANSIENT_NOT_ACCEPTED
    finally:
        raw.close()
    assert cluster.wait_leader(4 * HEARTBEAT_TIMEOUT) == new_leader
    # the new leader commits; the old one applies that as a follower, and nothing of its own
    create_stream(cluster.address(new_leader), "real")
    for i, state in enumerate(states_with_stream(cluster, "real")):
        assert stream_names(state) == {"real"}, i
        assert metadata(cluster.address(i))["nodes"][new_leader]["role"] == "leader"


async def test_a_restarted_follower_resumes_after_its_last_applied_index(cluster):
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    follower = (leader + 1) % 3
    client = await sdk(cluster.address(leader))
    await client.create_stream("before")
    await client.create_topic("before", "t", 1)
    await asyncio.to_thread(
        wait_for, lambda: local_metadata(cluster.nodes[follower]).cluster_index == 2, APPLIED, "first apply"
    )
    assert cluster.nodes[follower].stop() == 0
    await client.create_stream("while-down")
    await client.create_topic("while-down", "t", 2)
    await client.create_user("carol", "carol-password")
    await asyncio.to_thread(cluster.nodes[follower].start)
    state = await asyncio.to_thread(
        wait_for,
        lambda: (s := local_metadata(cluster.nodes[follower])).cluster_index == 5 and s,
        APPLIED,
        "the restarted follower catches up",
    )
    assert stream_names(state) == {"before", "while-down"}
    # each index applied once, in order: it resumed at 3, it did not replay 1 and 2
    snapshot, records = await asyncio.to_thread(local_journal, cluster.nodes[follower])
    assert snapshot is None
    assert [r["index"] for r in records if "index" in r] == [1, 2, 3, 4, 5]
    assert await asyncio.to_thread(raw_login, cluster.address(follower), "carol", "carol-password")


def test_only_the_leader_removes_expired_tokens(tmp_path, etcd):
    cluster = TestCluster(tmp_path, etcd.url, env={"IGGY_PERSONAL_ACCESS_TOKEN_CLEANER_INTERVAL": "200 ms"})
    try:
        cluster.start()
        leader = cluster.wait_leader(START_ELECTION)
        raw = RawClient(cluster.address(leader))
        try:
            assert raw.login().status == 0
            for name, expiry_us in (("short", 1_000_000), ("kept", 0)):
                assert raw.call(146, body=wire_name(name) + expiry_us.to_bytes(8, "little")).status == 0
        finally:
            raw.close()
        # the leader paused across the expiry (shorter than its fencing margin, so it stays
        # leader): the followers' cleaners, had they run, would have met the expired token
        time.sleep(0.7)
        leader_process = psutil.Process(cluster.nodes[leader].pid)
        leader_process.suspend()
        time.sleep(0.9)
        leader_process.resume()
        for i in range(3):
            state = wait_for(
                lambda i=i: (s := local_metadata(cluster.nodes[i])).cluster_index == 3 and s,
                APPLIED,
                f"node {i} applies the cleaner's deletion (meta/ index 3)",
            )
            assert [t.name for t in state.tokens.values()] == ["kept"]
            _snapshot, records = local_journal(cluster.nodes[i])
            # the root user is each node's own; everything else came through meta/
            assert [(r["op"], r.get("index")) for r in records] == [
                ("user.create", None),
                ("token.create", 1),
                ("token.create", 2),
                ("token.delete", 3),
            ]
            log = cluster.nodes[i].log()
            if i == leader:
                assert "removed expired personal access token 'short'" in log
            else:  # the followers' cleaners did not even try
                assert "personal access token 'short'" not in log
    finally:
        cluster.stop()


def test_a_change_while_etcd_is_unavailable_ends_the_same_on_every_node(cluster, etcd):
    leader = cluster.wait_leader(START_ELECTION)
    raw = RawClient(cluster.address(leader), timeout=30)
    try:
        assert raw.login().status == 0
        assert raw.call(128, body=wire_name("before")).status == 0
        etcd.pause()
        try:
            assert raw.call(128, body=wire_name("during")).status == ErrorCode.TRANSIENT_NOT_ACCEPTED
        finally:
            etcd.resume()
    finally:
        raw.close()
    create_stream(cluster.address(cluster.wait_leader(START_ELECTION + 3 * HEARTBEAT_TIMEOUT)), "after")
    states = states_with_stream(cluster, "after")
    assert {"before", "after"} <= stream_names(states[0])
    assert [shared_part(s) for s in states[1:]] == [shared_part(states[0])] * 2
