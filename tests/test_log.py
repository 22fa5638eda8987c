"""Unit tests of the Cython partition log (iggy._core.log.PartitionLog).

Small segments (4096 bytes) and ~100-byte messages, so a few dozen messages span several
segment files; reads start and end in the middle of batches and cross segment boundaries;
recovery must cut torn or corrupt tails, rebuild a missing index, and never serve a message
whose checksum does not match.
"""
from __future__ import annotations

import os
import struct

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iggy._core.batch import build_batch, compute_batch_checksum, iter_messages, validate_batch
from iggy._core.log import PartitionLog
from iggy.errors import IggyError

SEG = 4096
HEADER = 256
FRAME = 48
T0 = 1_700_000_000_000_000


def payload(offset: int, size: int = 52) -> bytes:
    """A ~100-byte frame (48 + 52): recognisable content per offset."""
    text = f"message-{offset:06d}|".encode()
    return (text * (size // len(text) + 1))[:size]


def batch_of(first: int, n: int, size: int = 52) -> bytes:
    return build_batch([(first + i + 1, payload(first + i, size), b"") for i in range(n)],
                       origin_timestamp=T0)


def fill(lg: PartitionLog, batches: list[int], ts0: int = T0, size: int = 52) -> list[tuple[int, int, int]]:
    """Append batches of the given sizes; returns [(base_offset, count, timestamp)]."""
    out = []
    for i, n in enumerate(batches):
        b = batch_of(lg.next_offset, n, size)
        ts = ts0 + 1000 * i
        base, count = lg.append(b, 0, len(b), ts)
        out.append((base, count, ts))
    return out


def read_all(lg: PartitionLog, start: int = 0, count: int = 1_000_000):
    data, n = lg.read(start, count)
    msgs = list(iter_messages(data))
    assert len(msgs) == n
    return msgs, data


def check_batches(data: bytes, partition_id: int | None = None) -> None:
    """Every batch served is well framed, reserved bytes zero, checksums (message and batch) valid.

    A batch cut from a stored one keeps its offset deltas (TCP.md 8.6), so it is not a batch a
    client may send (deltas must count from 0) and validate_batch does not apply to it.
    """
    pos = 0
    while pos < len(data):
        length = struct.unpack_from("<Q", data, pos + 32)[0]
        count = struct.unpack_from("<I", data, pos + 48)[0]
        assert count > 0 and length >= HEADER and pos + length <= len(data)
        assert data[pos + 52:pos + HEADER] == bytes(204)
        batch = data[pos:pos + length]
        f = HEADER
        deltas = []
        for _ in range(count):
            hlen, plen = struct.unpack_from("<II", batch, f + 32)
            flen = FRAME + plen + hlen
            assert struct.unpack_from("<Q", batch, f)[0] == xxhash.xxh3_64_intdigest(batch[f + 8:f + flen])
            assert struct.unpack_from("<Q", batch, f + 40)[0] == 0
            deltas.append(struct.unpack_from("<I", batch, f + 24)[0])
            f += flen
        assert f == length
        assert deltas == list(range(deltas[0], deltas[0] + count))
        assert struct.unpack_from("<Q", batch, 40)[0] == compute_batch_checksum(batch)
        if deltas[0] == 0:
            validate_batch(batch, 0, length, count)
        if partition_id is not None:
            assert struct.unpack_from("<Q", data, pos)[0] == partition_id
        pos += length
    assert pos == len(data)


def seg_files(directory, ext=".log"):
    return sorted(f for f in os.listdir(directory) if f.endswith(ext))


@pytest.fixture
def log_dir(tmp_path):
    return str(tmp_path / "p")


def open_log(directory, **kw) -> PartitionLog:
    kw.setdefault("segment_size", SEG)
    return PartitionLog(directory, kw.pop("partition_id", 3), kw.pop("segment_size"), **kw)


# ------------------------------------------------------------------------- append / read

def test_empty_log(log_dir):
    lg = open_log(log_dir)
    assert lg.is_empty and lg.next_offset == 0 and lg.current_offset == 0 and lg.messages_count == 0
    assert lg.read(0, 10) == (b"", 0)
    assert lg.offset_for_timestamp(0) is None
    assert seg_files(log_dir) == ["00000000000000000000.log"]
    assert seg_files(log_dir, ".index") == ["00000000000000000000.index"]
    assert lg.segments() == [(0, 0, 0, 0, True)]
    lg.close()


def test_append_and_read_across_segments(log_dir):
    lg = open_log(log_dir)
    appended = fill(lg, [3, 5, 7, 1, 9, 4, 6, 2, 8, 5, 10, 3] * 2)
    total = sum(c for _, c, _ in appended)
    assert [b for b, _, _ in appended] == [sum(c for _, c, _ in appended[:i]) for i in range(len(appended))]
    assert lg.messages_count == total and lg.next_offset == total and lg.current_offset == total - 1
    assert lg.segments_count >= 4
    names = seg_files(log_dir)
    assert len(names) == lg.segments_count
    segs = lg.segments()
    assert [f"{s[0]:020d}.log" for s in segs] == names
    for prev, nxt in zip(segs, segs[1:]):
        assert nxt[0] == prev[1] + 1                      # contiguous offsets
        assert prev[2] >= SEG and not prev[4]             # rolled at the segment size, sealed
        assert os.path.getsize(os.path.join(log_dir, f"{prev[0]:020d}.log")) == prev[2]
    assert segs[-1][4]
    assert sum(s[2] for s in segs) == lg.size_bytes

    msgs, data = read_all(lg)
    check_batches(data, partition_id=3)
    assert [m["offset"] for m in msgs] == list(range(total))
    assert [m["payload"] for m in msgs] == [payload(i) for i in range(total)]
    assert [m["id"] for m in msgs] == [i + 1 for i in range(total)]
    stamps = {m["offset"]: m["timestamp"] for m in msgs}
    for base, count, ts in appended:
        assert all(stamps[base + i] == ts for i in range(count))

    # every window, including those starting/ending mid-batch and spanning segment files
    for start in range(0, total, 3):
        for count in (1, 2, 5, 13, 40):
            msgs, data = read_all(lg, start, count)
            check_batches(data)
            want = range(start, min(start + count, total))
            assert [m["offset"] for m in msgs] == list(want), (start, count)
            assert [m["payload"] for m in msgs] == [payload(o) for o in want]
    lg.close()


def test_sliced_batch_header(log_dir):
    lg = open_log(log_dir)
    fill(lg, [10])
    data, n = lg.read(3, 4)
    assert n == 4
    base, ts, origin, length = struct.unpack_from("<QQQQ", data, 8)
    assert struct.unpack_from("<I", data, 48)[0] == 4
    assert length == len(data)
    assert base == 0                                         # original base, deltas 3..6 kept
    check_batches(data, partition_id=3)
    assert [m["offset"] for m in iter_messages(data)] == [3, 4, 5, 6]
    lg.close()


def test_read_past_the_end_and_zero_count(log_dir):
    lg = open_log(log_dir)
    fill(lg, [4, 4])
    assert lg.read(8, 10) == (b"", 0)
    assert lg.read(1000, 10) == (b"", 0)
    assert lg.read(0, 0) == (b"", 0)
    msgs, _ = read_all(lg, 6, 100)
    assert [m["offset"] for m in msgs] == [6, 7]
    lg.close()


def test_timestamps_strictly_increase(log_dir):
    lg = open_log(log_dir)
    for _ in range(3):
        b = batch_of(lg.next_offset, 2)
        lg.append(b, 0, len(b), T0)                          # same clock reading three times
    b = batch_of(lg.next_offset, 1)
    lg.append(b, 0, len(b), T0 - 10_000)                     # clock went backwards
    stamps = [s for s in dict((m["offset"], m["timestamp"]) for m in read_all(lg)[0]).values()]
    assert stamps == [T0, T0, T0 + 1, T0 + 1, T0 + 2, T0 + 2, T0 + 3]
    lg.close()


def test_offset_for_timestamp(log_dir):
    lg = open_log(log_dir)
    appended = fill(lg, [3, 5, 7, 1, 9, 4, 6, 2, 8, 5, 10, 3] * 2)
    assert lg.segments_count >= 4
    assert lg.offset_for_timestamp(0) == 0
    for base, _, ts in appended:
        assert lg.offset_for_timestamp(ts) == base
        assert lg.offset_for_timestamp(ts - 1) == base       # first batch with timestamp >= value
    last_base, _, last_ts = appended[-1]
    assert lg.offset_for_timestamp(last_ts) == last_base
    assert lg.offset_for_timestamp(last_ts + 1) is None      # after the newest: nothing
    lg.close()


def test_reopen_keeps_counts_and_continues(log_dir):
    lg = open_log(log_dir)
    fill(lg, [6] * 15)
    before = (lg.messages_count, lg.next_offset, lg.segments_count, lg.size_bytes, lg.segments())
    lg.close()
    lg = open_log(log_dir)
    assert (lg.messages_count, lg.next_offset, lg.segments_count, lg.size_bytes, lg.segments()) == before
    assert lg.recovered_truncated_bytes == 0
    appended = fill(lg, [2], ts0=1)                          # an old clock: still after the newest stamp
    assert appended[0][0] == 90
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(92))
    assert msgs[-1]["timestamp"] > msgs[-3]["timestamp"]
    lg.close()


def test_closed_log_refuses(log_dir):
    lg = open_log(log_dir)
    fill(lg, [1])
    lg.close()
    lg.close()
    assert lg.closed
    with pytest.raises(Exception):
        lg.read(0, 1)
    with pytest.raises(Exception):
        b = batch_of(0, 1)
        lg.append(b, 0, len(b), T0)


# ------------------------------------------------------------------------- recovery

def last_nonempty_log(directory) -> str:
    for name in reversed(seg_files(directory)):
        path = os.path.join(directory, name)
        if os.path.getsize(path):
            return path
    raise AssertionError("no data")


def batch_positions(path):
    """[(position, base_offset, count, length)] of the batches in a .log file."""
    data = open(path, "rb").read()
    out, pos = [], 0
    while pos + HEADER <= len(data):
        base, length = struct.unpack_from("<Q", data, pos + 8)[0], struct.unpack_from("<Q", data, pos + 32)[0]
        count = struct.unpack_from("<I", data, pos + 48)[0]
        if length == 0:
            break
        out.append((pos, base, count, length))
        pos += length
    return out


@pytest.mark.parametrize("active_has_data", [True, False])
def test_torn_tail_is_cut(log_dir, active_has_data):
    lg = open_log(log_dir)
    fill(lg, [6] * 8)
    if active_has_data and lg.segments()[-1][2] == 0:
        fill(lg, [3])
    if not active_has_data:
        while lg.segments()[-1][2] != 0:
            fill(lg, [6])
    lg.close()
    path = last_nonempty_log(log_dir)
    pos, base, count, length = batch_positions(path)[-1]
    with open(path, "r+b") as f:
        f.truncate(pos + length // 2)                        # the last batch is torn
    lg = open_log(log_dir)
    assert lg.recovered_truncated_bytes == length // 2
    assert lg.next_offset == base                            # earlier messages intact, nothing after
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(base))
    assert [m["payload"] for m in msgs] == [payload(i) for i in range(base)]
    got = fill(lg, [4])
    assert got[0][0] == base                                 # the next append reuses the torn offsets
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(base + 4))
    lg.close()
    lg = open_log(log_dir)
    assert lg.next_offset == base + 4 and lg.recovered_truncated_bytes == 0
    lg.close()


