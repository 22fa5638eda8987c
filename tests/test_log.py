"""Unit tests of the Cython partition log (iggy.storage.log.PartitionLog).

Small segments (4096 bytes) and ~100-byte messages, so a few dozen messages span several
segment files; reads start and end in the middle of batches and cross segment boundaries;
recovery must cut torn or corrupt tails, rebuild a missing index, and never serve a message
whose checksum does not match.
"""

from __future__ import annotations

import itertools
import os
import struct
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iggy.protocol.batch import build_batch, compute_batch_checksum, iter_messages, validate_batch
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.storage.log import PartitionLog

SEG = 4096
HEADER = 256
FRAME = 48
T0 = 1_700_000_000_000_000


def payload(offset: int, size: int = 52) -> bytes:
    """A ~100-byte frame (48 + 52): recognisable content per offset."""
    text = f"message-{offset:06d}|".encode()
    return (text * (size // len(text) + 1))[:size]


def batch_of(first: int, n: int, size: int = 52) -> bytes:
    return build_batch([(first + i + 1, payload(first + i, size), b"") for i in range(n)], origin_timestamp=T0)


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
        assert data[pos + 52 : pos + HEADER] == bytes(204)
        batch = data[pos : pos + length]
        f = HEADER
        deltas = []
        for _ in range(count):
            hlen, plen = struct.unpack_from("<II", batch, f + 32)
            flen = FRAME + plen + hlen
            assert struct.unpack_from("<Q", batch, f)[0] == xxhash.xxh3_64_intdigest(batch[f + 8 : f + flen])
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
    for prev, nxt in itertools.pairwise(segs):
        assert nxt[0] == prev[1] + 1  # contiguous offsets
        assert prev[2] >= SEG and not prev[4]  # rolled at the segment size, sealed
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
    assert base == 0  # original base, deltas 3..6 kept
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
        lg.append(b, 0, len(b), T0)  # same clock reading three times
    b = batch_of(lg.next_offset, 1)
    lg.append(b, 0, len(b), T0 - 10_000)  # clock went backwards
    stamps = list({m["offset"]: m["timestamp"] for m in read_all(lg)[0]}.values())
    assert stamps == [T0, T0, T0 + 1, T0 + 1, T0 + 2, T0 + 2, T0 + 3]
    lg.close()


def test_offset_for_timestamp(log_dir):
    lg = open_log(log_dir)
    appended = fill(lg, [3, 5, 7, 1, 9, 4, 6, 2, 8, 5, 10, 3] * 2)
    assert lg.segments_count >= 4
    assert lg.offset_for_timestamp(0) == 0
    for base, _, ts in appended:
        assert lg.offset_for_timestamp(ts) == base
        assert lg.offset_for_timestamp(ts - 1) == base  # first batch with timestamp >= value
    last_base, _, last_ts = appended[-1]
    assert lg.offset_for_timestamp(last_ts) == last_base
    assert lg.offset_for_timestamp(last_ts + 1) is None  # after the newest: nothing
    lg.close()


def test_reopen_keeps_counts_and_continues(log_dir):
    lg = open_log(log_dir)
    fill(lg, [6] * 15)
    before = (lg.messages_count, lg.next_offset, lg.segments_count, lg.size_bytes, lg.segments())
    lg.close()
    lg = open_log(log_dir)
    assert (lg.messages_count, lg.next_offset, lg.segments_count, lg.size_bytes, lg.segments()) == before
    assert lg.recovered_truncated_bytes == 0
    appended = fill(lg, [2], ts0=1)  # an old clock: still after the newest stamp
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
    with pytest.raises(IggyError, match="the partition log is closed") as refused:
        lg.read(0, 1)
    assert refused.value.code == ErrorCode.PARTITION_NOT_FOUND
    b = batch_of(0, 1)
    with pytest.raises(IggyError, match="the partition log is closed") as refused:
        lg.append(b, 0, len(b), T0)
    assert refused.value.code == ErrorCode.PARTITION_NOT_FOUND


# ------------------------------------------------------------------------- recovery


def last_nonempty_log(directory) -> str:
    for name in reversed(seg_files(directory)):
        path = os.path.join(directory, name)
        if os.path.getsize(path):
            return path
    raise AssertionError("no data")


def log_of_segments(directory, batches: list[int], at_least: int):
    """An open log (default segment size) holding `batches`, and its segments(): `at_least` of them."""
    lg = open_log(directory)
    fill(lg, batches)
    segs = lg.segments()
    assert len(segs) >= at_least
    return lg, segs


def written_log(directory, batches: list[int], **kw) -> str:
    """A new log holding `batches` (message counts), closed: the path of its newest non-empty
    .log file, for a test that damages it and reopens."""
    lg = open_log(directory, **kw)
    fill(lg, batches)
    lg.close()
    return last_nonempty_log(directory)


def batch_positions(path):
    """[(position, base_offset, count, length)] of the batches in a .log file."""
    data = Path(path).read_bytes()
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
        f.truncate(pos + length // 2)  # the last batch is torn
    lg = open_log(log_dir)
    assert lg.recovered_truncated_bytes == length // 2
    assert lg.next_offset == base  # earlier messages intact, nothing after
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(base))
    assert [m["payload"] for m in msgs] == [payload(i) for i in range(base)]
    got = fill(lg, [4])
    assert got[0][0] == base  # the next append reuses the torn offsets
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(base + 4))
    lg.close()
    lg = open_log(log_dir)
    assert lg.next_offset == base + 4 and lg.recovered_truncated_bytes == 0
    lg.close()


def test_torn_header_is_cut(log_dir):
    path = written_log(log_dir, [2, 2, 2])
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(b"\x07" * 100)  # half a header of garbage
    lg = open_log(log_dir)
    assert lg.next_offset == 6 and lg.recovered_truncated_bytes == 100
    assert os.path.getsize(path) == size
    lg.close()


def test_flipped_byte_in_last_batch_is_never_served(log_dir):
    path = written_log(log_dir, [5, 5, 5])
    pos, base, count, length = batch_positions(path)[-1]
    with open(path, "r+b") as f:
        f.seek(pos + length - 3)  # inside the last message's payload
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


def test_corrupt_message_in_a_middle_batch_stops_reads_before_its_batch(log_dir):
    """The batch is the unit of damage: none of its messages is served, reads before it stop
    there, reads in it fail every time with 4039, reads after it are unaffected."""
    path = written_log(log_dir, [4, 4, 4], segment_size=1 << 20)
    pos, base, count, length = batch_positions(path)[1]  # offsets 4..7
    second = pos + HEADER + FRAME + 52  # frame of offset 5
    with open(path, "r+b") as f:
        f.seek(second + FRAME + 10)
        b = f.read(1)
        f.seek(second + FRAME + 10)
        f.write(bytes([b[0] ^ 1]))
    lg = open_log(log_dir)
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == [0, 1, 2, 3]  # up to the damaged batch only
    for start in (4, 5, 6, 7, 4, 5):  # in it: the error, every time
        with pytest.raises(IggyError) as exc:
            lg.read(start, 3)
        assert exc.value.code == 4039
    msgs, data = read_all(lg, 8)
    check_batches(data)
    assert [m["offset"] for m in msgs] == [8, 9, 10, 11]
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
    with open(os.path.join(log_dir, indexes[1]), "r+b") as f:  # a short index as well
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
    Path(orphan).write_bytes(b"\1" * 24)
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
        assert os.path.getsize(path) == (SEG if active else size)  # sealed: reservation given back
    lg.close()
    lg = open_log(log_dir, preallocate=True)
    assert lg.segments() == segs and lg.recovered_truncated_bytes == 0  # zero tail is not torn
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


def test_purge_to_an_offset_starts_the_log_there(log_dir):
    """A follower whose copy ends below the leader's oldest retained offset starts there."""
    lg = open_log(log_dir)
    fill(lg, [6] * 4)
    lg.purge(100)
    assert lg.messages_count == 0 and lg.next_offset == 100 and lg.first_offset == 100 and lg.segments_count == 1
    assert seg_files(log_dir) == ["00000000000000000100.log"]
    assert lg.read(0, 100) == (b"", 0)
    got = fill(lg, [3], ts0=5)
    assert got[0][0] == 100
    lg.close()
    lg = open_log(log_dir)
    assert lg.next_offset == 103 and lg.first_offset == 100
    assert [m["offset"] for m in read_all(lg)[0]] == [100, 101, 102]
    lg.close()


def test_delete_segments(log_dir):
    lg, segs = log_of_segments(log_dir, [6] * 20, at_least=4)
    total = lg.messages_count
    active = segs[-1][0]
    assert lg.delete_segment(active) is False  # never the active one
    assert lg.delete_segment(999_999) is False
    assert lg.delete_segment(segs[1][0]) is True  # a sealed one in the middle
    assert not os.path.exists(os.path.join(log_dir, f"{segs[1][0]:020d}.log"))
    assert not os.path.exists(os.path.join(log_dir, f"{segs[1][0]:020d}.index"))
    gone = range(segs[1][0], segs[1][1] + 1)
    # a read never steps over offsets no segment holds: it stops before them, and one that
    # starts there fails (a consumer must not skip them unknowingly)
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(gone[0]))
    with pytest.raises(IggyError) as exc:
        lg.read(gone[1], 3)
    assert exc.value.code == 4011
    msgs, data = read_all(lg, gone[-1] + 1)
    assert [m["offset"] for m in msgs] == list(range(gone[-1] + 1, total))
    assert lg.delete_oldest_segments(1) == 1
    assert lg.first_offset == segs[2][0]
    msgs, _ = read_all(lg, 0, 5)  # before the oldest kept: starts there
    assert [m["offset"] for m in msgs] == list(range(segs[2][0], segs[2][0] + 5))
    assert lg.delete_oldest_segments(100) == len(segs) - 3
    assert lg.segments_count == 1 and lg.segments()[0][0] == active
    assert lg.next_offset == total  # offsets continue after deletions
    got = fill(lg, [2])
    assert got[0][0] == total
    lg.close()
    lg = open_log(log_dir)
    assert lg.first_offset == active and lg.next_offset == total + 2
    lg.close()


