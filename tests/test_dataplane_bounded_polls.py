"""Bounded polls in cluster mode: the shards' C data plane against the Python handler, in process.

On a cluster's leader the uring shards serve a poll without auto-commit in C
(`iggy.engine.uring.dataplane`) while the partition's high-watermark is published
(`PartitionLog.set_visible_end`) and the fencing deadline is ahead (`Router.set_poll_until`);
every other poll goes to `iggy.control.messages.poll_messages`, which bounds it by the same
high-watermark. For the same partition contents both must give the same reply, byte for byte.

One ControlPlane on a scratch directory (real metadata, logs, offset stores, group coordinator
and routing table; no server): its routing table is the one the shards read, so `serve` runs
the C path over the very logs `ControlPlane.handle` reads. A few hundred seeded random polls —
strategy, value, count, consumer (a consumer by id or name, the group member that owns the
partition, and the consumers C hands over), stored offset, byte cap, and the high-watermark (0,
inside a batch, at a batch boundary, at the end, past the end, below a trimmed log's first
offset, not published) — go to both in turn. Where C answers, the two reply frames must be
equal; where it must hand the poll over (auto-commit, a partition not reconciled, not leading
or past the fencing deadline, a group partition the client does not own), it must, and Python
must answer.

The cluster itself (election, etcd, replica links) is not part of this: `plane.cluster` is a
stand-in leader that answers what `iggy.cluster.membership.Cluster` and
`iggy.cluster.replication.LogReplication` would — whether it leads, whether a partition is
reconciled, its high-watermark — from the same values the test publishes to the shards.
"""

from __future__ import annotations

import random
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from iggy.cluster.membership import Cluster
from iggy.engine.uring.dataplane import serve
from iggy.engine.uring.router import principal
from iggy.protocol import codes
from iggy.protocol.batch import build_batch, encode_headers, iter_messages
from iggy.protocol.wire import build_request, parse_header, parse_reply_header
from iggy.storage.consumer_offsets import CONSUMER, GROUP, consumer_key
from iggy.storage.log import VISIBLE_UNKNOWN
from tests.conftest import ROOT_USER, InProcessPlane
from tests.rawclient import ident, poll_body, topic_option, wire_name

U32 = struct.Struct("<I")
OP = codes.CODE_OPERATIONS
MiB = 1 << 20
CASES = 500
U64_MAX = (1 << 64) - 1
MAIN_BATCHES = (1, 3, 5, 2, 7, 1, 4, 6)  # messages per batch of s/t partition 0
Key = tuple[int, int, int]


@dataclass
class _Replication:
    """What LogReplication answers on the leader: a partition is reconciled in this epoch once
    it has a high-watermark in `ends`; polls are served below it."""

    ends: dict[Key, int] = field(default_factory=dict)

    def writable(self, key: Key, partition: object) -> bool:
        return key in self.ends

    def visible_end(self, key: Key) -> int | None:
        return self.ends[key]


@dataclass
class _Offsets:
    """The consumer offsets kept in etcd (iggy.cluster.offsets): auto-commits are recorded."""

    stored_calls: list[tuple[tuple[int, ...], int]] = field(default_factory=list)

    def stored(self, key: tuple[int, ...], offset: int, wait: bool) -> None:
        self.stored_calls.append((key, offset))


@dataclass
class _Leader:
    NOT_LEADER = Cluster.NOT_LEADER
    leading: bool = True
    replication: _Replication = field(default_factory=_Replication)
    offsets: _Offsets = field(default_factory=_Offsets)

    def serves(self, code: int) -> bool:
        return self.leading


@dataclass
class _Part:
    """One polled partition: its names on the wire, its key and its log's layout."""

    topic: str
    pid: int
    key: Key
    log: object
    offsets: object
    bounds: list[int]  # where its batches start, and its end
    timestamps: list[int]


def _ok(reply: bytes, op: int) -> bytes:
    status = parse_reply_header(reply)[3]
    framed = op in codes.RESULT_FRAMED_OPS
    assert status == 0 and (not framed or reply[256:260] == b"\0\0\0\0"), (op, status, reply[256:272])
    return reply[256:]


def _call(h: InProcessPlane, code: int, body: bytes) -> bytes:
    return _ok(h.handle(h.root, OP[code], 0, body), OP[code])