def test_torn_header_is_cut(log_dir):
    lg = open_log(log_dir)
    fill(lg, [2, 2, 2])
    lg.close()
    path = last_nonempty_log(log_dir)
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\x07" * 100)                               # half a header of garbage
    lg = open_log(log_dir)
    assert lg.next_offset == 6 and lg.recovered_truncated_bytes == 100
    assert os.path.getsize(path) == size
    lg.close()


def test_flipped_byte_in_last_batch_is_never_served(log_dir):
    lg = open_log(log_dir)
    fill(lg, [5, 5, 5])
    lg.close()
    path = last_nonempty_log(log_dir)
    pos, base, count, length = batch_positions(path)[-1]
    with open(path, "r+b") as f:
        f.seek(pos + length - 3)                             # inside the last message's payload
        byte = f.read(1)
        f.seek(pos + length - 3)
        f.write(bytes([byte[0] ^ 0x20]))
    lg = open_log(log_dir)
    assert lg.next_offset == base
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(base))
    fill(lg, [1])
    assert [m["offset"] for m in read_all(lg)[0]] == list(range(base + 1))
    lg.close()


def test_corrupt_message_in_a_middle_batch_stops_reads(log_dir):
    lg = open_log(log_dir, segment_size=1 << 20)
    fill(lg, [4, 4, 4])
    lg.close()
    path = last_nonempty_log(log_dir)
    pos, base, count, length = batch_positions(path)[1]      # offsets 4..7
    second = pos + HEADER + FRAME + 52                       # frame of offset 5
    with open(path, "r+b") as f:
        f.seek(second + FRAME + 10)
        b = f.read(1)
        f.seek(second + FRAME + 10)
        f.write(bytes([b[0] ^ 1]))
    lg = open_log(log_dir)
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == [0, 1, 2, 3, 4]     # served up to the corrupt message only
    try:                                                     # nothing from the corrupt one on:
        assert lg.read(5, 3)[1] == 0                         # an empty read or an error
    except IggyError as exc:
        assert exc.code == 4011
    lg.close()


