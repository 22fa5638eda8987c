"""Sealed segments damaged while the server is stopped: the same errors on both engines, TCP
and HTTP, a log line once per damaged batch, and a startup warning for what is cheap to see.

One data directory is written (1 MiB segments, batches of 10 messages of ~3 KB: three
segments) and damaged: a payload byte of a batch in the middle of the first segment (only
the checksums can tell: the first poll of it reports it), the length field of the header of
the second segment's first batch (the startup check sees it), and a payload byte of the
newest batch of the second (recovery keeps it instead of cutting a sealed segment). A uring
server and an asyncio server each start on a copy of it and get the same requests: polls
before, at, inside and after each damaged batch, a `next` consumer with auto-commit walking
into one, and HTTP polls. The replies must be identical between the engines and follow the
contract of docs/RELIABILITY.md: a poll that starts before a damaged batch gets the messages
up to it (a shorter reply), one that starts in it gets error 4039 every time, a `next`
consumer stops there with that error (its stored offset does not move past it) and goes on
once the offset is stored past the batch.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import urllib.error
import urllib.request

import pytest

from iggy.protocol.batch import build_batch, iter_messages
from tests.conftest import ServerProcess
from tests.rawclient import RawClient, ident, poll_body, wire_name
from tests.reliability.common import option, verify_batches
from tests.test_log import batch_positions

S, T = "cs", "ct"
URING = __import__("iggy.engine.uring.engine", fromlist=["probe"]).probe() is None
ENGINES = ["uring", "asyncio"]


def _ok(reply):
    assert reply.status == 0 and reply.code == 0, reply
    return reply


def _payload(offset: int) -> bytes:
    return b"%08d" % offset + b"z" * 3000


def _fill(c: RawClient, batches: int) -> None:
    """Log in, create S/T with 1 MiB segments and send `batches` batches of 10 messages
    (payload: the offset, then 3000 bytes; id: the offset + 1)."""
    _ok(c.login())
    _ok(c.call(128, 0, wire_name(S)))
    _ok(c.call(132, 0, ident(S) + struct.pack("<I", 1) + wire_name(T) + option("segment_size", "1MiB")))
    for b in range(batches):
        batch = build_batch([(b * 10 + i + 1, _payload(b * 10 + i), b"") for i in range(10)])
        md = ident(S) + ident(T) + b"\x02\x04" + struct.pack("<I", 0)
        _ok(c.call(160, 0, struct.pack("<I", len(md) + 4) + md + struct.pack("<I", 10) + batch))


def _flip(path: str, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x04]))


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """(data directory, {name: (offset range, segment file)}) of the damaged copy."""
    root = tmp_path_factory.mktemp("corrupt")
    srv = ServerProcess(root / "data").start()
    try:
        c = RawClient(srv.tcp_address)
        _fill(c, 100)
        c.close()
    finally:
        srv.stop()
    pdir = os.path.join(srv.data_dir, "streams", "0", "topics", "0", "partitions", "0")
    logs = sorted(os.path.join(pdir, f) for f in os.listdir(pdir) if f.endswith(".log"))
    assert len(logs) == 3, logs
    seg0, seg1 = logs[0], logs[1]
    where, flips = {}, []
    pos, base, count, length = next(b for b in batch_positions(seg0) if b[1] == 100)
    flips.append((seg0, pos + length - 100))  # a payload byte
    where["payload"] = (range(base, base + count), seg0)
    pos, base, count, length = batch_positions(seg1)[0]
    flips.append((seg1, pos + 33))  # the length field of a segment's first batch
    where["header"] = (range(base, base + count), seg1)
    pos, base, count, length = batch_positions(seg1)[-1]
    flips.append((seg1, pos + length - 7))  # the newest batch of a sealed segment
    where["newest"] = (range(base, base + count), seg1)
    for path, at in flips:
        _flip(path, at)
    return srv.data_dir, where


def _result(reply):
    """(status,) or (0, current offset, [offsets]) with every served batch verified."""
    if reply.status:
        assert reply.body == b""
        return (reply.status,)
    _pid, current, n = struct.unpack_from("<IQI", reply.body)
    msgs = verify_batches(reply.body[16:])
    assert len(msgs) == n
    assert all(m["payload"] == _payload(m["offset"]) for m in msgs)
    return (0, current, [m["offset"] for m in msgs])


def _http_poll(srv, token: str, offset: int, count: int):
    url = (
        f"{srv.http_url}/streams/{S}/topics/{T}/messages?consumer_id=1&partition_id=0&kind=offset"
        f"&value={offset}&count={count}&auto_commit=false"
    )
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req) as resp:
            body = json.load(resp)
            return (resp.status, [m["header"]["offset"] for m in body["messages"]])
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
        return (exc.code, body["id"], body["code"])


def _session(srv, where) -> list:
    out = []
    c = RawClient(srv.tcp_address)
    _ok(c.login())

    def poll(consumer, strategy, value, count, auto=False):
        body = poll_body(S, T, 0, strategy=strategy, value=value, count=count, auto_commit=auto, consumer=consumer)
        return _result(c.read(100, body))

    for name, (bad, _path) in where.items():
        out.append((name, "before", poll(1, 1, bad.start - 5, 20)))
        for start in (bad.start, bad.start + 3, bad.stop - 1, bad.start):
            out.append((name, start, poll(1, 1, start, 20)))
        out.append((name, "after", poll(1, 1, bad.stop, 5)))
    # a `next` consumer with auto-commit, 30 at a time: up to the first damaged batch, then
    # the error and its stored offset stays; stored past the batch, it goes on
    bad = where["payload"][0]
    seen = []
    for _ in range(10):
        r = poll(7, 5, 0, 30, True)
        out.append(("next", r))
        if r[0]:
            break
        seen += r[2]
    assert seen == list(range(bad.start))
    for _ in range(3):
        out.append(("next", poll(7, 5, 0, 30, True)))
    body = b"\x01" + ident(7) + ident(S) + ident(T) + b"\x01" + struct.pack("<I", 0) + struct.pack("<Q", bad.stop - 1)
    out.append(("store", c.call(161, 0, body).code))
    out.append(("next", poll(7, 5, 0, 30, True)))
    c.close()
    login = urllib.request.Request(
        f"{srv.http_url}/users/login",
        data=json.dumps({"username": "iggy", "password": "iggy"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(login) as resp:
        token = json.load(resp)["access_token"]["token"]
    for name, (bad, _path) in where.items():
        out.append((name, "http", _http_poll(srv, token, bad.start - 5, 20), _http_poll(srv, token, bad.start, 20)))
    return out


@pytest.fixture(scope="module")
def sessions(damaged, tmp_path_factory):
    data_dir, where = damaged
    got = {}
    for engine in ENGINES if URING else ["asyncio"]:
        copy = tmp_path_factory.mktemp(f"corrupt-{engine}") / "data"
        shutil.copytree(data_dir, copy)
        srv = ServerProcess(copy, extra_env={"IGGY_SYSTEM_ENGINE": engine})
        srv.start()
        try:
            got[engine] = (_session(srv, where), srv.log())
        finally:
            srv.stop()
    return got


def _session_on(sessions, engine):
    """(replies, server log) of the session run on `engine`."""
    if engine not in sessions:
        pytest.skip("io_uring is not available here")
    return sessions[engine]


@pytest.mark.parametrize("engine", ENGINES)
def test_damaged_batches_answer_4039_at_the_batch(sessions, damaged, engine):
    _, where = damaged
    replies, _log = _session_on(sessions, engine)
    by = {(r[0], r[1]): r[2] for r in replies if r[0] in where and r[1] != "http"}
    for name, (bad, _path) in where.items():
        assert by[(name, "before")] == (0, 999, list(range(bad.start - 5, bad.start))), name
        for start in (bad.start, bad.start + 3, bad.stop - 1):
            assert by[(name, start)] == (4039,), (name, start)
        assert by[(name, "after")][2] == list(range(bad.stop, bad.stop + 5)), name
    nxt = [r[1] for r in replies if r[0] == "next"]
    assert nxt[-5:-1] == [(4039,)] * 4  # stuck at the batch, visibly
    assert nxt[-1][2] == list(range(110, 140))  # after the offset was stored past it
    http = {r[0]: r[2:] for r in replies if r[1] == "http"}
    for name, (bad, _path) in where.items():
        assert http[name] == ((200, list(range(bad.start - 5, bad.start))), (400, 4039, "invalid_batch_checksum"))


@pytest.mark.parametrize("engine", ENGINES)
def test_logged_once_per_batch_and_reported_at_startup(sessions, damaged, engine):
    _, where = damaged
    _replies, text = _session_on(sessions, engine)
    for name, (bad, path) in where.items():
        lines = [
            line
            for line in text.splitlines()
            if f"batch at offset {bad.start} in segment " in line
            and line.endswith(f"{os.path.basename(path)} fails its checksum")
        ]
        assert len(lines) == 1, (name, lines)
        assert "partition 0/0/0:" in lines[0]
    # the startup check names the file of the damaged header and recovery the kept batch; the
    # payload damage of the first segment needs the checksums: it shows at the first poll
    warnings = [line for line in text.splitlines() if " WARNING iggy.storage.log: " in line]
    header_seg = os.path.basename(where["header"][1])  # (each server runs on a copy)
    assert any(
        header_seg in line and "do not match" in line and f"offset {where['header'][0].start}" in line
        for line in warnings
    )
    assert any(
        header_seg in line and f"offset {where['newest'][0].start} in sealed segment" in line for line in warnings
    )
    assert not any(os.path.basename(where["payload"][1]) in line for line in warnings)
    assert "Traceback" not in text


def test_both_engines_answer_the_same(sessions):
    if len(sessions) < 2:
        pytest.skip("needs io_uring for the uring side of the comparison")
    assert sessions["uring"][0] == sessions["asyncio"][0]


def test_startup_check_finds_nothing_on_intact_data(tmp_path):
    srv = ServerProcess(tmp_path / "data").start()
    try:
        c = RawClient(srv.tcp_address)
        _fill(c, 40)
        c.close()
        srv.restart()
        c = RawClient(srv.tcp_address)
        _ok(c.login())
        r = c.read(100, poll_body(S, T, 0, count=1000))
        assert len(list(iter_messages(r.body[16:]))) == 400
        c.close()
    finally:
        srv.stop()
    assert "WARNING iggy.storage.log" not in srv.log()
