"""The C data plane fed frames in-process (`iggy.engine.uring.dataplane.serve`): valid requests
served with the exact reply layout, every truncation and random corruption of them handed
to Python (or served correctly) without ever touching the log wrongly, permissions and
sessions honoured, consumer offsets and group ownership, persisted appends."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iggy._core.mutex import Mutex
from iggy.engine.uring.dataplane import serve
from iggy.engine.uring.router import Allow, Counter, Router
from iggy.protocol.batch import build_batch, iter_messages
from iggy.protocol.wire import build_request, parse_reply_header
from iggy.storage.log import VISIBLE_UNKNOWN, PartitionLog
from iggy.storage.offset_store import OffsetStore
from iggy.storage.served_offsets import ServedOffsets
from tests.rawclient import ident, poll_body, store_offset_body

ALLOW_SEND, ALLOW_POLL = Allow.ALLOW_SEND, Allow.ALLOW_POLL

WRITER, READER, NOBODY = 5, 6, 7
OWNER = 42
PARTITION_0 = struct.pack("<I", 0)  # the partitioning value of kind 2 (partition id)


@pytest.fixture
def plane(tmp_path):
    parts = {}
    for pid in (0, 1):
        d = str(tmp_path / f"p{pid}")
        parts[pid] = (pid, PartitionLog(d, pid), Mutex(), OffsetStore(d), ServedOffsets())
    persisted = (0, PartitionLog(str(tmp_path / "q0"), 0), Mutex(), OffsetStore(str(tmp_path / "q0")))
    router = Router()
    router.publish(
        [
            (1, "s", 2, "t", False, Counter(), list(parts.values()), [(3, "g", {0: OWNER})]),
            (1, "s", 4, "durable", True, Counter(), [persisted], []),
        ],
        [(WRITER, ALLOW_SEND | ALLOW_POLL, []), (READER, 0, [(1, 2, ALLOW_POLL)]), (NOBODY, 0, [])],
    )
    yield router, parts, persisted
    for p in [*parts.values(), persisted]:
        p[1].close()


def send_frame(payloads=(b"one", b"two"), topic="t", kind=2, value=PARTITION_0, count=None):
    md = ident("s") + ident(topic) + bytes([kind, len(value)]) + value
    batch = build_batch([(i + 1, p, b"") for i, p in enumerate(payloads)])
    body = struct.pack("<I", len(md) + 4) + md + struct.pack("<I", len(payloads) if count is None else count) + batch
    return build_request(160, 0, body, request=9, client=77)


def poll_frame(consumer=(1, 1), partition: int | None = 0, **kw):
    """A poll of s/t by consumer (kind, id); the strategy, count and auto_commit as keywords."""
    body = poll_body("s", "t", partition, kind=consumer[0], consumer=consumer[1], **kw)
    return build_request(2, 100, body, request=10, client=77)


def store_frame(offset, consumer=(1, 1), partition: int | None = 0, checksum=True):
    body = store_offset_body("s", "t", partition, offset, kind=consumer[0], consumer=consumer[1])
    return build_request(161, 0, body, request=11, client=77, with_checksum=checksum)


def reply(result):
    outcome, frame = result
    assert outcome in ("done", "sync"), result
    size, command, operation, status, _ = parse_reply_header(frame)
    assert size == len(frame) and command == 8
    return status, frame[256:]


def test_send_is_served_and_appended(plane):
    router, parts, _ = plane
    status, body = reply(serve(router, WRITER, 0, send_frame()))
    assert status == 0 and struct.unpack("<IIIIQ", body) == (1, 1, 2, 0, 0)
    status, body = reply(serve(router, WRITER, 0, send_frame((b"x",))))
    assert struct.unpack("<IIIIQ", body) == (1, 1, 2, 0, 2)
    data, n = parts[0][1].read(0, 10)
    assert n == 3 and [bytes(m["payload"]) for m in iter_messages(data)] == [b"one", b"two", b"x"]


def test_reply_header_echoes_the_request(plane):
    router, _, _ = plane
    frame = send_frame()
    out = serve(router, WRITER, 0, frame)[1]
    assert out[128:144] == frame[144:160] and out[160:176] == frame[128:144]  # checksum, client
    assert struct.unpack_from("<Q", out, 200)[0] == 9 and out[208] == 160


def test_every_truncation_goes_to_python_and_appends_nothing(plane):
    router, parts, _ = plane
    full = send_frame()
    body = full[256:]
    for cut in range(len(body)):
        frame = build_request(160, 0, body[:cut], request=9, client=77)
        assert serve(router, WRITER, 0, frame) == ("fallback", None), cut
    assert parts[0][1].is_empty


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_requests_never_misbehave(plane, data):
    """Random byte changes in a send, poll or store body: handed to Python, or answered with a
    well-formed reply; a served send appends exactly the batch's messages."""
    router, parts, _ = plane
    kind = data.draw(st.sampled_from(["send", "poll", "store"]))
    frame = {"send": send_frame, "poll": poll_frame, "store": lambda: store_frame(0, checksum=False)}[kind]()
    body = bytearray(frame[256:])
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    op, code = {"send": (160, 0), "poll": (2, 100), "store": (161, 0)}[kind]
    before = parts[0][1].next_offset, parts[1][1].next_offset
    outcome, out = serve(router, WRITER, 0, build_request(op, code, bytes(body), client=77))
    after = parts[0][1].next_offset, parts[1][1].next_offset
    if outcome == "fallback":
        assert after == before
        return
    status, payload = reply((outcome, out))
    assert status == 0
    if kind == "send":
        _, _, _, pid, base = struct.unpack("<IIIIQ", payload)
        assert base == before[pid] and after[pid] - before[pid] == 2 and after[1 - pid] == before[1 - pid]
    elif kind == "poll":
        assert len(payload) >= 16
    else:
        assert payload == b"\0\0\0\0"