# ------------------------------------------------------------------------- property

message = st.tuples(st.integers(0, 2**128 - 1), st.binary(min_size=1, max_size=300), st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(st.lists(message, min_size=1, max_size=12), min_size=1, max_size=12),
    segment_size=st.sampled_from([1024, 4096, 1 << 20]),
)
def test_random_batches_read_back_equal(tmp_path_factory, batches, segment_size):
    directory = str(tmp_path_factory.mktemp("prop"))
    lg = PartitionLog(directory, 0, segment_size)
    expected = []
    for i, msgs in enumerate(batches):
        b = build_batch([(mid, data, b"", delta) for mid, data, delta in msgs], origin_timestamp=T0 + i)
        base, count = lg.append(b, 0, len(b), T0 + i)
        assert (base, count) == (len(expected), len(msgs))
        expected += [(len(expected) + j, mid, data, T0 + i + delta) for j, (mid, data, delta) in enumerate(msgs)]
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
        assert [m["offset"] for m in iter_messages(data)] == [e[0] for e in expected[mid : mid + 3]]
    lg.close()


# ------------------------------------------------------------------------- more recovery cases


def index_path(directory, base: int) -> str:
    return os.path.join(directory, f"{base:020d}.index")


def log_path(directory, base: int) -> str:
    return os.path.join(directory, f"{base:020d}.log")


