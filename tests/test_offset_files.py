"""Consumer-offset files against a real server (each engine): a user allowed only to poll can
neither exhaust the server's descriptors nor create unbounded files, and a store that can't be
written answers its I/O error code, over TCP and HTTP.

* `limits.max_open_offset_files` bounds the offset files the process keeps open (before, every
  consumer id kept its file open forever: a poll-only user reached 20,000 descriptors in 5 s
  and then no TCP or HTTP connection was accepted until a restart).
* `limits.max_consumer_offsets` bounds the keys per partition and kind: 3024.
* a read-only offsets directory answers 3023 cannot_open_consumer_offsets_file, a file that
  can't be written 10006 cannot_write_to_file (before: error 1 and a traceback). On the uring
  engine the store is tried in C first and falls back to Python, which answers the code.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import httpx
import pytest
from apache_iggy import GlobalPermissions, Permissions, SendMessage

from iggy.protocol.codes import CHECKSUMMED_OPS
from iggy.protocol.wire import build_request
from tests.conftest import ServerProcess, connect_root, server_with_env
from tests.rawclient import OP_READ, RawClient, consumer_target, poll_body, store_offset_body

STREAM, TOPIC = "offs", "t"
GET_OFFSET = 120
OP_STORE_OFFSET = 161
OP_DELETE_OFFSET = 162
POLL = 100
POLLER, POLLER_PASSWORD = "poller", "secret-poller"


def offset_target(consumer_id: int, partition: int, kind: int = 1) -> bytes:
    return consumer_target(STREAM, TOPIC, partition, consumer_id, kind)


def store_body(consumer_id: int, partition: int, offset: int) -> bytes:
    return store_offset_body(STREAM, TOPIC, partition, offset, consumer_id)


def pipelined(c: RawClient, requests, chunk: int = 250):
    """Send (operation, code, body) requests in pipelined chunks; their replies in order."""
    replies = []
    for start in range(0, len(requests), chunk):
        frames = []
        for op, code, body in requests[start : start + chunk]:
            if op == OP_READ:
                request = c.request + 1
            else:
                c.request += 1
                request = c.request
            frames.append(
                build_request(
                    op,
                    code,
                    body,
                    session=c.session,
                    request=request,
                    client=c.client,
                    with_checksum=op in CHECKSUMMED_OPS,
                )
            )
        c.send_raw(b"".join(frames))
        replies += [c.read_reply() for _ in frames]
    return replies


def store_all(c: RawClient, items) -> list[int]:
    """Store {(consumer id, partition): offset}; the reply codes."""
    return [
        r.code for r in pipelined(c, [(OP_STORE_OFFSET, 0, store_body(cid, p, o)) for (cid, p), o in items.items()])
    ]


def read_all(c: RawClient, keys) -> dict:
    """{(consumer id, partition): stored offset or None}."""
    replies = pipelined(c, [(OP_READ, GET_OFFSET, offset_target(cid, p)) for cid, p in keys])
    out = {}
    for key, r in zip(keys, replies, strict=True):
        assert r.status == 0, r
        out[key] = struct.unpack("<IQQ", r.body)[2] if r.body else None
    return out


def fd_count(srv) -> int:
    return len(os.listdir(f"/proc/{srv.pid}/fd"))


def poller(srv) -> RawClient:
    c = RawClient(srv.tcp_address)
    assert c.login(POLLER, POLLER_PASSWORD).status == 0
    return c


async def make_world(srv, partitions: int = 2, messages: int = 10):
    """A topic with `messages` messages in each partition and a user allowed only to poll."""
    root = await connect_root(srv.tcp_address)
    await root.create_stream(STREAM)
    await root.create_topic(STREAM, TOPIC, partitions)
    for p in range(partitions):
        await root.send_messages(STREAM, TOPIC, p, [SendMessage(f"m{i}") for i in range(messages)])
    await root.create_user(
        POLLER, POLLER_PASSWORD, permissions=Permissions(global_permissions=GlobalPermissions(poll_messages=True))
    )
    stream, topic = await root.get_stream(STREAM), await root.get_topic(STREAM, TOPIC)
    return root, Path(srv.data_dir) / "streams" / str(stream.id) / "topics" / str(topic.id) / "partitions"


def http_token(srv) -> str:
    r = httpx.post(srv.http_url + "/users/login", json={"username": POLLER, "password": POLLER_PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]["token"]


def http_store(srv, token: str, consumer_id: int, partition: int, offset: int) -> httpx.Response:
    return httpx.put(
        f"{srv.http_url}/streams/{STREAM}/topics/{TOPIC}/consumer-offsets",
        headers={"Authorization": f"Bearer {token}"},
        json={"consumer_id": consumer_id, "partition_id": partition, "offset": offset},
    )


def assert_no_traceback(srv):
    assert "Traceback" not in srv.log()


small_cache = server_with_env(IGGY_LIMITS_MAX_OPEN_OFFSET_FILES="8")


async def test_poll_only_user_storing_thousands_of_consumer_ids_keeps_descriptors_bounded(small_cache):
    srv, budget = small_cache, 8
    await make_world(srv)
    c = poller(srv)
    base = fd_count(srv)
    # 3,000 consumer ids on partition 0 and 600 on partition 1 (the budget is global)
    expected = {(cid, 0): cid % 10 for cid in range(1, 3001)}
    expected.update({(cid, 1): (cid + 3) % 10 for cid in range(1, 601)})
    items = list(expected.items())
    peak = base
    for start in range(0, len(items), 300):
        assert set(store_all(c, dict(items[start : start + 300]))) == {0}
        peak = max(peak, fd_count(srv))
    # budget + a constant: the excess is at most one pinned descriptor per storing thread
    assert peak <= base + budget + 4, (base, peak)
    assert read_all(c, list(expected)) == expected
    # the server still accepts new connections: TCP (login and a store) and HTTP
    other = poller(srv)
    assert store_all(other, {(5000, 0): 9}) == [0]
    expected[(5000, 0)] = 9
    token = http_token(srv)
    assert http_store(srv, token, 5001, 1, 8).status_code == 204
    expected[(5001, 1)] = 8
    assert httpx.get(srv.http_url + "/ping").status_code == 200
    assert fd_count(srv) <= base + budget + 4 + 2  # + the two new connections
    other.close()
    c.close()

    srv.restart()
    c = poller(srv)
    base = fd_count(srv)
    assert read_all(c, list(expected)) == expected  # everything read back after the restart
    updated = {key: (value + 1) % 10 for key, value in list(expected.items())[::7]}
    assert set(store_all(c, updated)) == {0}  # evicted and reloaded keys reopen their files
    expected.update(updated)
    assert read_all(c, list(expected)) == expected
    assert fd_count(srv) <= base + budget + 4
    c.close()
    assert_no_traceback(srv)


async def test_stored_consumer_offsets_are_limited_per_partition(tmp_path):
    srv = ServerProcess(tmp_path / "data", extra_env={"IGGY_LIMITS_MAX_CONSUMER_OFFSETS": "5"}).start()
    try:
        root, _ = await make_world(srv)
        c = poller(srv)
        assert store_all(c, {(cid, 0): 1 for cid in range(1, 6)}) == [0] * 5
        assert store_all(c, {(6, 0): 1}) == [3024]  # a new consumer id: refused
        assert store_all(c, {(3, 0): 7}) == [0]  # a known one: updated
        assert store_all(c, {(6, 1): 1}) == [0]  # per partition
        token = http_token(srv)
        r = http_store(srv, token, 7, 0, 1)
        assert r.status_code == 400 and r.json()["id"] == 3024 and r.json()["code"] == "too_many_consumer_offsets"
        assert http_store(srv, token, 4, 0, 2).status_code == 204
        # a poll with auto-commit would create a key too
        poll = poll_body(STREAM, TOPIC, 0, strategy=3, count=1, auto_commit=True, consumer=8)  # strategy 3: first
        assert c.read(POLL, poll).status == 3024
        no_commit = poll_body(STREAM, TOPIC, 0, strategy=3, count=1, consumer=8)
        assert c.read(POLL, no_commit).status == 0  # without auto-commit: served
        # delete makes room
        assert c.call(OP_DELETE_OFFSET, 0, offset_target(1, 0) + b"\x01").code == 0
        assert store_all(c, {(6, 0): 2}) == [0]
        assert read_all(c, [(cid, 0) for cid in range(1, 9)]) == {
            (1, 0): None,
            (2, 0): 1,
            (3, 0): 7,
            (4, 0): 2,
            (5, 0): 1,
            (6, 0): 2,
            (7, 0): None,
            (8, 0): None,
        }
        c.close()
        assert "a new key is refused (limits.max_consumer_offsets)" in srv.log()
        assert_no_traceback(srv)
    finally:
        srv.stop()


def _mount_read_only(path: Path) -> str | None:
    """Bind-mount `path` read-only over itself (root ignores permission bits, not a read-only
    mount); None, or why it can't be done here."""
    if os.geteuid() != 0:
        return "bind mounts need root"
    for cmd in (["mount", "--bind", str(path), str(path)], ["mount", "-o", "remount,bind,ro", str(path)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            if cmd[1] != "--bind":
                subprocess.run(["umount", str(path)], capture_output=True)
            return f"{' '.join(cmd[:3])} failed: {r.stderr.strip()}"
    return None


async def test_store_on_a_read_only_directory_answers_the_io_code(tmp_path):
    srv = ServerProcess(tmp_path / "data", extra_env={"IGGY_LIMITS_MAX_OPEN_OFFSET_FILES": "2"}).start()
    mounted = None
    try:
        _, partitions = await make_world(srv, partitions=1)
        c = poller(srv)
        assert store_all(c, {(cid, 0): cid for cid in range(1, 5)}) == [0] * 4  # 3 and 4 stay open
        consumers = partitions / "0" / "offsets" / "consumers"
        assert sorted(os.listdir(consumers)) == ["1", "2", "3", "4"]
        reason = _mount_read_only(consumers)
        if reason is not None:
            pytest.skip(f"no read-only directory can be made here: {reason}")
        mounted = consumers
        assert store_all(c, {(10, 0): 1}) == [3023]  # a new consumer: its file can't be created
        assert store_all(c, {(1, 0): 5}) == [3023]  # an evicted one: can't be reopened
        assert store_all(c, {(4, 0): 5}) == [0]  # one whose file is still open is written
        token = http_token(srv)
        r = http_store(srv, token, 11, 0, 1)
        assert r.status_code == 400 and r.json()["id"] == 3023
        assert r.json()["code"] == "cannot_open_consumer_offsets_file"
        poll = poll_body(STREAM, TOPIC, 0, strategy=3, count=1, auto_commit=True, consumer=12)  # strategy 3: first
        assert c.read(POLL, poll).status == 3023  # auto-commit can't store either
        assert read_all(c, [(1, 0), (4, 0), (10, 0)]) == {(1, 0): 1, (4, 0): 5, (10, 0): None}
        subprocess.run(["umount", str(consumers)], check=True)
        mounted = None
        assert store_all(c, {(10, 0): 1, (1, 0): 5}) == [0, 0]  # writable again: the same connection
        c.close()
        assert "Read-only file system" in srv.log()
        assert_no_traceback(srv)

        # a file that takes no write (/dev/full: ENOSPC) answers 10006
        srv.stop()
        (consumers / "2").unlink()
        (consumers / "2").symlink_to("/dev/full")
        srv.start()
        c = poller(srv)
        assert store_all(c, {(2, 0): 3}) == [10006]
        r = http_store(srv, http_token(srv), 2, 0, 3)
        assert r.status_code == 400 and r.json()["code"] == "cannot_write_to_file"
        assert store_all(c, {(3, 0): 3}) == [0]
        c.close()
        assert_no_traceback(srv)
    finally:
        if mounted is not None:
            subprocess.run(["umount", "-l", str(mounted)], capture_output=True)
        srv.stop()
