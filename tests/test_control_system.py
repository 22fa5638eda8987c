"""System commands: ping, stats, option catalog, clients, cluster metadata, unknown codes."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from apache_iggy import GlobalPermissions, IggyClient, Permissions

from tests.conftest import login_as, sdk_error, uniq
from tests.rawclient import RawClient, ident

PING, GET_STATS, GET_SNAPSHOT, GET_CLUSTER_METADATA, DESCRIBE_OPTIONS = 1, 10, 11, 12, 13
GET_ME, GET_CLIENT, GET_CLIENTS = 20, 21, 22
U64_MAX = 2**64 - 1


def str32(body: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", body, pos)
    return body[pos + 4 : pos + 4 + n].decode(), pos + 4 + n


def parse_clients(body: bytes) -> dict:
    """GET_CLIENTS: Client x n (u32 id, u32 user, u8 transport, str32 address, u32 groups)."""
    out, pos = {}, 0
    while pos < len(body):
        client_id, user_id, transport = struct.unpack_from("<IIB", body, pos)
        address, pos = str32(body, pos + 9)
        (groups,) = struct.unpack_from("<I", body, pos)
        pos += 4
        out[client_id] = (user_id, transport, address, groups)
    return out


async def test_ping(srv, root):
    await root.ping()
    anon = IggyClient(srv.tcp_address)
    await anon.connect()
    await anon.ping()  # no login needed
    c = RawClient(srv.tcp_address)
    try:
        reply = c.read(PING)
        assert (reply.command, reply.operation, reply.status, reply.body) == (8, 2, 0, b"")
    finally:
        c.close()
    assert await root.send_binary_request(PING, b"") == b""


async def test_get_stats_counts_what_exists(srv, root):
    before = await root.get_stats()
    s = uniq("stats")
    await root.create_stream(s)
    await root.create_topic(s, "a", 3)
    await root.create_topic(s, "b", 2)
    await root.create_consumer_group(s, "a", "g")
    after = await root.get_stats()
    assert after.streams_count == before.streams_count + 1
    assert after.topics_count == before.topics_count + 2
    assert after.partitions_count == before.partitions_count + 5
    assert after.segments_count >= before.segments_count + 5
    assert after.consumer_groups_count == before.consumer_groups_count + 1
    assert after.process_id == srv.proc.pid
    major, minor, patch = (int(x) for x in after.iggy_server_version.split("-")[0].split("."))
    assert after.iggy_server_semver == major * 1_000_000 + minor * 1_000 + patch  # 0.9.0 -> 9000
    assert after.run_time.total_seconds() > 0 and after.start_time > 1_600_000_000_000_000
    assert after.memory_usage > 0 and after.total_memory >= after.available_memory > 0
    assert after.threads_count >= 1 and after.total_disk_space >= after.free_disk_space > 0
    assert after.hostname == socket.gethostname() and after.os_name
    assert after.cache_metrics == {}
    assert after.clients_count >= 1
    await root.delete_stream(s)
    gone = await root.get_stats()
    assert (gone.streams_count, gone.topics_count, gone.partitions_count) == (
        before.streams_count,
        before.topics_count,
        before.partitions_count,
    )


async def test_get_stats_counts_clients(srv, root, raw_root):
    extra = [RawClient(srv.tcp_address) for _ in range(3)]
    try:
        for c in extra:
            assert c.read(PING).status == 0  # the connection is registered
        ports = {f"127.0.0.1:{c.sock.getsockname()[1]}" for c in extra}
        # clients of earlier tests may still be going away: compare within a quiet moment
        for _ in range(50):
            first = parse_clients(raw_root.read(GET_CLIENTS).body)
            count = (await root.get_stats()).clients_count
            second = parse_clients(raw_root.read(GET_CLIENTS).body)
            if first.keys() == second.keys():
                break
        assert count == len(first) and count >= 5  # root, raw_root and the three extra
        assert ports <= {addr for _, _, addr, _ in first.values()}
    finally:
        for c in extra:
            c.close()


async def test_stats_needs_a_server_permission(srv, root):
    name = uniq("nostats")
    await root.create_user(name, "secret")
    u = await login_as(srv, name, "secret")
    with sdk_error("Unauthorized"):
        await u.get_stats()
    reader = uniq("stats-reader")
    await root.create_user(
        reader, "secret", permissions=Permissions(global_permissions=GlobalPermissions(read_servers=True))
    )
    r = await login_as(srv, reader, "secret")
    assert (await r.get_stats()).process_id == srv.proc.pid
    c = RawClient(srv.tcp_address)
    try:
        assert c.login(name, "secret").status == 0
        assert c.read(GET_STATS).code == 41
        assert c.read(GET_CLIENTS).code == 41
        assert c.read(GET_CLIENT, struct.pack("<I", 1)).code == 41
        assert c.read(GET_ME).status == 0  # your own client needs nothing
    finally:
        c.close()


async def test_describe_options(root, raw_root):
    topic = await root.describe_options("topic")
    by_key = {o.key: o for o in topic}
    assert list(by_key) == [
        "compression_algorithm",
        "message_expiry",
        "max_topic_size",
        "segment_size",
        "enforce_fsync",
        "messages_required_to_save",
        "size_of_messages_required_to_save",
        "preallocate_segments",
    ]
    assert by_key["compression_algorithm"].kind == "string"
    assert by_key["segment_size"].kind == "uint64"
    assert by_key["messages_required_to_save"].kind == "uint32"
    assert by_key["enforce_fsync"].kind == "bool"
    assert all(o.description for o in topic)
    assert str(by_key["segment_size"].default_value) == "HeaderValue.UnsignedInt64(1073741824)"
    assert str(by_key["message_expiry"].default_value) == f"HeaderValue.UnsignedInt64({U64_MAX})"
    assert await root.describe_options("stream") == []
    assert await root.describe_options("user") == []
    with pytest.raises(ValueError):
        root.describe_options("partition")  # refused by the SDK itself
    empty = raw_root.read(DESCRIBE_OPTIONS, b"\x02")
    assert empty.status == 0 and empty.body == b"\x00\x00\x00\x00"
    assert raw_root.read(DESCRIBE_OPTIONS, b"\x09").code == 3  # unknown scope
    assert raw_root.read(DESCRIBE_OPTIONS, b"").code == 3  # no scope at all


async def test_clients(srv, raw_root):
    me = raw_root.read(GET_ME)
    assert me.status == 0
    my_id, my_user, transport = struct.unpack_from("<IIB", me.body)
    address, _ = str32(me.body, 9)
    assert (my_user, transport) == (0, 1)
    assert int(address.rsplit(":", 1)[1]) == raw_root.sock.getsockname()[1]

    anon = RawClient(srv.tcp_address)
    try:
        assert anon.read(PING).status == 0
        clients = parse_clients(raw_root.read(GET_CLIENTS).body)
        assert clients[my_id] == (0, 1, address, 0)
        anon_port = anon.sock.getsockname()[1]
        anon_entries = [cid for cid, (user, _, addr, _) in clients.items() if addr == f"127.0.0.1:{anon_port}"]
        assert len(anon_entries) == 1
        anon_id = anon_entries[0]
        assert clients[anon_id][0] == 0xFFFFFFFF  # not logged in
        one = raw_root.read(GET_CLIENT, struct.pack("<I", anon_id))
        assert one.status == 0
        assert struct.unpack_from("<IIB", one.body) == (anon_id, 0xFFFFFFFF, 1)
        assert anon.login().status == 0
        one = raw_root.read(GET_CLIENT, struct.pack("<I", anon_id))
        assert struct.unpack_from("<I", one.body, 4)[0] == 0  # now logged in as root
    finally:
        anon.close()
    missing = raw_root.read(GET_CLIENT, struct.pack("<I", 0xFFFFFFF0))
    assert missing.status == 0 and missing.body == b""
    # a closed connection disappears from the list
    for _ in range(100):
        if anon_id not in parse_clients(raw_root.read(GET_CLIENTS).body):
            break
        time.sleep(0.02)
    assert anon_id not in parse_clients(raw_root.read(GET_CLIENTS).body)


async def test_clients_through_send_binary_request(root):
    listed = parse_clients(await root.send_binary_request(GET_CLIENTS, b""))
    me = await root.send_binary_request(GET_ME, b"")
    my_id, my_user = struct.unpack_from("<II", me)
    assert my_user == 0 and my_id in listed


async def test_cluster_metadata_is_one_healthy_leader(srv, raw_root):
    reply = raw_root.read(GET_CLUSTER_METADATA)
    assert reply.status == 0
    body = reply.body
    name, pos = str32(body, 0)
    assert name == "single-node"
    (nodes,) = struct.unpack_from("<I", body, pos)
    assert nodes == 1
    node_name, pos = str32(body, pos + 4)
    ip, pos = str32(body, pos)
    assert node_name == "iggy-node"
    tcp, quic, http, ws, role, status = struct.unpack_from("<HHHHBB", body, pos)
    assert pos + 10 == len(body)
    assert ip == "127.0.0.1" and tcp == srv.tcp_port and http == srv.http_port
    assert (role, status) == (0, 0)


async def test_unknown_and_unavailable_commands(srv, root, raw_root):
    with sdk_error("Invalid command"):
        await root.send_binary_request(9999, b"abc")
    assert raw_root.read(9999, b"abc").code == 3
    assert raw_root.read(0).code == 3
    with pytest.raises(RuntimeError):
        await root.send_binary_request(40, b"")  # session codes are refused client-side
    # the connection survives an unknown code
    assert raw_root.read(PING).status == 0
    await root.ping()
    # single node: cluster routing and snapshots are not offered
    assert raw_root.read(GET_SNAPSHOT, b"\x01\x01\x06").code == 5
    assert raw_root.read(102, ident(0) + ident(0) + struct.pack("<I", 0) + b"\x00").code == 5


async def test_unknown_command_before_login(srv):
    c = RawClient(srv.tcp_address)
    try:
        reply = c.read(9999, b"")
        assert reply.code in (3, 40)  # refused either way, and the connection lives
        assert c.read(PING).status == 0
    finally:
        c.close()