def _send(h: InProcessPlane, topic: str, pid: int, messages: list[tuple[int, bytes, bytes, int]]) -> None:
    meta = ident("s") + ident(topic) + b"\x02\x04" + U32.pack(pid) + U32.pack(len(messages))
    _call(h, codes.SEND_MESSAGES, U32.pack(len(meta)) + meta + build_batch(messages))


def _layout(h: InProcessPlane, topic: str, pid: int, sizes: list[int]) -> _Part:
    s = h.meta.state.stream_by_name("s")
    assert s is not None
    t = next(t for t in s.topics.values() if t.name == topic)
    p = h.storage.partition(s.id, t.id, pid)
    assert p is not None
    lg = p.log
    bounds, at = [], 0
    for n in sizes:
        if at >= lg.first_offset:
            bounds.append(at)
        at += n
    bounds.append(at)
    assert at == lg.next_offset
    timestamps = []
    if not lg.is_empty:
        data, n = lg.read(lg.first_offset, 1 << 20, 1 << 30)
        assert n == lg.next_offset - lg.first_offset
        timestamps = sorted({m["timestamp"] for m in iter_messages(data)})
    return _Part(topic, pid, (s.id, t.id, pid), lg, p.offsets, bounds, timestamps)


@pytest.fixture
def leader(tmp_path):
    """The partitions, filled on a single node, then the plane switched to cluster mode as the
    leader. s/t partition 0: batches of 1 to 7 messages of 1 to 1500 bytes, some with headers
    and timestamp deltas; s/t partition 1: empty; s/trim: its first segment deleted (its first
    offset is above 0). Root's session is the member of group g that owns both of s/t; `stranger`, another
    session of the same user, is not a member."""
    h = InProcessPlane(str(tmp_path))
    rng = random.Random(7)
    _call(h, codes.CREATE_STREAM, wire_name("s"))
    _call(h, codes.CREATE_TOPIC, ident("s") + U32.pack(2) + wire_name("t"))
    segment = topic_option("segment_size", 12, struct.pack("<Q", MiB))
    _call(h, codes.CREATE_TOPIC, ident("s") + U32.pack(1) + wire_name("trim") + segment)
    _call(h, codes.CREATE_CONSUMER_GROUP, ident("s") + ident("t") + wire_name("g"))
    ids = iter(range(1, 1 << 30))

    def messages(n: int, largest: int) -> list[tuple[int, bytes, bytes, int]]:
        out = []
        for i in range(n):
            headers = b""
            if rng.random() < 0.4:
                headers = encode_headers([(2, b"key%d" % i, 2, b"v" * rng.randint(1, 40))])
            out.append((next(ids), rng.randbytes(rng.randint(1, largest)), headers, rng.choice((0, 0, 3 * i))))
        return out

    for n in MAIN_BATCHES:
        _send(h, "t", 0, messages(n, 1500))
    # s/trim: two small messages, then three large ones (the segment goes past 1 MiB and is
    # sealed), then small batches in the next segment; the sealed segment is deleted
    trim_batches = [2, 3, 2, 4, 3]
    _send(h, "trim", 0, messages(2, 900))
    _send(h, "trim", 0, [(next(ids), rng.randbytes(400_000), b"", 0) for _ in range(3)])
    for n in trim_batches[2:]:
        _send(h, "trim", 0, messages(n, 900))
    _call(h, codes.DELETE_SEGMENTS, ident("s") + ident("trim") + struct.pack("<II", 0, 1))
    parts = {
        "main": _layout(h, "t", 0, list(MAIN_BATCHES)),
        "empty": _layout(h, "t", 1, []),
        "trim": _layout(h, "trim", 0, trim_batches),
    }
    assert parts["trim"].log.first_offset > 0, "the first segment of s/trim was not deleted"
    _call(h, codes.JOIN_CONSUMER_GROUP, ident("s") + ident("t") + ident("g"))
    sid, tid, _ = parts["main"].key
    g = next(iter(h.meta.state.streams[sid].topics[tid].groups.values()))
    assert h.plane.groups.owners((sid, tid, g.id)) == {0: h.root.client_id, 1: h.root.client_id}
    stranger = h.plane.open_session("stranger", 1)
    user = h.meta.state.user_by_name(ROOT_USER)
    assert user is not None
    h.plane.bind_login(stranger, user, 2)
    cluster = _Leader()
    h.plane.cluster = cluster
    h.plane.routes.set_cluster()
    yield h, cluster, parts, stranger, g.id
    h.close()


