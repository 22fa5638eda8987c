"""Damage in sealed segments, every byte of it: reads are deterministic and never silent.

A partition log of several 4 KiB segments (batches of 5 messages of ~100 bytes) is written
once; then, for every byte of one batch in the middle of a sealed segment, of the newest
batch of a sealed segment, and of that batch's index entry, a copy of the directory gets that
byte flipped and is reopened (as a server start would). For every start offset a read must
either serve messages contiguous from that start, byte-exact and checksummed, or raise
INVALID_BATCH_CHECKSUM (4039, the batch fails its checks) or CANNOT_READ_MESSAGE (4011,
offsets no segment holds) — never an empty success while messages exist (a consumer would
stall without a word), never a message of the damaged batch, and a read that starts before
the damage serves everything up to it. Damage the cheap startup check can see (headers and
index entries) is reported when the log opens, naming the file.
"""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from iggy.protocol.errors import IggyError
from iggy.storage.log import PartitionLog
from tests.test_log import batch_positions, check_batches, fill, iter_messages, payload

SEG = 4096
TOTAL = 100
PARTITION = 3


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("pristine") / "p")
    lg = PartitionLog(directory, PARTITION, SEG)
    fill(lg, [5] * (TOTAL // 5))
    segments = lg.segments()
    lg.close()
    assert len(segments) >= 3 and not segments[1][4]
    return directory, segments


def _copy(pristine, tmp_path, name):
    directory, _ = pristine
    target = str(tmp_path / name)
    shutil.copytree(directory, target)
    return target


def _flip(path: str, pos: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ mask]))


def _check_reads(lg: PartitionLog, damaged: range) -> dict[int, int]:
    """Read from every offset; returns {start: error code} of the reads that failed."""
    assert lg.next_offset == TOTAL
    errors = {}
    for start in range(TOTAL):
        try:
            data, n = lg.read(start, 5)
        except IggyError as exc:
            assert exc.code in (4039, 4011), exc
            errors[start] = exc.code
            with pytest.raises(IggyError) as again:  # the same answer every time
                lg.read(start, 5)
            assert again.value.code == exc.code
            continue
        assert n > 0, f"empty success at {start} of {TOTAL}"
        msgs = list(iter_messages(data))
        check_batches(data, PARTITION)
        offsets = [m["offset"] for m in msgs]
        assert offsets == list(range(start, start + n))
        assert [m["payload"] for m in msgs] == [payload(o) for o in offsets]
        assert not set(offsets) & set(damaged)
        if start < damaged.start < start + 5:
            assert offsets[-1] == damaged.start - 1  # up to the damage, not short of it
    return errors


def _batch(pristine, segment: int, which: int):
    directory, segments = pristine
    path = os.path.join(directory, f"{segments[segment][0]:020d}.log")
    pos, base, count, length = batch_positions(path)[which]
    return os.path.basename(path), pos, base, count, length


@pytest.mark.parametrize("which", [2, -1], ids=["middle-batch", "newest-batch"])
def test_every_flipped_byte_of_a_sealed_batch(pristine, tmp_path, caplog, which):
    name, pos, base, count, length = _batch(pristine, 1, which)
    damaged = range(base, base + count)
    codes_seen = set()
    for i in range(length):
        directory = _copy(pristine, tmp_path, f"flip{i}")
        _flip(os.path.join(directory, name), pos + i)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="iggy.storage.log"):
            lg = PartitionLog(directory, PARTITION, SEG)
        startup = [r.getMessage() for r in caplog.records]
        try:
            errors = _check_reads(lg, damaged)
        finally:
            lg.close()
        # every byte of a batch is covered by a checksum or a check: each of its offsets fails
        assert set(errors) == set(damaged), i
        codes_seen |= set(errors.values())
        if which == 2:
            assert set(errors.values()) == {4039}
            # a batch in the middle is not read at open (only the index and the end batches
            # are): the first read of it reports it
            assert not startup, i
        else:
            # the newest batch of a sealed segment is kept when its header still fits (4039);
            # a header that does not is cut as a torn tail, and its offsets become a gap (4011)
            assert set(errors.values()) in ({4039}, {4011})
            assert any(name in line for line in startup), i
        shutil.rmtree(directory)
    assert 4039 in codes_seen


def test_every_flipped_byte_of_an_index_entry(pristine, tmp_path):
    name, pos, base, count, length = _batch(pristine, 1, 2)
    damaged = range(base, base + count)
    index_name = name[:-4] + ".index"
    for i in range(24):
        directory = _copy(pristine, tmp_path, f"index{i}")
        entry = 2 * 24
        _flip(os.path.join(directory, index_name), entry + i, 0x10)
        lg = PartitionLog(directory, PARTITION, SEG)
        try:
            # a lying entry may misroute reads near it: they fail, they never serve wrong data
            # or nothing
            _check_reads(lg, range(0))
        finally:
            lg.close()
        shutil.rmtree(directory)
    assert damaged


