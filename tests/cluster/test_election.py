"""Cluster mode with a real etcd and three nodes on loopback (docs/CLUSTER.md).

- one leader, reported alike by every node, in the encoding the official SDK reads;
- a follower accepts logins, answers the metadata and refuses the rest with 58
  TransientNotAccepted (upstream's "not admitted here");
- the official SDK connecting to any node ends on the leader (upstream's
  bdd/scenarios/leader_redirection.feature) and can create a stream, send and poll there;
- SIGKILL of the leader: another node is leader within 3 x heartbeat_timeout, and the SDK
  follows it;
- etcd unavailable: the leader stops acting as leader within its lease, and a leader is back
  once etcd returns.

Messages are not replicated yet (metadata is: tests/cluster/test_metadata.py), so the tests
after a failover use new names.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest
from apache_iggy import Consumer, PollingStrategy, SendMessage

from iggy.protocol.errors import ErrorCode
from tests.cluster.nodes import HEARTBEAT_TIMEOUT, START_ELECTION, TestCluster, leader_of, metadata, sdk
from tests.conftest import sdk_poll
from tests.rawclient import RawClient, wire_name

pytestmark = pytest.mark.engine

NOT_ACCEPTED = ErrorCode.TRANSIENT_NOT_ACCEPTED


@pytest.fixture(scope="module")
def steady(tmp_path_factory, shared_etcd):
    """One cluster for the tests that leave every node and etcd running (unique names)."""
    c = TestCluster(tmp_path_factory.mktemp("steady"), shared_etcd.url, name="steady").start()
    yield c
    c.stop()


def connected_ports() -> set[int]:
    """Remote TCP ports of this process's established connections (where the SDK is connected)."""
    return {
        c.raddr.port for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED and c.raddr
    }


async def retry_disconnected(call, attempts: int = 5):
    """`await call()`, again after each Disconnected (the SDK reconnects between attempts)."""
    for attempt in range(attempts):
        try:
            return await asyncio.wait_for(call(), 60)
        except RuntimeError as exc:
            if "Disconnected" not in str(exc) or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)


def test_every_node_reports_the_same_roster_and_one_leader(steady):
    cluster = steady
    leader = cluster.wait_leader(START_ELECTION)
    cluster.wait_all_healthy(START_ELECTION)  # each node has read the others' members/ keys
    for i in range(3):
        meta = metadata(cluster.address(i))
        assert meta["name"] == "steady"
        assert [n["name"] for n in meta["nodes"]] == ["node-0", "node-1", "node-2"]
        assert [n["tcp"] for n in meta["nodes"]] == [p["tcp"] for p in cluster.ports]
        assert [(n["quic"], n["http"], n["websocket"]) for n in meta["nodes"]] == [
            (p["quic"], p["http"], p["websocket"]) for p in cluster.ports
        ]
        assert {n["ip"] for n in meta["nodes"]} == {"127.0.0.1"}
        assert leader_of(meta) == leader
        assert [n["status"] for n in meta["nodes"]] == ["healthy"] * 3


def test_a_follower_logs_in_answers_metadata_and_refuses_the_rest(steady):
    cluster = steady
    leader = cluster.wait_leader(START_ELECTION)
    follower = (leader + 1) % 3
    raw = RawClient(cluster.address(follower))
    try:
        assert raw.login().status == 0
        assert raw.read(1).status == 0  # ping
        assert raw.read(12).status == 0  # cluster metadata
        assert raw.read(201).status == NOT_ACCEPTED  # get streams
        assert raw.call(128, body=wire_name("s")).status == NOT_ACCEPTED  # create stream
    finally:
        raw.close()
    raw = RawClient(cluster.address(leader))
    try:
        assert raw.login().status == 0
        assert raw.read(201).status == 0
    finally:
        raw.close()


@pytest.mark.parametrize("start_at", ["leader", "follower"])
async def test_sdk_on_any_node_ends_on_the_leader_and_sends_and_polls(steady, start_at):
    cluster = steady
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    first = leader if start_at == "leader" else (leader + 2) % 3
    client = await sdk(cluster.address(first))
    ports = connected_ports()
    assert cluster.ports[leader]["tcp"] in ports
    if first != leader:
        assert cluster.ports[first]["tcp"] not in ports  # it left the follower
    stream = f"s-{start_at}"
    await client.create_stream(stream)
    await client.create_topic(stream, "t", 1)
    await client.send_messages(stream, "t", 0, [SendMessage(f"m{i}") for i in range(10)])
    polled = await sdk_poll(client, stream, "t", PollingStrategy.First(), count=100)
    assert [m.payload() for m in polled] == [f"m{i}".encode() for i in range(10)]
    # the stream is on the leader
    raw = RawClient(cluster.address(leader))
    try:
        raw.login()
        assert raw.read(200, b"\x02" + bytes([len(stream)]) + stream.encode()).status == 0
    finally:
        raw.close()