def test_deleted_index_is_rebuilt(log_dir):
    lg = open_log(log_dir)
    appended = fill(lg, [3, 5, 7, 1, 9, 4, 6, 2, 8, 5] * 2)
    segs = lg.segments()
    lg.close()
    indexes = seg_files(log_dir, ".index")
    assert len(indexes) >= 3
    sizes = {name: os.path.getsize(os.path.join(log_dir, name)) for name in indexes}
    os.unlink(os.path.join(log_dir, indexes[-1]))
    os.unlink(os.path.join(log_dir, indexes[0]))
    with open(os.path.join(log_dir, indexes[1]), "r+b") as f:   # a short index as well
        f.truncate(sizes[indexes[1]] - 30)
    lg = open_log(log_dir)
    assert lg.segments() == segs and lg.recovered_truncated_bytes == 0
    rebuilt = {name: os.path.getsize(os.path.join(log_dir, name)) for name in seg_files(log_dir, ".index")}
    assert rebuilt == sizes
    for base, _, ts in appended:
        assert lg.offset_for_timestamp(ts) == base
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(100))
    lg.close()


def test_orphan_index_removed(log_dir):
    lg = open_log(log_dir)
    fill(lg, [1])
    lg.close()
    orphan = os.path.join(log_dir, f"{12345:020d}.index")
    open(orphan, "wb").write(b"\1" * 24)
    lg = open_log(log_dir)
    assert not os.path.exists(orphan) and lg.next_offset == 1
    lg.close()


