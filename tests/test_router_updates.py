"""The routing table changed entry by entry (iggy.engine.uring.router: set_topic / remove_topic /
set_user / remove_user), checked against a Python model after every step: thousands of
random adds, renames and removals (slot growth, backward-shift deletion), and readers in
other threads serving real requests through the C data plane (without the GIL) while the
table changes under them. Its publisher (iggy.engine.uring.routing) changes one entry per
topic or user a metadata change touches, and never the whole table.
"""

from __future__ import annotations

import random
import struct
import threading

from iggy._core.mutex import Mutex
from iggy.engine.uring.dataplane import serve
from iggy.engine.uring.router import Counter, Router
from iggy.protocol import codes
from iggy.protocol.batch import build_batch
from iggy.protocol.wire import build_request
from iggy.storage.log import PartitionLog
from iggy.storage.offset_store import OffsetStore
from tests.conftest import InProcessPlane
from tests.rawclient import ident, wire_name


def _num(i: int) -> bytes:
    return b"\x01\x04" + struct.pack("<I", i)


def _name(s: str) -> bytes:
    raw = s.encode()
    return bytes([2, len(raw)]) + raw


def _objects(tmp_path, name):
    d = str(tmp_path / name)
    return PartitionLog(d, 0), Mutex(), OffsetStore(d)


def test_random_changes_match_a_model(tmp_path):
    """3000 random set/replace/remove steps over 400 possible topics in 8 streams: every
    identifier combination of every topic finds exactly what the model says."""
    lg, lock, offsets = _objects(tmp_path, "p")
    rng = random.Random(3)
    r = Router()
    model: dict[tuple[int, int], tuple[str, str, list[int]]] = {}
    stream_names = {s: f"s{s}" for s in range(8)}
    for step in range(3000):
        sid, tid = rng.randrange(8), rng.randrange(50)
        if rng.random() < 0.3:
            assert r.remove_topic(sid, tid) == ((sid, tid) in model)
            model.pop((sid, tid), None)
        else:
            if rng.random() < 0.05:  # a stream rename: every topic of it again
                stream_names[sid] = f"s{sid}-{step}"
                for (s2, t2), (_, tname, pids) in list(model.items()):
                    if s2 == sid:
                        model[(s2, t2)] = (stream_names[sid], tname, pids)
                        r.set_topic(
                            (
                                s2,
                                stream_names[sid],
                                t2,
                                tname,
                                False,
                                Counter(),
                                [(p, lg, lock, offsets) for p in pids],
                                [],
                            )
                        )
            pids = sorted(rng.sample(range(6), rng.randint(0, 4)))
            tname = f"t{tid}-{rng.randrange(3)}"
            model[(sid, tid)] = (stream_names[sid], tname, pids)
            r.set_topic(
                (
                    sid,
                    stream_names[sid],
                    tid,
                    tname,
                    rng.random() < 0.5,
                    Counter(),
                    [(p, lg, lock, offsets) for p in reversed(pids)],
                    [],
                )
            )
        if step % 100 == 99 or step == 2999:
            assert r.stats()["topics"] == len(model)
            assert r.topic_keys() == set(model)
            for (s, t), (sname, tname, pids) in model.items():
                for si in (_num(s), _name(sname)):
                    for ti in (_num(t), _name(tname)):
                        assert r.lookup(si, ti) == (s, t, pids)
            for s in range(8):
                for t in range(50):
                    if (s, t) not in model:
                        assert r.lookup(_num(s), _num(t)) is None
                        for n in range(3):
                            assert r.lookup(_name(stream_names[s]), _name(f"t{t}-{n}")) is None
    stats = r.stats()
    assert stats["used"] == 4 * len(model) and stats["slots"] >= 2 * stats["used"]


def test_users_are_set_and_removed_one_by_one():
    r = Router()
    r.set_user(0, 3, [])
    r.set_user(40, 0, [(1, None, 2), (2, 5, 1)])
    assert r.allows(0, 9, 9, 1) and r.allows(0, 9, 9, 2)
    assert r.allows(40, 1, 7, 2) and not r.allows(40, 1, 7, 1)
    assert r.allows(40, 2, 5, 1) and not r.allows(40, 2, 6, 1)
    r.set_user(40, 0, [(2, 6, 1)])  # replaced, not added to
    assert not r.allows(40, 1, 7, 2) and r.allows(40, 2, 6, 1)
    r.remove_user(40)
    assert not r.allows(40, 2, 6, 1) and r.allows(0, 1, 1, 1)
    assert r.user_ids() == {0}
    r.publish([], [(3, 1, [])])
    assert r.user_ids() == {3}


SEND_OK = 0


