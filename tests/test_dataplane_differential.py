"""Differential test of the shards' C data plane against the Python path.

Two servers run side by side with the same metadata: one on the uring engine (ordinary
send/poll/store-offset requests are served by C, `iggy.engine.uring.dataplane`), one on the asyncio
engine (everything in Python, `iggy.control.messages`). The same requests go to both, in the
same order: valid ones, every truncation of them (the body cut at every offset), and lying
ones (lengths, counts, kinds, flags, identifiers and checksums changed byte by byte). The
replies must agree: same status, same result body for sends and offset stores, and for polls
the same partition, current offset, count and (offset, payload) of every message. The C
parser must never answer where Python refuses, never refuse where Python answers, and no
request may take a server down.
"""

from __future__ import annotations

import functools
import random
import struct

import pytest

from iggy.protocol import codes
from iggy.protocol.batch import build_batch, iter_messages
from tests.conftest import ServerProcess
from tests.rawclient import RawClient, ident, poll_body, store_offset_body, wire_name

pytestmark = pytest.mark.skipif(
    __import__("iggy.engine.uring.engine", fromlist=["probe"]).probe() is not None,
    reason="needs io_uring for the uring side of the comparison",
)

OP = codes.CODE_OPERATIONS
poll_st = functools.partial(poll_body, "s", "t")  # partition 0 unless given
store_st = functools.partial(store_offset_body, "s", "t")  # (partition, offset)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    servers = []
    for engine in ("uring", "asyncio"):
        srv = ServerProcess(
            tmp_path_factory.mktemp(f"diff-{engine}") / "data", extra_env={"IGGY_SYSTEM_ENGINE": engine}
        ).start()
        servers.append(srv)
    clients = [RawClient(s.tcp_address) for s in servers]
    for c in clients:
        _setup(c)
    yield servers, clients
    for c in clients:
        c.close()
    for s in servers:
        s.stop()


def _ok(reply):
    assert reply.status == 0 and reply.code == 0, reply
    return reply


def _setup(c: RawClient) -> None:
    _ok(c.login())
    _ok(c.call(OP[codes.CREATE_STREAM], 0, wire_name("s")))
    _ok(c.call(OP[codes.CREATE_TOPIC], 0, ident("s") + struct.pack("<I", 2) + wire_name("t")))
    _ok(c.call(OP[codes.CREATE_CONSUMER_GROUP], 0, ident("s") + ident("t") + wire_name("g")))
    for i in range(3):
        _ok(c.call(160, 0, send_body(kind=2, value=struct.pack("<I", i % 2), payloads=[b"seed%d" % i])))


def send_body(stream=None, topic=None, kind=2, value=b"\0\0\0\0", payloads=(b"a", b"bb"), count=None):
    md = (
        ident("s" if stream is None else stream)
        + ident("t" if topic is None else topic)
        + bytes([kind, len(value)])
        + value
    )
    batch = build_batch([(7 + i, p, b"") for i, p in enumerate(payloads)], origin_timestamp=1_000_000)
    return struct.pack("<I", len(md) + 4) + md + struct.pack("<I", len(payloads) if count is None else count) + batch


def _request(c: RawClient, kind: str, body: bytes):
    if kind == "send":
        return c.call(160, 0, body)
    if kind == "store":
        return c.call(161, 0, body)
    return c.read(codes.POLL_MESSAGES, body)


def _comparable(kind: str, reply):
    if reply.command != 8:
        return ("evicted", reply.eviction_reason)
    if kind != "poll" or reply.status or len(reply.body) < 16:
        return (reply.status, reply.body)
    partition, current, count = struct.unpack_from("<IQI", reply.body)
    messages = [(m["offset"], bytes(m["payload"])) for m in iter_messages(reply.body[16:])]
    return (0, partition, current, count, messages)


def _both(pair, kind: str, body: bytes):
    servers, clients = pair
    out = []
    for i, c in enumerate(clients):
        try:
            out.append(_comparable(kind, _request(c, kind, body)))
        except (ConnectionError, OSError):
            out.append("closed")
            clients[i] = RawClient(servers[i].tcp_address)
            _ok(clients[i].login())
    assert all(s.alive() for s in servers)
    return out


def _mutations(body: bytes, rng: random.Random, n: int):
    """Every truncation, then n random single-byte changes and length lies."""
    for cut in range(len(body)):
        yield body[:cut]
    for _ in range(n):
        b = bytearray(body)
        pos = rng.randrange(len(b))
        b[pos] = rng.choice((0, 1, 2, 3, 4, 5, 6, 0x7F, 0x80, 0xFF, b[pos] ^ 1))
        yield bytes(b)
    yield body + b"\x00"
    yield body + b"\x01\x02"


CASES = {
    "send": [
        send_body(),
        send_body(kind=1, value=b""),
        send_body(kind=3, value=b"key-1"),
        send_body(stream=0, topic=0),
        send_body(stream="0", topic="t"),
        send_body(kind=2, value=b"\1\0\0\0"),
    ],
    "poll": [
        poll_st(),
        poll_st(strategy=3, count=2),
        poll_st(strategy=4, count=2),
        poll_st(strategy=5, auto_commit=True, consumer="named"),
        poll_st(strategy=2, value=1),
        poll_st(kind=2, consumer="g"),
        poll_st(None, strategy=3),
    ],
    "store": [
        store_st(0, 0),
        store_st(0, 1, consumer="named"),
        store_st(0, 0)[:-1],  # no ack byte,
        store_st(0, 0, consumer="g", kind=2),
    ],
}


@pytest.mark.parametrize("kind", ["send", "poll", "store"])
def test_c_and_python_answer_alike(pair, kind):
    rng = random.Random(f"diff-{kind}")
    disagreements = []
    checked = 0
    for base in CASES[kind]:
        for body in [base, *_mutations(base, rng, 150)]:
            uring, asyncio_ = _both(pair, kind, body)
            checked += 1
            if uring != asyncio_:
                disagreements.append((body.hex(), uring, asyncio_))
    assert checked > 500
    assert disagreements == [], disagreements[:2]


def test_the_valid_requests_succeed_on_both(pair):
    """The comparison above is only worth something if the valid cases are served, by C on
    the uring side."""
    from tests.test_dataplane import _metrics

    servers, _ = pair
    before = _metrics(servers[0])["shard_requests_native"]
    for kind, bodies in CASES.items():
        for body in bodies:
            uring, asyncio_ = _both(pair, kind, body)
            assert uring == asyncio_
            if kind == "poll" and body == CASES["poll"][5]:
                assert uring[0] == 5009, uring  # not a member of the group: refused by Python
            elif kind == "store" and body == CASES["store"][3]:
                assert uring[1][8:12] == struct.pack("<I", 5009), uring  # the same, in the result section
            else:
                assert uring[0] == 0, (kind, uring)
    # every valid request but the refused group poll and offset store was served by C
    assert _metrics(servers[0])["shard_requests_native"] - before >= sum(len(b) for b in CASES.values()) - 2