def test_garbage_index_is_rebuilt(log_dir):
    lg = open_log(log_dir)
    fill(lg, [3, 4, 5, 6, 7, 8] * 3)
    segs = lg.segments()
    lg.close()
    sizes = {b: os.path.getsize(index_path(log_dir, b)) for b, *_ in segs}
    for base, *_ in segs:
        with open(index_path(log_dir, base), "r+b") as f:
            f.write(os.urandom(sizes[base] or 24))
    lg = open_log(log_dir)
    assert lg.segments() == segs and lg.recovered_truncated_bytes == 0
    assert {b: os.path.getsize(index_path(log_dir, b)) for b, *_ in segs} == sizes
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(lg.next_offset))
    lg.close()


def test_index_longer_than_the_log_is_trimmed(log_dir):
    path = written_log(log_dir, [2] * 10, segment_size=1 << 20)
    positions = batch_positions(path)
    with open(path, "r+b") as f:
        f.truncate(positions[6][0])  # 4 whole batches gone, the index still lists them
    lg = open_log(log_dir)
    assert lg.next_offset == 12 and lg.recovered_truncated_bytes == 0
    assert os.path.getsize(index_path(log_dir, 0)) == 6 * 24
    assert [m["offset"] for m in read_all(lg)[0]] == list(range(12))
    assert fill(lg, [1])[0][0] == 12
    lg.close()


