"""Many partitions on few file descriptors: the server keeps a bounded number of segment files
open (iggy.storage.log's LRU, budget from iggy.server.node or IGGY_PARTITION_FILES_BUDGET), starts
with more partitions than its RLIMIT_NOFILE, and a create the storage cannot serve is refused
with its Iggy error and leaves neither metadata nor a directory behind.

The descriptors are counted in /proc/<pid>/fd of the server process, against the count the
same server had before any partition existed.
"""

from __future__ import annotations

import os
import random
import struct
import sys
from pathlib import Path

import pytest

from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode
from tests.conftest import ServerProcess
from tests.rawclient import ident
from tests.reliability.common import Client

NO_HTTP = {"IGGY_HTTP_ENABLED": "false"}
BUDGET = 16
# above budget + baseline: an fsync's dup, a directory fsync, the test's own connections
SLACK = 6
OP_CREATE_PARTITIONS = codes.CODE_OPERATIONS[codes.CREATE_PARTITIONS]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def stream_id(c: Client, name: str) -> int:
    reply = c.read(codes.GET_STREAM, ident(name))
    assert reply.status == 0 and reply.body
    return struct.unpack_from("<I", reply.body)[0]


def topic_partitions(c: Client, stream, topic) -> int | None:
    reply = c.read(codes.GET_TOPIC, ident(stream) + ident(topic))
    assert reply.status == 0
    if not reply.body:
        return None
    return struct.unpack_from("<I", reply.body, 12)[0]


def topics_count(c: Client, stream) -> int:
    reply = c.read(codes.GET_TOPICS, ident(stream))
    assert reply.status == 0
    return struct.unpack_from("<I", reply.body)[0]


def make_partitions(c: Client, stream: str, topics: int, partitions: int) -> list[tuple[str, int]]:
    assert c.create_stream(stream).code == 0
    out = []
    for i in range(topics):
        reply = c.create_topic(stream, f"t{i}", partitions)
        assert reply.code == 0, reply
        out += [(f"t{i}", p) for p in range(partitions)]
    return out


def send_random(c: Client, stream: str, parts, expected: dict, rng: random.Random, n: int) -> None:
    for _ in range(n):
        topic, pid = rng.choice(parts)
        got = expected.setdefault((topic, pid), [])
        payloads = [f"{topic}/{pid}/{len(got) + k}".encode() for k in range(rng.randint(1, 3))]
        reply, base = c.send(stream, topic, pid, payloads)
        assert reply.status == 0 and base == len(got), reply
        got += payloads


def check_all(c: Client, stream: str, parts, expected: dict, rng: random.Random) -> None:
    order = list(parts)
    rng.shuffle(order)
    for topic, pid in order:
        messages = c.poll_all(stream, topic, pid)
        assert [m["payload"] for m in messages] == expected.get((topic, pid), []), (topic, pid)


@pytest.fixture
def small_budget_server(tmp_path):
    srv = ServerProcess(tmp_path / "data", extra_env={**NO_HTTP, "IGGY_PARTITION_FILES_BUDGET": str(BUDGET)})
    srv.start()
    yield srv
    srv.stop()


def test_hundreds_of_partitions_on_a_budget_of_16_files(small_budget_server):
    """320 partitions, 16 segment files: random sends and polls return the right data, the
    server never holds more than baseline + 16 + a few descriptors, and a graceful restart
    and a SIGKILL restart both serve everything acknowledged."""
    srv = small_budget_server
    rng = random.Random(11)
    c = Client(srv.tcp_address)
    baseline = fd_count(srv.pid)
    parts = make_partitions(c, "many", 80, 4)
    assert fd_count(srv.pid) <= baseline + BUDGET + SLACK
    expected: dict = {}
    for _ in range(6):
        send_random(c, "many", parts, expected, rng, 150)
        assert fd_count(srv.pid) <= baseline + BUDGET + SLACK
        sample = rng.sample(parts, 40)
        check_all(c, "many", sample, expected, rng)
        assert fd_count(srv.pid) <= baseline + BUDGET + SLACK
    c.close()

    srv.restart(graceful=True)
    c = Client(srv.tcp_address)
    assert fd_count(srv.pid) <= baseline + BUDGET + SLACK
    check_all(c, "many", parts, expected, rng)
    send_random(c, "many", parts, expected, rng, 200)
    assert fd_count(srv.pid) <= baseline + BUDGET + SLACK
    c.close()

    srv.restart(graceful=False)  # SIGKILL: acknowledged sends are in the page cache
    c = Client(srv.tcp_address)
    check_all(c, "many", parts, expected, rng)
    assert fd_count(srv.pid) <= baseline + BUDGET + SLACK
    c.close()