def test_preallocated_segments_reopen(log_dir):
    lg = open_log(log_dir, preallocate=True)
    assert os.path.getsize(os.path.join(log_dir, seg_files(log_dir)[0])) == SEG
    fill(lg, [6] * 14)
    segs = lg.segments()
    assert len(segs) >= 3
    for base, _, size, _, active in segs:
        path = os.path.join(log_dir, f"{base:020d}.log")
        assert os.path.getsize(path) == (SEG if active else size)   # sealed: reservation given back
    lg.close()
    lg = open_log(log_dir, preallocate=True)
    assert lg.segments() == segs and lg.recovered_truncated_bytes == 0   # zero tail is not torn
    fill(lg, [2])
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(86))
    lg.close()
    # a torn batch inside the preallocated file is cut, the reservation kept
    path = last_nonempty_log(log_dir)
    pos, base, count, length = batch_positions(path)[-1]
    with open(path, "r+b") as f:
        f.seek(pos + 100)
        f.write(b"\0" * (length - 100))
    lg = open_log(log_dir, preallocate=True)
    assert lg.next_offset == base
    assert [m["offset"] for m in read_all(lg)[0]] == list(range(base))
    lg.close()


# ------------------------------------------------------------------------- deletion

def test_purge(log_dir):
    lg = open_log(log_dir)
    fill(lg, [6] * 10)
    assert lg.segments_count > 1
    lg.purge()
    assert lg.is_empty and lg.next_offset == 0 and lg.segments_count == 1
    assert seg_files(log_dir) == ["00000000000000000000.log"]
    assert lg.read(0, 100) == (b"", 0)
    got = fill(lg, [3], ts0=5)
    assert got[0][0] == 0
    assert [m["offset"] for m in read_all(lg)[0]] == [0, 1, 2]
    lg.close()
    lg = open_log(log_dir)
    assert lg.next_offset == 3
    lg.close()