def test_index_entries_pointing_at_lost_data_fall_back(log_dir):
    # the index reached the disk, the last batches of the log did not (zeros where they were)
    path = written_log(log_dir, [3] * 8, segment_size=1 << 20)
    positions = batch_positions(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(positions[5][0])
        f.write(bytes(size - positions[5][0]))
    lg = open_log(log_dir)
    assert lg.next_offset == 15 and lg.recovered_truncated_bytes == 0  # zeros are not torn data
    assert os.path.getsize(path) == positions[5][0]
    assert os.path.getsize(index_path(log_dir, 0)) == 5 * 24
    check_batches(read_all(lg)[1])
    lg.close()


def test_index_missing_the_newest_entries_is_completed(log_dir):
    lg = open_log(log_dir, segment_size=1 << 20)
    fill(lg, [2] * 6)
    lg.close()
    with open(index_path(log_dir, 0), "r+b") as f:
        f.truncate(2 * 24 + 5)  # a crash between the log write and the index write
    lg = open_log(log_dir)
    assert lg.next_offset == 12
    assert os.path.getsize(index_path(log_dir, 0)) == 6 * 24
    assert [m["offset"] for m in read_all(lg, 7, 3)[0]] == [7, 8, 9]
    lg.close()


def test_emptied_sealed_segment_is_dropped(log_dir):
    lg, segs = log_of_segments(log_dir, [6] * 12, at_least=3)
    lg.close()
    with open(log_path(log_dir, segs[1][0]), "r+b") as f:
        f.truncate(100)  # nothing whole left in a sealed segment
    lg = open_log(log_dir)
    assert [s[0] for s in lg.segments()] == [s[0] for i, s in enumerate(segs) if i != 1]
    assert not os.path.exists(log_path(log_dir, segs[1][0]))
    msgs, data = read_all(lg)
    check_batches(data)
    lost = range(segs[1][0], segs[1][1] + 1)
    assert [m["offset"] for m in msgs] == list(range(lost[0]))  # up to the gap
    for start in (lost[0], lost[-1]):
        with pytest.raises(IggyError) as exc:
            lg.read(start, 1)
        assert exc.value.code == 4011
    msgs, data = read_all(lg, lost[-1] + 1)
    assert [m["offset"] for m in msgs] == list(range(lost[-1] + 1, segs[-1][1] + 1))
    lg.close()


def test_without_checksum_validation_a_corrupt_payload_is_kept(log_dir):
    path = written_log(log_dir, [3, 3])
    pos, base, count, length = batch_positions(path)[-1]
    with open(path, "r+b") as f:
        f.seek(pos + length - 1)
        f.write(b"\xff")
    lg = open_log(log_dir, validate_checksum=False)  # layout is still checked, not checksums
    assert lg.next_offset == 6
    assert len(read_all(lg)[0]) == 6
    lg.close()
    lg = open_log(log_dir)  # with validation the batch is a torn tail
    assert lg.next_offset == 3 and lg.recovered_truncated_bytes == length
    lg.close()


def test_corrupt_first_message_raises(log_dir):
    lg = open_log(log_dir, segment_size=1 << 20)
    fill(lg, [4, 4, 4])
    path = log_path(log_dir, 0)
    pos, base, count, length = batch_positions(path)[1]
    with open(path, "r+b") as f:  # under the open log: no recovery involved
        f.seek(pos + HEADER + FRAME)
        b = f.read(1)
        f.seek(pos + HEADER + FRAME)
        f.write(bytes([b[0] ^ 1]))
    for start in (4, 5):  # the whole batch 4..7 is refused
        with pytest.raises(IggyError) as exc:
            lg.read(start, 2)
        assert exc.value.code == 4039
    assert [m["offset"] for m in read_all(lg, 2, 10)[0]] == [2, 3]
    assert [m["offset"] for m in read_all(lg, 8, 10)[0]] == list(range(8, 12))
    lg.close()


def test_preallocated_zero_tail_of_an_unclosed_log(log_dir, tmp_path):
    import shutil

    lg = open_log(log_dir, preallocate=True, segment_size=1 << 16)
    fill(lg, [5] * 6)
    lg.fsync()
    copy = str(tmp_path / "copy")
    shutil.copytree(log_dir, copy)  # as a crash leaves it: zero reservation after the data
    lg.close()
    assert os.path.getsize(log_path(copy, 0)) == 1 << 16
    lg = open_log(copy, preallocate=True, segment_size=1 << 16)
    assert lg.next_offset == 30 and lg.recovered_truncated_bytes == 0
    assert os.path.getsize(log_path(copy, 0)) == 1 << 16
    assert fill(lg, [1])[0][0] == 30
    check_batches(read_all(lg)[1])
    size = lg.size_bytes
    lg.close()
    assert os.path.getsize(log_path(copy, 0)) == size  # close gives the reservation back
    # garbage after the data inside the reservation is torn data
    with open(log_path(copy, 0), "r+b") as f:
        f.truncate(1 << 16)
        f.seek(size + 1000)
        f.write(b"\x01\x02\x03")
    lg = open_log(copy, preallocate=True, segment_size=1 << 16)
    assert lg.next_offset == 31 and lg.recovered_truncated_bytes == 1003
    with open(log_path(copy, 0), "rb") as f:
        f.seek(size)
        assert f.read() == bytes((1 << 16) - size)  # cut and reserved again
    lg.close()


def test_smaller_segment_size_rolls_at_open(log_dir):
    lg = open_log(log_dir, segment_size=1 << 20)
    fill(lg, [6] * 10)
    lg.close()
    lg = open_log(log_dir, segment_size=SEG)
    assert lg.segments_count == 2 and lg.segments()[1] == (60, 60, 0, 0, True)
    assert fill(lg, [1])[0][0] == 60
    lg.close()


# ------------------------------------------------------------------------- more append / read cases


def test_append_from_any_buffer_leaves_it_untouched(log_dir):
    lg = open_log(log_dir)
    b = batch_of(0, 3)
    body = bytearray(b"\xaa" * 22) + bytearray(b) + bytearray(b"\xbb" * 4)
    before = bytes(body)
    assert lg.append(body, 22, 22 + len(b), T0) == (0, 3)
    assert lg.append(memoryview(body), 22, 22 + len(b), T0) == (3, 3)
    assert lg.append(bytes(body), 22, 22 + len(b), T0) == (6, 3)
    assert body == before
    msgs, data = read_all(lg)
    check_batches(data, partition_id=3)
    assert [m["offset"] for m in msgs] == list(range(9))
    lg.close()


def test_append_refuses_what_does_not_frame(log_dir):
    lg = open_log(log_dir)
    b = batch_of(0, 3)
    with pytest.raises(IggyError) as exc:
        lg.append(b, 0, len(b) + 1, T0)
    assert exc.value.code == 4036
    with pytest.raises(IggyError) as exc:
        lg.append(b, 0, 200, T0)
    assert exc.value.code == 4036
    with pytest.raises(IggyError) as exc:
        lg.append(b, 0, len(b) - 1, T0)  # batch_length says otherwise
    assert exc.value.code == 4036
    lying = bytearray(b)
    struct.pack_into("<I", lying, 48, 4)  # one frame more than there is
    with pytest.raises(IggyError):
        lg.append(lying, 0, len(lying), T0)
    assert lg.is_empty and lg.size_bytes == 0
    assert fill(lg, [2])[0][0] == 0
    lg.close()


def test_big_batch_round_trip(log_dir):
    lg = open_log(log_dir, segment_size=1 << 30)
    b = build_batch([(i + 1, bytes([i % 251]) * 1000, b"") for i in range(1000)], origin_timestamp=T0)
    assert lg.append(b, 0, len(b), T0) == (0, 1000)
    data, n = lg.read(0, 1000)
    assert n == 1000 and data[48:] == b[48:] and data[24:40] == b[24:40]
    data, n = lg.read(500, 10)
    assert n == 10 and [m["payload"][0] for m in iter_messages(data)] == [i % 251 for i in range(500, 510)]
    lg.close()


def test_read_max_bytes_stops_at_whole_batches(log_dir):
    lg = open_log(log_dir)
    fill(lg, [4] * 12)
    batch_len = HEADER + 4 * (FRAME + 52)
    data, n = lg.read(0, 1000, max_bytes=3 * batch_len + 10)
    assert n == 12 and len(data) == 3 * batch_len
    data, n = lg.read(2, 1000, max_bytes=10)  # always at least one batch
    assert n == 2 and [m["offset"] for m in iter_messages(data)] == [2, 3]
    data, n = lg.read(0, 1000, max_bytes=1 << 30)
    assert n == 48
    lg.close()


def test_is_empty_means_nothing_was_ever_appended(log_dir):
    lg = open_log(log_dir)
    fill(lg, [6] * 12)
    while lg.segments()[-1][2]:
        fill(lg, [6])
    lg.delete_oldest_segments(1000)
    assert lg.messages_count == 0 and not lg.is_empty
    assert lg.first_offset == lg.next_offset and lg.read(0, 10) == (b"", 0)
    assert lg.current_offset == lg.next_offset - 1
    lg.close()


def test_append_is_one_pwritev_and_read_one_pread(tmp_path):
    """The data path's syscalls, counted with strace (skipped where ptrace is not allowed)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "from iggy.protocol.batch import build_batch\n"
        "from iggy.storage.log import PartitionLog\n"
        f"lg = PartitionLog({str(tmp_path / 'p')!r}, 1, 1 << 30)\n"
        "b = build_batch([(i + 1, bytes([i % 251]) * 1000, b'') for i in range(1000)])\n"
        "sys.stderr.write('=== BEGIN\\n'); sys.stderr.flush()\n"
        "lg.append(b, 0, len(b), 1)\n"
        "data, n = lg.read(0, 1000)\n"
        "sys.stderr.write('=== END\\n'); sys.stderr.flush()\n"
        "assert n == 1000\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        ["strace", "-f", "-e", "trace=pwritev,pwrite64,pread64,write,read,preadv", sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    if proc.returncode != 0 or "=== BEGIN" not in proc.stderr:
        pytest.skip(f"strace does not work here: {proc.stderr[-300:]}")
    window = proc.stderr.split("=== BEGIN", 1)[1].split("=== END", 1)[0]
    calls = [line.split("(", 1)[0].strip() for line in window.splitlines() if "(" in line and "write(2," not in line]
    calls = [c for c in calls if c and not c.startswith("+++")]
    assert calls == ["pwritev", "pwritev", "pread64"], window  # log batch, index entry, one read


def test_torn_segment_before_an_empty_active_one_becomes_active(log_dir):
    lg = open_log(log_dir)
    fill(lg, [6])
    while lg.segments()[-1][2]:
        fill(lg, [6])  # stop right after a roll: the active one is empty
    segs = lg.segments()
    lg.close()
    sealed = log_path(log_dir, segs[-2][0])
    pos, base, count, length = batch_positions(sealed)[-1]
    with open(sealed, "r+b") as f:
        f.truncate(pos + 10)
        f.seek(pos)
        torn = f.read().rstrip(b"\0")  # trailing zeros count as unwritten space
    lg = open_log(log_dir)
    assert lg.recovered_truncated_bytes == len(torn) > 0
    assert lg.segments()[-1][0] == segs[-2][0] and lg.segments()[-1][4]  # no gap of offsets
    assert not os.path.exists(log_path(log_dir, segs[-1][0]))
    assert lg.next_offset == base and fill(lg, [2])[0][0] == base
    msgs, data = read_all(lg)
    check_batches(data)
    assert [m["offset"] for m in msgs] == list(range(base + 2))
    lg.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=25),
    cut=st.floats(0, 1),
    damage=st.sampled_from(["truncate", "flip", "garbage", "drop_index"]),
    data=st.data(),
)
def test_recovery_keeps_an_exact_prefix(tmp_path_factory, sizes, cut, damage, data):
    """Whatever happens to the newest segment, reopening serves a prefix of what was written,
    checksums intact, and the next append continues right after it."""
    directory = str(tmp_path_factory.mktemp("rec"))
    lg = PartitionLog(directory, 0, 2048)
    fill(lg, sizes)
    total = lg.next_offset
    lg.close()
    path = last_nonempty_log(directory)
    size = os.path.getsize(path)
    where = min(int(cut * size), size - 1)
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(where)
    elif damage == "flip":
        with open(path, "r+b") as f:
            f.seek(where)
            b = f.read(1)
            f.seek(where)
            f.write(bytes([b[0] ^ data.draw(st.integers(1, 255))]))
    elif damage == "garbage":
        with open(path, "ab") as f:
            f.write(data.draw(st.binary(min_size=1, max_size=600)))
    else:
        os.unlink(path[:-4] + ".index")
    lg = PartitionLog(directory, 0, 2048)
    n = lg.next_offset
    assert n <= total
    if damage in ("garbage", "drop_index"):
        assert n == total
    if n:
        # a flip inside an older batch (or the newest of a sealed segment) is bit rot, not a
        # torn tail: recovery keeps the batch and reads stop before it instead
        try:
            msgs, raw = read_all(lg)
        except IggyError as exc:
            assert damage == "flip" and exc.code == 4039
            msgs, raw = [], b""
        check_batches(raw)
        served = len(msgs) if damage == "flip" else n
        assert [m["offset"] for m in msgs] == list(range(served))
        assert [m["payload"] for m in msgs] == [payload(i) for i in range(served)]
    assert fill(lg, [2])[0][0] == n
    lg.close()
    lg = PartitionLog(directory, 0, 2048)
    assert lg.next_offset == n + 2 and lg.recovered_truncated_bytes == 0
    msgs, raw = read_all(lg, n)
    check_batches(raw)
    assert [m["offset"] for m in msgs] == [n, n + 1]
    lg.close()