def test_sessions_and_permissions(plane):
    router, parts, _ = plane
    assert serve(router, -1, 0, send_frame()) == ("fallback", None)  # not logged in
    assert serve(router, NOBODY, 0, send_frame()) == ("fallback", None)  # no permission
    assert serve(router, READER, 0, send_frame()) == ("fallback", None)  # may poll, not send
    assert serve(router, 99, 0, send_frame()) == ("fallback", None)  # user not in the table
    reply(serve(router, WRITER, 0, send_frame()))
    status, body = reply(serve(router, READER, 0, poll_frame()))
    assert status == 0 and struct.unpack_from("<IQI", body) == (0, 1, 2)
    assert serve(router, NOBODY, 0, poll_frame()) == ("fallback", None)
    assert serve(Router(), WRITER, 0, send_frame()) == ("fallback", None)  # nothing published
    ping = build_request(2, 1, b"", client=77)
    assert reply(serve(router, -1, 0, ping)) == (0, b"")  # ping needs no login


def test_unknown_routes_go_to_python(plane):
    router, _, _ = plane
    assert serve(router, WRITER, 0, send_frame(topic="missing")) == ("fallback", None)
    assert serve(router, WRITER, 0, send_frame(kind=2, value=struct.pack("<I", 9))) == ("fallback", None)
    assert serve(router, WRITER, 0, send_frame(kind=9, value=b"")) == ("fallback", None)
    assert serve(router, WRITER, 0, poll_frame(count=0)) == ("fallback", None)
    assert serve(router, WRITER, 0, poll_frame(strategy=6)) == ("fallback", None)
    assert serve(router, WRITER, 0, poll_frame(partition=5)) == ("fallback", None)


def test_partitioning(plane):
    router, parts, _ = plane
    pids = [
        struct.unpack("<IIIIQ", reply(serve(router, WRITER, 0, send_frame(kind=1, value=b"")))[1])[3] for _ in range(4)
    ]
    assert pids == [0, 1, 0, 1]
    import xxhash

    key = b"customer-7"
    pid = struct.unpack("<IIIIQ", reply(serve(router, WRITER, 0, send_frame(kind=3, value=key)))[1])[3]
    assert pid == xxhash.xxh32_intdigest(key) % 2


def test_poll_strategies_and_auto_commit(plane):
    router, parts, _ = plane
    for i in range(3):
        reply(serve(router, WRITER, 0, send_frame((b"a%d" % i, b"b%d" % i))))

    def poll(**kw):
        status, body = reply(serve(router, WRITER, 0, poll_frame(**kw)))
        assert status == 0
        pid, current, count = struct.unpack_from("<IQI", body)
        offsets = [m["offset"] for m in iter_messages(body[16:])]
        assert (pid, current, count) == (0, 5, len(offsets))
        return offsets

    assert poll(strategy=1, value=2, count=3) == [2, 3, 4]
    assert poll(strategy=3, count=2) == [0, 1]
    assert poll(strategy=4, count=2) == [4, 5]
    assert poll(strategy=1, value=9) == []
    assert poll(strategy=5, count=4, auto_commit=1) == [0, 1, 2, 3]
    assert parts[0][3].get("consumers", 1) == 3
    assert poll(strategy=5, count=4, auto_commit=1) == [4, 5]
    assert poll(strategy=5, count=4, auto_commit=1) == []
    ts = [m["timestamp"] for m in iter_messages(parts[0][1].read(0, 10)[0])]
    assert poll(strategy=2, value=ts[2]) == [2, 3, 4, 5]