async def test_clients_on_different_nodes_converge_on_the_same_leader(steady):
    cluster = steady
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    a = await sdk(cluster.address(leader))
    b = await sdk(cluster.address((leader + 1) % 3))
    await a.create_stream("from-a")
    await b.create_stream("from-b")
    # both streams are on the one leader: b's request went there too
    assert await a.get_stream("from-b") is not None
    assert await b.get_stream("from-a") is not None


async def test_sigkill_of_the_leader_elects_another_and_the_sdk_follows(cluster):
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    client = await sdk(cluster.address((leader + 1) % 3))
    await client.create_stream("before")
    cluster.nodes[leader].kill()
    killed_at = time.monotonic()
    others = [i for i in range(3) if i != leader]
    new_leader = await asyncio.to_thread(cluster.wait_leader, 3 * HEARTBEAT_TIMEOUT, others, leader)
    elected_after = time.monotonic() - killed_at
    assert new_leader != leader
    assert elected_after <= 3 * HEARTBEAT_TIMEOUT, elected_after
    # the dead leader is reported unreachable, never "unknown"
    meta = metadata(cluster.address(new_leader))
    assert meta["nodes"][leader]["status"] == "unreachable"
    assert meta["nodes"][leader]["role"] == "follower"
    # The request that meets the dead connection fails with Disconnected; the SDK reconnects by
    # itself (to the address it was given, logs in again, reads the metadata, goes to the
    # leader) and the retried request succeeds there.
    await retry_disconnected(lambda: client.create_stream("after"))
    assert cluster.ports[new_leader]["tcp"] in connected_ports()
    raw = RawClient(cluster.address(new_leader))
    try:
        raw.login()
        assert raw.read(200, b"\x02\x05after").status == 0
        before = raw.read(200, b"\x02\x06before")  # created on the old leader: in etcd's meta/
        assert before.status == 0 and before.body
    finally:
        raw.close()


def test_etcd_unavailable_the_leader_steps_down_within_its_lease(cluster, etcd):
    leader = cluster.wait_leader(START_ELECTION)
    raw = RawClient(cluster.address(leader))
    try:
        assert raw.login().status == 0
        assert raw.read(201).status == 0
        etcd.pause()  # every etcd call now hangs
        paused_at = time.monotonic()
        refused_at = None
        while time.monotonic() < paused_at + 3 * HEARTBEAT_TIMEOUT:
            if raw.read(201).status == NOT_ACCEPTED:
                refused_at = time.monotonic()
                break
            time.sleep(0.02)
        assert refused_at is not None, "the leader kept serving without etcd"
        # it stopped before its lease (ttl = heartbeat_timeout) could expire
        assert refused_at - paused_at < HEARTBEAT_TIMEOUT, refused_at - paused_at
        assert leader_of(metadata(cluster.address(leader))) is None  # no leader reported
        assert raw.call(128, body=wire_name("while-paused")).status == NOT_ACCEPTED
        # login and the metadata still work on every node, and each reports no leader once its
        # own view of etcd is stale (2/3 TTL after its last round, which may be a little later
        # than the leader's last renewal)
        for i in range(3):
            while leader_of(metadata(cluster.address(i))) is not None:
                assert time.monotonic() < paused_at + 2 * HEARTBEAT_TIMEOUT, f"node {i} still reports a leader"
                time.sleep(0.05)
    finally:
        etcd.resume()
        raw.close()
    cluster.wait_leader(START_ELECTION + 3 * HEARTBEAT_TIMEOUT)  # service resumes


def test_a_graceful_stop_of_the_leader_hands_over_at_once(cluster):
    leader = cluster.wait_leader(START_ELECTION)
    assert cluster.nodes[leader].stop() == 0
    others = [i for i in range(3) if i != leader]
    new_leader = cluster.wait_leader(3 * HEARTBEAT_TIMEOUT, others, leader)
    assert new_leader != leader
    assert "no longer the leader" in cluster.nodes[leader].log()