def _low_limit_python(tmp_path, limit: int) -> str:
    """An interpreter wrapper that starts the server with RLIMIT_NOFILE = limit (soft and hard)."""
    wrapper = tmp_path / "python-low-nofile"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))\n"
        f"os.execv({sys.executable!r}, [{sys.executable!r}] + sys.argv[1:])\n"
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def test_starts_with_more_partitions_than_its_file_limit(tmp_path):
    """300 partitions hold 600 segment files; the server restarts with RLIMIT_NOFILE = 256
    (before the cache it died at start with EMFILE) and serves every partition."""
    srv = ServerProcess(tmp_path / "data", extra_env=NO_HTTP)
    srv.start()
    try:
        c = Client(srv.tcp_address)
        parts = make_partitions(c, "wide", 100, 3)
        expected: dict = {}
        send_random(c, "wide", parts, expected, random.Random(5), 300)
        c.close()
        srv.stop()
        srv.python = _low_limit_python(tmp_path, 256)
        srv.start()
        limits = Path(f"/proc/{srv.pid}/limits").read_text().splitlines()
        limit = next(line for line in limits if line.startswith("Max open files"))
        assert limit.split()[3:5] == ["256", "256"], limit
        c = Client(srv.tcp_address)
        rng = random.Random(6)
        check_all(c, "wide", parts, expected, rng)
        send_random(c, "wide", parts, expected, rng, 300)
        check_all(c, "wide", parts, expected, rng)
        assert fd_count(srv.pid) < 256
        c.close()
    finally:
        srv.stop()


def test_a_create_that_cannot_be_served_leaves_nothing(tmp_path):
    """A topic (or partition) whose directory cannot be made is refused with
    CANNOT_CREATE_PARTITION_DIRECTORY, and neither the metadata (also after a restart) nor the
    directory keeps it. The fault: a file where the directory must go (root ignores modes)."""
    srv = ServerProcess(tmp_path / "data", extra_env=NO_HTTP)
    srv.start()
    try:
        c = Client(srv.tcp_address)
        assert c.create_stream("s").code == 0
        sid = stream_id(c, "s")
        stream_dir = srv.data_dir / "streams" / str(sid)
        stream_dir.mkdir(parents=True, exist_ok=True)
        blocker = stream_dir / "topics"
        blocker.write_bytes(b"not a directory")

        reply = c.create_topic("s", "t", 2)
        assert reply.code == ErrorCode.CANNOT_CREATE_PARTITION_DIRECTORY, reply
        assert topics_count(c, "s") == 0
        assert topic_partitions(c, "s", "t") is None
        assert blocker.is_file()  # not ours: left as it was

        blocker.unlink()
        assert c.create_topic("s", "t", 1).code == 0  # the id the failed create did not keep
        assert topic_partitions(c, "s", 0) == 1
        # partitions 1 and 2: 1 is made and opened, 2 cannot be, so 1 goes again
        blocker = stream_dir / "topics" / "0" / "partitions" / "2"
        blocker.write_bytes(b"not a directory")
        reply = c.call(OP_CREATE_PARTITIONS, 0, ident("s") + ident("t") + struct.pack("<I", 2))
        assert reply.code == ErrorCode.CANNOT_CREATE_PARTITION_DIRECTORY, reply
        assert topic_partitions(c, "s", "t") == 1
        assert sorted(os.listdir(stream_dir / "topics" / "0" / "partitions")) == ["0", "2"]
        assert blocker.is_file()
        c.close()

        srv.restart(graceful=True)
        c = Client(srv.tcp_address)
        assert topics_count(c, "s") == 1
        assert topic_partitions(c, "s", "t") == 1
        blocker.unlink(missing_ok=True)  # (a start may also move what no metadata names aside)
        reply = c.call(OP_CREATE_PARTITIONS, 0, ident("s") + ident("t") + struct.pack("<I", 2))
        assert reply.code == 0, reply
        assert topic_partitions(c, "s", "t") == 3
        reply, base = c.send("s", "t", 2, [b"x"])
        assert reply.status == 0 and base == 0
        c.close()
    finally:
        srv.stop()