def test_cluster_polls_are_bounded_by_the_visible_end(plane):
    """Cluster mode: only the leader within its fencing deadline serves polls, none with
    auto-commit, none of a partition whose high-watermark is not published, and never an offset
    at or above it (the reply as iggy.control.messages.poll_messages makes it); sends and
    stored offsets always go to Python."""
    router, parts, _ = plane
    for i in range(3):
        reply(serve(router, WRITER, 0, send_frame((b"a%d" % i, b"b%d" % i))))  # offsets 0..5
    log = parts[0][1]
    router.set_cluster()
    fallback = ("fallback", None)
    assert serve(router, WRITER, 0, poll_frame(strategy=1, value=0)) == fallback  # not leading
    router.set_poll_until(time.monotonic_ns() + 600 * 10**9)
    assert serve(router, WRITER, 0, poll_frame(strategy=1, value=0)) == fallback  # not reconciled

    def poll(**kw):
        status, body = reply(serve(router, WRITER, 0, poll_frame(**kw)))
        assert status == 0
        pid, current, count = struct.unpack_from("<IQI", body)
        offsets = [m["offset"] for m in iter_messages(body[16:])]
        assert count == len(offsets)
        return current, offsets

    log.set_visible_end(6)  # the whole log
    assert poll(strategy=1, value=0) == (5, [0, 1, 2, 3, 4, 5])
    log.set_visible_end(4)
    assert poll(strategy=1, value=0) == (3, [0, 1, 2, 3])
    assert poll(strategy=1, value=2, count=1) == (3, [2])
    assert poll(strategy=1, value=4) == (3, [])  # at the bound
    assert poll(strategy=1, value=5) == (3, [])  # above it
    assert poll(strategy=4, count=2) == (3, [])  # the last two are not committed
    assert poll(strategy=3, count=10) == (3, [0, 1, 2, 3])
    log.set_visible_end(0)
    assert poll(strategy=3) == (0, [])
    log.set_visible_end(6)
    assert serve(router, WRITER, 0, poll_frame(strategy=1, value=0, auto_commit=True)) == fallback
    assert serve(router, WRITER, 0, send_frame()) == fallback
    assert serve(router, WRITER, 0, store_frame(0)) == fallback
    assert log.next_offset == 6 and parts[0][3].get("consumers", 1) is None
    log.set_visible_end(VISIBLE_UNKNOWN)  # no longer reconciled in this epoch
    assert serve(router, WRITER, 0, poll_frame(strategy=1, value=0)) == fallback
    log.set_visible_end(6)
    router.set_poll_until(time.monotonic_ns() - 1)  # past the fencing deadline
    assert serve(router, WRITER, 0, poll_frame(strategy=1, value=0)) == fallback
    router.set_poll_until(0)  # no longer leading
    assert serve(router, WRITER, 0, poll_frame(strategy=1, value=0)) == fallback


def test_store_offset_and_its_checksum(plane):
    router, parts, _ = plane
    assert serve(router, WRITER, 0, store_frame(0)) == ("fallback", None)  # empty partition
    reply(serve(router, WRITER, 0, send_frame()))
    assert reply(serve(router, WRITER, 0, store_frame(1))) == (0, b"\0\0\0\0")
    assert parts[0][3].get("consumers", 1) == 1
    assert serve(router, WRITER, 0, store_frame(2)) == ("fallback", None)  # beyond the current offset
    frame = bytearray(store_frame(0))
    frame[144] ^= 1  # wrong request checksum
    assert serve(router, WRITER, 0, bytes(frame)) == ("fallback", None)
    assert reply(serve(router, WRITER, 0, store_frame(0, checksum=False)))[0] == 0


def test_consumer_group_ownership(plane):
    router, parts, _ = plane
    reply(serve(router, WRITER, 0, send_frame()))
    group = (2, "g")
    status, body = reply(serve(router, WRITER, OWNER, poll_frame(strategy=5, consumer=group, auto_commit=1)))
    assert struct.unpack_from("<IQI", body) == (0, 1, 2)
    assert parts[0][3].get("groups", 3) == 1
    assert serve(router, WRITER, OWNER + 1, poll_frame(consumer=group)) == ("fallback", None)  # not the owner
    assert serve(router, WRITER, OWNER, poll_frame(consumer=group, partition=None)) == ("fallback", None)
    assert serve(router, WRITER, OWNER, poll_frame(consumer=(2, "nope"))) == ("fallback", None)
    # what the group poll served is recorded, with the client that polled (cooperative rebalancing)
    assert parts[0][4].get(3) == (1, OWNER)
    assert parts[1][4].get(3) is None
    # a group member stores offsets only for the partitions it may poll; Python answers the rest
    assert reply(serve(router, WRITER, OWNER, store_frame(0, consumer=(2, 3))))[0] == 0
    assert serve(router, WRITER, OWNER + 1, store_frame(0, consumer=(2, 3))) == ("fallback", None)
    assert serve(router, WRITER, 0, store_frame(0, consumer=(2, 3))) == ("fallback", None)


def test_persisted_append_holds_its_reply_for_the_sync(plane):
    router, _, persisted = plane
    outcome, out = serve(router, WRITER, 0, send_frame(topic="durable"))
    assert outcome == "sync"
    status, body = reply((outcome, out))
    assert struct.unpack("<IIIIQ", body) == (1, 1, 4, 0, 0)
    assert persisted[1].next_offset == 2


def test_a_closed_log_goes_to_python(plane):
    router, parts, _ = plane
    parts[1][1].close()
    assert serve(router, WRITER, 0, send_frame(kind=2, value=struct.pack("<I", 1))) == ("fallback", None)
    assert serve(router, WRITER, 0, poll_frame(partition=1)) == ("fallback", None)