def _visible(rng: random.Random, part: _Part) -> tuple[str, int | None]:
    """A high-watermark for `part`, and what kind of place it is."""
    end, first = part.bounds[-1], part.log.first_offset
    starts = part.bounds[:-1]
    inside = [(b, e) for b, e in zip(starts, part.bounds[1:], strict=False) if e - b > 1]
    kinds = ["zero", "boundary", "inside", "end", "past", "unknown"] + (["below first"] if first > 1 else [])
    kind = rng.choices(kinds, [1, 3, 4, 2, 2, 1, 1][: len(kinds)])[0]
    if kind == "zero":
        return kind, 0
    if kind == "boundary" and starts:
        return kind, rng.choice(starts)
    if kind == "inside" and inside:
        b, e = rng.choice(inside)
        return kind, rng.randint(b + 1, e - 1)
    if kind == "past":
        return kind, rng.choice((end + rng.randint(1, 5), U64_MAX - 1))
    if kind == "below first":
        return kind, rng.randint(1, first - 1)
    if kind == "unknown":
        return kind, None
    return "end", end


def _value(rng: random.Random, part: _Part, strategy: int) -> int:
    end = part.bounds[-1]
    if strategy == codes.STRATEGY_OFFSET:
        first = part.log.first_offset
        kind = rng.choice(("bound", "any", "any") + (("below first",) * 2 if first else ()) + ("max",))
        if kind == "bound":
            return rng.choice(part.bounds)
        if kind == "below first":  # a trimmed log: before what it holds
            return rng.randrange(first)
        return rng.randint(0, end + 3) if kind == "any" else U64_MAX
    if strategy == codes.STRATEGY_TIMESTAMP:
        if part.timestamps and rng.random() < 0.85:
            return max(0, rng.choice(part.timestamps) + rng.choice((-1, 0, 0, 1)))
        return rng.choice((0, U64_MAX))
    return rng.choice((0, 0, rng.getrandbits(64)))  # not used by first, last and next


def _describe(frame: bytes | None) -> object:
    """A reply as (status, partition, current, count, offsets), for the failure message."""
    if frame is None:
        return None
    status = parse_reply_header(frame)[3]
    body = frame[256:]
    if status or len(body) < 16:
        return status, body.hex()
    pid, current, count = struct.unpack_from("<IQI", body)
    return status, pid, current, count, [m["offset"] for m in iter_messages(body[16:])]


@dataclass
class _Case:
    """One poll and the state it meets (the high-watermark, the node's role, the byte cap)."""

    part: str  # a key of the fixture's partitions
    strategy: int
    value: int
    count: int
    consumer: str  # id, name, no partition (single consumers); group, stranger, group without partition
    auto_commit: bool
    where: str  # what kind of place the high-watermark is (see _visible)
    visible: int | None  # None: not published (the partition is not reconciled)
    role: str  # leading, not leading, past the deadline
    cap: int  # the byte cap of a reply (ControlPlane.max_poll_bytes, the shards' max_poll_bytes)
    stored: int | None  # the consumer's stored offset (next)

    @property
    def hands_over(self) -> bool:
        """Must the C data plane leave this poll to Python?"""
        refused = self.consumer in ("stranger", "group without partition")
        return self.auto_commit or self.visible is None or self.role != "leading" or refused


def _draw(rng: random.Random, parts: dict[str, _Part], default_cap: int) -> _Case:
    name = rng.choices(list(parts), [6, 1, 3])[0]
    part = parts[name]
    strategy = rng.randint(codes.STRATEGY_OFFSET, codes.STRATEGY_NEXT)
    # (consumer, weight): groups only on s/t; a single consumer that names no partition polls 0
    consumers = {"id": 3, "name": 2, "no partition": int(part.pid == 0)}
    if part.topic == "t":
        consumers |= {"group": 5, "stranger": 1, "group without partition": 1}
    where, visible = _visible(rng, part)
    return _Case(
        part=name,
        strategy=strategy,
        value=_value(rng, part, strategy),
        count=rng.choice((1, 1, 2, 3, 5, 8, 13, 30, 1000, (1 << 32) - 1)),
        consumer=rng.choices(list(consumers), list(consumers.values()))[0],
        auto_commit=rng.random() < 0.08,
        where=where,
        visible=visible,
        role=rng.choices(["leading", "not leading", "past the deadline"], [92, 4, 4])[0],
        cap=rng.choice((default_cap,) * 5 + (1, 200, 1500, 5000, 40_000)),
        stored=rng.choice((None, rng.randint(0, part.bounds[-1] + 2))),
    )