def _send_frame(stream: str, topic: str, payload: bytes) -> bytes:
    md = ident(stream) + ident(topic) + bytes([2, 4]) + struct.pack("<I", 0)
    batch = build_batch([(1, payload, b"")])
    body = struct.pack("<I", len(md) + 4) + md + struct.pack("<I", 1) + batch
    return build_request(160, 0, body, request=1, client=5)


def test_readers_serve_while_the_table_changes(tmp_path):
    """Two threads send to a topic that is always in the table, through dp_serve without the
    GIL, while the main thread adds, replaces and removes 2000 other topics (slot arrays grow
    and entries are freed under them): every send is served by C and lands in the log."""
    keep = _objects(tmp_path, "keep")
    churn = _objects(tmp_path, "churn")
    r = Router()
    r.set_user(1, 3, [])
    r.set_topic((0, "s", 0, "keep", False, Counter(), [(0, *keep)], []))
    stop = threading.Event()
    sent = [0, 0]
    errors = []

    def reader(i: int):
        frame = _send_frame("s", "keep", f"from {i}".encode())
        try:
            while not stop.is_set():
                outcome, reply = serve(r, 1, 0, frame)
                assert outcome == "done", outcome
                assert struct.unpack_from("<I", reply, 216)[0] == SEND_OK
                sent[i] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    rng = random.Random(9)
    live = set()
    try:
        for step in range(2000):
            tid = 1 + rng.randrange(1500)
            if tid in live and rng.random() < 0.4:
                r.remove_topic(0, tid)
                live.discard(tid)
            else:
                r.set_topic((0, "s", tid, f"c{tid}-{step}", False, Counter(), [(0, *churn)], []))
                live.add(tid)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert not errors, errors
    assert keep[0].next_offset == sum(sent) and all(sent)
    for lg, _, _ in (keep, churn):
        lg.close()


# --------------------------------------------------------------------------- end to end


def test_stream_rename_and_partition_changes_reach_the_table(srv):
    """Each change updates only its topics: after a stream rename the old name is refused (a
    stale route would have served it from C), added partitions are served, removed ones are
    refused, and a deleted stream's topics are gone."""
    from iggy.protocol.errors import ErrorCode
    from tests.conftest import uniq
    from tests.reliability.common import Client

    op = codes.CODE_OPERATIONS
    # (a missing stream named by name: 1010 here, 1009 as upstream answers it)
    missing_stream = (ErrorCode.STREAM_ID_NOT_FOUND, ErrorCode.STREAM_NAME_NOT_FOUND)
    c = Client(srv.tcp_address)
    try:
        old, new = uniq("rn"), uniq("rn")
        assert c.create_stream(old).code == 0
        assert c.create_topic(old, "t", 1).code == 0
        assert c.create_topic(old, "u", 1).code == 0
        assert c.send(old, "t", 0, [b"a"])[1] == 0
        assert c.call(op[codes.UPDATE_STREAM], 0, ident(old) + wire_name(new)).code == 0
        assert c.send(old, "t", 0, [b"b"])[0].status in missing_stream
        assert c.send(new, "t", 0, [b"b"])[1] == 1
        assert c.send(new, "u", 0, [b"c"])[1] == 0
        add = ident(new) + ident("t") + struct.pack("<I", 2)
        assert c.call(op[codes.CREATE_PARTITIONS], 0, add).code == 0
        assert c.send(new, "t", 2, [b"d"])[1] == 0
        assert [m["payload"] for m in c.poll_all(new, "t", 2)] == [b"d"]
        assert c.call(op[codes.DELETE_PARTITIONS], 0, ident(new) + ident("t") + struct.pack("<I", 1)).code == 0
        assert c.send(new, "t", 2, [b"e"])[0].status == ErrorCode.PARTITION_NOT_FOUND
        assert c.send(new, "t", 1, [b"e"])[1] == 0
        assert c.delete_stream(new).code == 0
        assert c.send(new, "u", 0, [b"f"])[0].status in missing_stream
    finally:
        c.close()


# --------------------------------------------------------------------------- one change, one entry


class SpyRouter:
    """Forwards to the real Router and records the entry each writer call changes."""

    def __init__(self, real):
        self.real = real
        self.calls: list[tuple] = []

    def set_topic(self, entry):
        self.calls.append(("topic", entry[0], entry[2]))
        return self.real.set_topic(entry)

    def remove_topic(self, sid, tid):
        self.calls.append(("topic", sid, tid))
        return self.real.remove_topic(sid, tid)

    def set_user(self, user, allow_all, grants):
        self.calls.append(("user", user & 0xFFFFFFFF))
        return self.real.set_user(user, allow_all, grants)

    def remove_user(self, user_id):
        self.calls.append(("user", user_id))
        return self.real.remove_user(user_id)

    def publish(self, topics, users):
        self.calls.append(("everything",))
        return self.real.publish(topics, users)

    def __getattr__(self, name):  # readers (topic_keys, user_ids, lookup...)
        return getattr(self.real, name)

    def take(self) -> set:
        calls, self.calls = self.calls, []
        return set(calls)