def test_http_on_a_follower_redirects_reads_and_refuses_writes(steady):
    """Login and the metadata are answered; a read is a 307 to the same path on the leader's
    HTTP listener; a write is a 503 with Retry-After (58), as upstream without forwarding."""
    cluster = steady
    leader = cluster.wait_leader(START_ELECTION)
    follower = (leader + 1) % 3
    leader_base = f"http://127.0.0.1:{cluster.ports[leader]['http']}"
    for i, expected in ((follower, 307), (leader, 200)):
        base = f"http://127.0.0.1:{cluster.ports[i]['http']}"
        with httpx.Client(base_url=base, timeout=10) as http:
            login = http.post("/users/login", json={"username": "iggy", "password": "iggy"})
            assert login.status_code == 200, login.text
            auth = {"Authorization": f"Bearer {login.json()['access_token']['token']}"}
            meta = http.get("/cluster/metadata", headers=auth)
            assert meta.status_code == 200
            roles = [n["role"] for n in meta.json()["nodes"]]
            assert roles.count("leader") == 1 and roles[leader] == "leader"
            streams = http.get("/streams?x=1", headers=auth)
            assert streams.status_code == expected, streams.text
            created = http.post("/streams", headers=auth, json={"name": f"http-{i}"})
            if i == follower:
                assert streams.headers["location"] == leader_base + "/streams?x=1"
                assert created.status_code == 503
                assert created.headers["retry-after"] == "1"
                assert created.json()["id"] == ErrorCode.TRANSIENT_NOT_ACCEPTED
            else:
                assert created.status_code in (200, 201), created.text


async def next_batch(client, stream, consumer, auto_commit=True, partition_id=0):
    return await client.poll_messages(
        stream,
        "t",
        consumer=consumer,
        polling_strategy=PollingStrategy.Next(),
        count=100,
        auto_commit=auto_commit,
        partition_id=partition_id,
    )


async def test_auto_commit_polls_go_through_poll_routing(steady):
    """With a roster of 3 the SDK routes auto-commit polls: 103 on the main connection, then a
    second connection with 14 and 104 (TCP.md 12.6); the offsets it commits are stored."""
    cluster = steady
    leader = await asyncio.to_thread(cluster.wait_leader, START_ELECTION)
    client = await sdk(cluster.address((leader + 1) % 3))
    await client.create_stream("routed")
    await client.create_topic("routed", "t", 1)
    await client.send_messages("routed", "t", 0, [SendMessage(f"a{i}") for i in range(3)])
    first = await next_batch(client, "routed", Consumer.Single(7))
    assert [m.payload() for m in first] == [b"a0", b"a1", b"a2"]
    assert await next_batch(client, "routed", Consumer.Single(7)) == []  # committed
    await client.send_messages("routed", "t", 0, [SendMessage("a3")])
    assert [m.payload() for m in await next_batch(client, "routed", Consumer.Single(7))] == [b"a3"]
    # a group member: the poll on the second connection counts as the member's
    await client.create_consumer_group("routed", "t", "g")
    await client.join_consumer_group("routed", "t", "g")
    got = await next_batch(client, "routed", Consumer.Group("g"))
    assert [m.payload() for m in got] == [b"a0", b"a1", b"a2", b"a3"]
    assert await next_batch(client, "routed", Consumer.Group("g")) == []


def test_routing_commands_on_a_single_node_are_unavailable(tmp_path):
    from iggy.testing.server import IggyTestServer

    with IggyTestServer(tmp_path / "data") as server:
        raw = RawClient(server.tcp_address)
        try:
            assert raw.login().status == 0
            for code in (14, 103, 104, 123):
                assert raw.read(code, bytes(32)).status == ErrorCode.FEATURE_UNAVAILABLE
        finally:
            raw.close()


def test_attach_to_a_session_that_does_not_exist_is_refused(steady):
    cluster = steady
    leader = cluster.wait_leader(START_ELECTION)
    raw = RawClient(cluster.address(leader))
    try:
        assert raw.login().status == 0
        assert raw.read(14, bytes(32)).status == ErrorCode.STALE_CLIENT
        assert raw.read(14, bytes(5)).status == ErrorCode.INVALID_COMMAND
    finally:
        raw.close()


def test_a_paused_leader_is_replaced_and_rejoins_as_a_follower(cluster):
    """SIGSTOP the leader until another node is leader, then SIGCONT: the old leader refuses
    what needs a leader from then on and reports the new one."""
    leader = cluster.wait_leader(START_ELECTION)
    raw = RawClient(cluster.address(leader))
    try:
        assert raw.login().status == 0
        process = psutil.Process(cluster.nodes[leader].pid)
        process.suspend()
        try:
            others = [i for i in range(3) if i != leader]
            new_leader = cluster.wait_leader(3 * HEARTBEAT_TIMEOUT, others, leader)
        finally:
            process.resume()
        assert raw.read(201).status == NOT_ACCEPTED
        assert raw.call(128, body=wire_name("after-pause")).status == NOT_ACCEPTED
        assert cluster.wait_leader(3 * HEARTBEAT_TIMEOUT) == new_leader  # all three agree
        meta = metadata(cluster.address(leader))
        assert meta["nodes"][leader]["role"] == "follower"
        assert meta["nodes"][leader]["status"] == "healthy"
    finally:
        raw.close()