def test_bounded_polls_agree_byte_for_byte(leader):
    h, cluster, parts, stranger, group_id = leader
    plane, router = h.plane, h.plane.routes.router
    rng = random.Random(2026)
    default_cap = plane.max_poll_bytes
    seen: Counter[str] = Counter()
    for i in range(CASES):
        case = _draw(rng, parts, default_cap)
        part = parts[case.part]
        grouped = case.consumer in ("group", "stranger", "group without partition")
        kind, consumer = (codes.CONSUMER_GROUP, "g") if grouped else (codes.CONSUMER_SINGLE, 1)
        if case.consumer == "name":
            consumer = "named"
        session = stranger if case.consumer == "stranger" else h.root
        if case.strategy == codes.STRATEGY_NEXT:  # where the consumer stands
            store_kind, key = (GROUP, group_id) if grouped else (CONSUMER, consumer_key(consumer))
            if part.offsets.get(store_kind, key) != case.stored:
                if case.stored is None:
                    part.offsets.delete(store_kind, key)
                else:
                    part.offsets.store(store_kind, key, case.stored)
        pid = None if case.consumer in ("no partition", "group without partition") else part.pid
        how = dict(strategy=case.strategy, value=case.value, count=case.count, auto_commit=case.auto_commit)
        body = poll_body("s", part.topic, pid, consumer=consumer, kind=kind, **how)
        frame = build_request(2, codes.POLL_MESSAGES, body, request=i + 1, client=0xC0FFEE + i)

        # the shards and the control plane are told the same: high-watermark, role, byte cap
        for other in parts.values():
            other.log.set_visible_end(VISIBLE_UNKNOWN)
        cluster.replication.ends.clear()
        if case.visible is not None:
            part.log.set_visible_end(case.visible)
            cluster.replication.ends[part.key] = case.visible
        cluster.leading = case.role == "leading"
        now = time.monotonic_ns()
        router.set_poll_until({"leading": now + 600 * 10**9, "not leading": 0}.get(case.role, now - 1))
        plane.max_poll_bytes = case.cap

        user = principal(session.user_id, session.user_generation)
        outcome, c_reply = serve(router, user, session.client_id, frame, case.cap)
        py_reply = plane.handle(session, parse_header(frame[:256]), frame[256:])
        assert isinstance(py_reply, bytes) and parse_reply_header(py_reply)[0] == len(py_reply)
        if case.hands_over:
            assert (outcome, c_reply) == ("fallback", None), (i, case, _describe(c_reply))
            seen[f"handed over, Python status {parse_reply_header(py_reply)[3]}"] += 1
            continue
        assert outcome == "done", (i, case, _describe(py_reply))
        assert c_reply == py_reply, (i, case, _describe(c_reply), _describe(py_reply))
        # the reference keeps to the bound
        assert case.visible is not None
        status, _, _, n, offsets = _describe(py_reply)
        assert status == 0 and n == len(offsets) and all(o < case.visible for o in offsets), (i, case)
        end = part.bounds[-1]
        seen["served"] += 1
        seen[f"served, {case.consumer}"] += 1
        seen[f"served, high-watermark {case.where}"] += 1
        seen["served, messages" if n else "served, empty"] += 1
        if case.visible < end and offsets and offsets[-1] == case.visible - 1:
            seen["served up to the high-watermark"] += 1
        if n and n < case.count and offsets[-1] < min(case.visible, end) - 1:
            seen["served, cut by the byte cap"] += 1
    # the comparison is only worth something if every kind of case happened
    assert seen["served"] >= CASES // 2, seen
    assert seen["served, messages"] >= CASES // 5, seen
    for wanted in ("zero", "boundary", "inside", "end", "past", "below first"):
        assert seen[f"served, high-watermark {wanted}"], (wanted, seen)
    assert seen["served up to the high-watermark"] >= 10 and seen["served, cut by the byte cap"], seen
    assert seen["served, group"] >= CASES // 10 and seen["served, name"] and seen["served, no partition"], seen
    assert seen["handed over, Python status 0"] and seen["handed over, Python status 5009"], seen
    assert seen[f"handed over, Python status {int(Cluster.NOT_LEADER)}"], seen
    assert cluster.offsets.stored_calls, "no auto-commit was served by Python"