class SpiedPlane(InProcessPlane):
    """An in-process plane whose router records what each change republishes."""

    def __init__(self, path: str):
        super().__init__(path)
        self.spy = SpyRouter(self.plane.routes.router)
        self.plane.routes.router = self.spy

    def write(self, op: int, body: bytes, session=None) -> bytes:
        """A write command as root; the reply body after its result section (fails the test
        on an error)."""
        from iggy.protocol.wire import parse_reply_header

        reply = self.handle(session or self.root, op, 0, body)
        status = parse_reply_header(reply)[3]
        assert status == 0 and reply[256:260] == b"\0\0\0\0", (op, status, reply[256:272])
        return reply[260:]


OP = codes.CODE_OPERATIONS


def test_each_change_republishes_only_what_it_touches(tmp_path):
    """Routes (iggy.engine.uring.routing) after every kind of metadata change: a topic's
    change rewrites that topic's entry, a stream's rename the entries of its topics, a user's
    change that user's entry; a delete also republishes exactly the users that had grants in
    the stream. Nothing ever rebuilds the whole table."""
    from iggy.control import permissions as perm

    h = SpiedPlane(str(tmp_path))
    try:
        u32 = struct.Struct("<I")
        a = u32.unpack_from(h.write(OP[codes.CREATE_STREAM], wire_name("a")))[0]
        b = u32.unpack_from(h.write(OP[codes.CREATE_STREAM], wire_name("b")))[0]
        topics = {}
        for name in ("t1", "t2", "t3"):
            body = h.write(OP[codes.CREATE_TOPIC], _num(a) + u32.pack(2) + wire_name(name))
            topics[name] = u32.unpack_from(body)[0]
        u = u32.unpack_from(h.write(OP[codes.CREATE_TOPIC], _num(b) + u32.pack(1) + wire_name("u")))[0]
        grants = perm.all_permissions()
        grants["global"] = [False] * len(grants["global"])
        grants["streams"] = {a: {"flags": [False, True, False, True, True, True], "topics": {}}}
        alice = h.make_user("alice", grants).id
        bob = h.make_user("bob", None).id
        t1, t2, t3 = topics["t1"], topics["t2"], topics["t3"]
        assert h.spy.take() >= {("topic", a, t1), ("topic", b, u), ("user", alice), ("user", bob)}

        h.write(OP[codes.UPDATE_TOPIC], _num(a) + _num(t1) + wire_name("t1-renamed"))
        assert h.spy.take() == {("topic", a, t1)}
        assert h.spy.lookup(_num(a), _name("t1-renamed")) == (a, t1, [0, 1])
        assert h.spy.lookup(_num(a), _name("t1")) is None
        h.write(OP[codes.CREATE_PARTITIONS], _num(a) + _num(t2) + u32.pack(1))
        assert h.spy.take() == {("topic", a, t2)}
        assert h.spy.lookup(_num(a), _num(t2)) == (a, t2, [0, 1, 2])

        h.write(OP[codes.CREATE_CONSUMER_GROUP], _num(a) + _num(t3) + wire_name("g"))
        assert h.spy.take() == {("topic", a, t3)}
        h.write(OP[codes.JOIN_CONSUMER_GROUP], _num(a) + _num(t3) + _name("g"))
        assert h.spy.take() == {("topic", a, t3)}

        h.write(OP[codes.UPDATE_STREAM], _num(a) + wire_name("a2"))
        assert h.spy.take() == {("topic", a, t1), ("topic", a, t2), ("topic", a, t3)}
        assert h.spy.lookup(_name("a2"), _name("t1-renamed")) == (a, t1, [0, 1])
        assert h.spy.lookup(_name("a"), _name("t1-renamed")) is None

        h.write(OP[codes.CREATE_STREAM], wire_name("c"))
        assert h.spy.take() == set()

        carol = h.make_user("carol", None).id
        assert h.spy.take() == {("user", carol)}
        h.write(OP[codes.UPDATE_PERMISSIONS], _num(bob) + b"\x00")
        assert h.spy.take() == {("user", bob)}

        h.write(OP[codes.DELETE_TOPIC], _num(a) + _num(t2))
        assert h.spy.take() == {("topic", a, t2), ("user", alice)}  # alice's grants in `a` went with it
        assert (a, t2) not in h.spy.topic_keys()

        h.write(OP[codes.DELETE_USER], _num(carol))
        assert h.spy.take() == {("user", carol)}
        assert carol not in h.spy.user_ids()

        h.write(OP[codes.DELETE_STREAM], _num(b))
        assert h.spy.take() == {("topic", b, u)}
        assert h.spy.topic_keys() == {(a, t1), (a, t3)}
    finally:
        h.close()