@pytest.mark.parametrize("field", [8, 16, 32, 48, 100], ids=["offset", "timestamp", "length", "count", "reserved"])
def test_startup_check_reports_the_first_batch_of_a_segment(pristine, tmp_path, caplog, field):
    name, pos, base, count, length = _batch(pristine, 1, 0)
    directory = _copy(pristine, tmp_path, "first")
    _flip(os.path.join(directory, name), pos + field)
    with caplog.at_level(logging.WARNING, logger="iggy.storage.log"):
        lg = PartitionLog(directory, PARTITION, SEG)
    try:
        assert [r.getMessage() for r in caplog.records] == [
            f"partition {directory}: segment {os.path.join(directory, name)}: 1 of 6 index entries do not match "
            f"the segment (a damaged index or batch header), the first at offset {base}; polls there are "
            f"answered with error 4039"
        ]
        assert _check_reads(lg, range(base, base + count)) == dict.fromkeys(range(base, base + count), 4039)
    finally:
        lg.close()


@pytest.mark.parametrize("field", [0, 16], ids=["offset", "position"])
def test_startup_check_reports_an_index_entry_out_of_order(pristine, tmp_path, caplog, field):
    name, pos, base, count, length = _batch(pristine, 1, 2)
    directory = _copy(pristine, tmp_path, "index")
    _flip(os.path.join(directory, name[:-4] + ".index"), 2 * 24 + field + 7, 0x80)  # the top byte
    with caplog.at_level(logging.WARNING, logger="iggy.storage.log"):
        lg = PartitionLog(directory, PARTITION, SEG)
    try:
        assert any(name in r.getMessage() and "index entries do not match" in r.getMessage() for r in caplog.records)
        _check_reads(lg, range(0))
    finally:
        lg.close()


def test_logged_once_per_batch(pristine, tmp_path, caplog):
    name, pos, base, count, length = _batch(pristine, 1, 2)
    directory = _copy(pristine, tmp_path, "once")
    _flip(os.path.join(directory, name), pos + length - 3)  # a payload byte: no startup warning
    with caplog.at_level(logging.WARNING, logger="iggy.storage.log"):
        lg = PartitionLog(directory, PARTITION, SEG)
        assert not caplog.records
        for _ in range(5):
            for start in (base - 2, base, base + 3):
                try:
                    lg.read(start, 5)
                except IggyError:
                    pass
        lg.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"partition {directory}: batch at offset {base} in segment {os.path.join(directory, name)} fails its checksum"
    ]


def test_a_gap_left_by_a_lost_segment_is_not_stepped_over(pristine, tmp_path):
    _, segments = pristine
    directory = _copy(pristine, tmp_path, "gap")
    lost = segments[1]
    os.unlink(os.path.join(directory, f"{lost[0]:020d}.log"))
    lg = PartitionLog(directory, PARTITION, SEG)
    try:
        errors = _check_reads(lg, range(lost[0], lost[1] + 1))
    finally:
        lg.close()
    assert errors == dict.fromkeys(range(lost[0], lost[1] + 1), 4011)


def test_label_names_stream_topic_partition(tmp_path):
    directory = str(tmp_path / "streams" / "4" / "topics" / "5" / "partitions" / "6")
    lg = PartitionLog(directory, 6, SEG)
    assert lg.label == "4/5/6"
    lg.close()
    other = PartitionLog(str(tmp_path / "elsewhere"), 1, SEG)
    assert other.label == str(tmp_path / "elsewhere")
    other.close()


def test_startup_check_reads_one_header_per_batch(tmp_path):
    """The check is cheap: opening a log reads each batch's header, not its messages (bytes
    read by this process, from /proc/self/io, stay far below the data size)."""
    directory = str(tmp_path / "big")
    lg = PartitionLog(directory, PARTITION, 1 << 20)
    for _ in range(20):
        fill(lg, [20] * 20, size=2000)  # batches of ~40 KB, ~16 MB in 1 MiB segments
    size = lg.size_bytes
    lg.close()

    def bytes_read():
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar:")).split()[1])

    before = bytes_read()
    lg = PartitionLog(directory, PARTITION, 1 << 20)
    spent = bytes_read() - before
    lg.close()
    # per segment: its index, one header per batch and the recovery walk of its newest batch
    assert spent < size // 4, (spent, size)