def test_delete_segments(log_dir):
    lg = open_log(log_dir)
    fill(lg, [6] * 20)
    segs = lg.segments()
    assert len(segs) >= 4
    total = lg.messages_count
    active = segs[-1][0]
    assert lg.delete_segment(active) is False                # never the active one
    assert lg.delete_segment(999_999) is False
    assert lg.delete_segment(segs[1][0]) is True             # a sealed one in the middle
    assert not os.path.exists(os.path.join(log_dir, f"{segs[1][0]:020d}.log"))
    assert not os.path.exists(os.path.join(log_dir, f"{segs[1][0]:020d}.index"))
    gone = range(segs[1][0], segs[1][1] + 1)
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == [o for o in range(total) if o not in gone]
    assert lg.delete_oldest_segments(1) == 1
    assert lg.first_offset == segs[2][0]
    msgs, _ = read_all(lg, 0, 5)                             # before the oldest kept: starts there
    assert [m["offset"] for m in msgs] == list(range(segs[2][0], segs[2][0] + 5))
    assert lg.delete_oldest_segments(100) == len(segs) - 3
    assert lg.segments_count == 1 and lg.segments()[0][0] == active
    assert lg.next_offset == total                           # offsets continue after deletions
    got = fill(lg, [2])
    assert got[0][0] == total
    lg.close()
    lg = open_log(log_dir)
    assert lg.first_offset == active and lg.next_offset == total + 2
    lg.close()


# ------------------------------------------------------------------------- property

message = st.tuples(st.integers(0, 2**128 - 1), st.binary(min_size=1, max_size=300),
                    st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(message, min_size=1, max_size=12), min_size=1, max_size=12),
       segment_size=st.sampled_from([1024, 4096, 1 << 20]))
def test_random_batches_read_back_equal(tmp_path_factory, batches, segment_size):
    directory = str(tmp_path_factory.mktemp("prop"))
    lg = PartitionLog(directory, 0, segment_size)
    expected = []
    for i, msgs in enumerate(batches):
        b = build_batch([(mid, data, b"", delta) for mid, data, delta in msgs], origin_timestamp=T0 + i)
        base, count = lg.append(b, 0, len(b), T0 + i)
        assert (base, count) == (len(expected), len(msgs))
        expected += [(len(expected) + j, mid, data, T0 + i + delta)
                     for j, (mid, data, delta) in enumerate(msgs)]
    for reopen in (False, True):
        if reopen:
            lg.close()
            lg = PartitionLog(directory, 0, segment_size)
        data, n = lg.read(0, len(expected) + 5)
        check_batches(data)
        got = [(m["offset"], m["id"], m["payload"], m["origin_timestamp"]) for m in iter_messages(data)]
        assert n == len(expected) and got == expected
        mid = len(expected) // 2
        data, n = lg.read(mid, 3)
        assert [m["offset"] for m in iter_messages(data)] == [e[0] for e in expected[mid:mid + 3]]
    lg.close()
