"""Unit tests of the Cython consumer-offset store (iggy.storage.offset_store.OffsetStore).

The Python methods go through the C entry points the io_uring shard uses (get -> c_get,
store -> c_store), so these tests cover the nogil path. On disk: one 16-byte file per
consumer/group, u64 LE offset | XXH3-64 of those 8 bytes; torn or corrupt files are ignored
at load, 8-byte legacy files accepted, recovered offsets clamped to the current offset.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import struct

import pytest
import xxhash

from iggy.protocol.errors import ErrorCode
from iggy.storage.consumer_offsets import CONSUMER, GROUP, OffsetStore, OffsetStoreError, consumer_key


def record(offset: int) -> bytes:
    raw = struct.pack("<Q", offset)
    return raw + struct.pack("<Q", xxhash.xxh3_64_intdigest(raw))


def path_of(part, kind, key) -> str:
    return os.path.join(str(part), "offsets", kind, str(key))


def read(part, kind, key) -> bytes:
    with open(path_of(part, kind, key), "rb") as f:
        return f.read()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def part(tmp_path):
    d = tmp_path / "partition"
    d.mkdir()
    return d


def reopen(part, current_offset, fsync=False) -> OffsetStore:
    s = OffsetStore(str(part), fsync=fsync)
    s.load(current_offset)
    return s


def test_layout_and_round_trip(part):
    s = OffsetStore(str(part))
    assert os.path.isdir(part / "offsets" / "consumers") and os.path.isdir(part / "offsets" / "groups")
    assert s.root == os.path.join(str(part), "offsets") and not s.fsync
    assert s.get(CONSUMER, 1) is None and s.lowest() is None and len(s) == 0
    s.store(CONSUMER, 1, 10)
    s.store(GROUP, 1, 20)
    assert s.get(CONSUMER, 1) == 10 and s.get(GROUP, 1) == 20
    assert read(part, CONSUMER, 1) == record(10) and read(part, GROUP, 1) == record(20)
    s.store(CONSUMER, 1, 11)  # overwritten in place
    assert s.get(CONSUMER, 1) == 11 and read(part, CONSUMER, 1) == record(11)
    top = 2**64 - 1
    s.store(GROUP, top, top)
    assert s.get(GROUP, top) == top and read(part, GROUP, top) == record(top)
    assert s.offsets == {(CONSUMER, 1): 11, (GROUP, 1): 20, (GROUP, top): top}
    assert len(s) == 3


def test_named_consumer_key(part):
    s = OffsetStore(str(part))
    key = consumer_key("worker-a")
    assert key == xxhash.xxh32_intdigest(b"worker-a") and consumer_key(7) == 7
    s.store(CONSUMER, key, 5)
    assert reopen(part, 100).get(CONSUMER, key) == 5


def test_bad_arguments(part):
    s = OffsetStore(str(part))
    with pytest.raises(ValueError):
        s.store("nobody", 1, 1)
    with pytest.raises(ValueError):
        s.get("nobody", 1)
    with pytest.raises(OverflowError):
        s.store(CONSUMER, -1, 1)
    with pytest.raises(OverflowError):
        s.store(CONSUMER, 1, 2**64)
    assert s.get(CONSUMER, -1) is None and s.delete(CONSUMER, -1) is False
    assert len(s) == 0 and os.listdir(part / "offsets" / "consumers") == []


def test_reload_after_store(part):
    s = OffsetStore(str(part))
    s.store(CONSUMER, 3, 30)
    s.store(GROUP, 4, 40)
    s.store(CONSUMER, 3, 33)
    s.close()
    t = reopen(part, 1000)
    assert t.offsets == {(CONSUMER, 3): 33, (GROUP, 4): 40}
    t.store(GROUP, 4, 41)  # first store after load opens the existing file
    assert reopen(part, 1000).get(GROUP, 4) == 41


def test_torn_and_corrupt_files_ignored(part, caplog):
    s = OffsetStore(str(part))
    for key in range(1, 6):
        s.store(CONSUMER, key, key * 10)
    s.store(GROUP, 9, 90)
    del s
    with open(path_of(part, CONSUMER, 2), "r+b") as f:  # torn: short
        f.truncate(5)
    with open(path_of(part, CONSUMER, 3), "ab") as f:  # torn: long
        f.write(b"\0")
    with open(path_of(part, CONSUMER, 4), "r+b") as f:  # corrupt checksum
        f.seek(12)
        f.write(b"\xff")
    with open(path_of(part, GROUP, 9), "r+b") as f:  # corrupt offset
        f.write(b"\x01")
    with open(path_of(part, CONSUMER, 6), "wb"):  # empty
        pass
    for junk in ("tmp", "12a", "\u00b2", "7.tmp"):
        with open(os.path.join(str(part), "offsets", CONSUMER, junk), "wb") as f:
            f.write(record(1))
    with caplog.at_level(logging.WARNING, logger="iggy.storage.consumer_offsets"):
        t = reopen(part, 1000)
    assert t.offsets == {(CONSUMER, 1): 10, (CONSUMER, 5): 50}
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "torn" in warned and "corrupt" in warned
    for key in (2, 3, 4, 6):
        assert path_of(part, CONSUMER, key) in warned
    assert path_of(part, GROUP, 9) in warned
    # a store over a torn file makes it good again
    t.store(CONSUMER, 2, 22)
    assert reopen(part, 1000).get(CONSUMER, 2) == 22


def test_clamp_on_load(part):
    s = OffsetStore(str(part))
    s.store(CONSUMER, 1, 100)
    s.store(GROUP, 2, 30)
    assert reopen(part, 50).offsets == {(CONSUMER, 1): 50, (GROUP, 2): 30}
    assert reopen(part, 200).offsets == {(CONSUMER, 1): 100, (GROUP, 2): 30}
    assert reopen(part, 0).offsets == {(CONSUMER, 1): 0, (GROUP, 2): 0}
    empty = reopen(part, None)  # empty partition: nothing loaded, files left alone
    assert empty.offsets == {} and empty.lowest() is None
    assert read(part, CONSUMER, 1) == record(100)


def test_legacy_8_byte_record(part):
    OffsetStore(str(part))
    with open(path_of(part, GROUP, 5), "wb") as f:
        f.write(struct.pack("<Q", 77))
    s = reopen(part, 1000)
    assert s.get(GROUP, 5) == 77
    assert reopen(part, 10).get(GROUP, 5) == 10
    s.store(GROUP, 5, 78)  # rewritten as a 16-byte record
    assert read(part, GROUP, 5) == record(78)


def test_delete_and_clear_remove_files(part):
    s = OffsetStore(str(part))
    s.store(CONSUMER, 1, 1)
    s.store(CONSUMER, 2, 2)
    s.store(GROUP, 1, 3)
    assert s.delete(CONSUMER, 1) is True
    assert s.delete(CONSUMER, 1) is False
    assert s.delete(GROUP, 2) is False
    assert s.get(CONSUMER, 1) is None and not os.path.exists(path_of(part, CONSUMER, 1))
    assert s.get(CONSUMER, 2) == 2 and s.get(GROUP, 1) == 3
    os.unlink(path_of(part, CONSUMER, 2))  # already gone from disk: still deleted
    assert s.delete(CONSUMER, 2) is True
    s.store(CONSUMER, 1, 9)  # a deleted key can be stored again
    assert read(part, CONSUMER, 1) == record(9)
    s.clear()
    assert s.offsets == {} and len(s) == 0 and s.lowest() is None
    assert os.listdir(part / "offsets" / CONSUMER) == [] and os.listdir(part / "offsets" / GROUP) == []
    assert reopen(part, 1000).offsets == {}


def test_fds_kept_open_and_closed(part):
    s = OffsetStore(str(part))
    base = open_fds()
    s.store(CONSUMER, 1, 1)
    s.store(GROUP, 1, 1)
    assert open_fds() == base + 2
    for i in range(10):
        s.store(CONSUMER, 1, i)
    assert open_fds() == base + 2  # one fd per key, reused: no open per store
    # the store writes through the open fd: a renamed file keeps receiving the records
    moved = path_of(part, CONSUMER, "moved")
    os.rename(path_of(part, CONSUMER, 1), moved)
    s.store(CONSUMER, 1, 42)
    with open(moved, "rb") as f:
        assert f.read() == record(42)
    assert not os.path.exists(path_of(part, CONSUMER, 1))
    os.rename(moved, path_of(part, CONSUMER, 1))
    s.delete(GROUP, 1)
    assert open_fds() == base + 1
    s.close()
    assert open_fds() == base
    s.close()  # idempotent
    assert s.get(CONSUMER, 1) == 42 and s.lowest() == 42  # offsets kept
    s.store(CONSUMER, 1, 43)  # reopens the file
    assert read(part, CONSUMER, 1) == record(43) and open_fds() == base + 1
    s.store(GROUP, 2, 1)
    s.clear()
    assert open_fds() == base
    s.store(GROUP, 3, 1)
    del s
    assert open_fds() == base  # dealloc closes


def test_lowest(part):
    s = OffsetStore(str(part))
    assert s.lowest() is None
    s.store(CONSUMER, 1, 50)
    assert s.lowest() == 50
    s.store(GROUP, 7, 20)
    s.store(CONSUMER, 2, 90)
    assert s.lowest() == 20
    s.store(GROUP, 7, 95)
    assert s.lowest() == 50
    s.delete(CONSUMER, 1)
    assert s.lowest() == 90
    s.store(CONSUMER, 3, 0)
    assert s.lowest() == 0


def test_many_keys_both_kinds(part):
    s = OffsetStore(str(part))
    n = 2000
    keys = list(range(n)) + [2**32 - 1 - k for k in range(200)] + [2**63 + k for k in range(50)]
    for k in keys:
        s.store(CONSUMER, k, k % 1_000_003)
        s.store(GROUP, k, (k + 1) % 1_000_003)
    s.close()  # stay well below the fd limit
    assert len(s) == 2 * len(keys)
    for k in keys:
        assert s.get(CONSUMER, k) == k % 1_000_003
        assert s.get(GROUP, k) == (k + 1) % 1_000_003
    assert s.get(CONSUMER, n) is None and s.get(GROUP, n) is None
    # delete a random half (exercises backward-shift deletion) and check every survivor
    rng = random.Random(7)
    gone = set(rng.sample([(kind, k) for kind in (CONSUMER, GROUP) for k in keys], len(keys)))
    for kind, k in gone:
        assert s.delete(kind, k)
    assert len(s) == len(keys)
    expected = {}
    for k in keys:
        for kind, value in ((CONSUMER, k % 1_000_003), (GROUP, (k + 1) % 1_000_003)):
            if (kind, k) in gone:
                assert s.get(kind, k) is None
            else:
                assert s.get(kind, k) == value
                expected[(kind, k)] = value
    assert s.offsets == expected
    assert s.lowest() == min(expected.values())
    assert reopen(part, 10**9).offsets == expected


def test_fsync_store(part):
    s = OffsetStore(str(part), fsync=True)
    assert s.fsync
    for i in range(5):
        s.store(CONSUMER, 1, i)
        s.store(GROUP, 2, i + 100)
    assert read(part, CONSUMER, 1) == record(4) and read(part, GROUP, 2) == record(104)
    assert reopen(part, 1000, fsync=True).offsets == {(CONSUMER, 1): 4, (GROUP, 2): 104}


def test_store_failure_changes_nothing(part):
    s = OffsetStore(str(part))
    s.store(CONSUMER, 1, 10)
    s.store(GROUP, 1, 11)
    shutil.rmtree(part / "offsets" / CONSUMER)
    with pytest.raises(OffsetStoreError) as exc:  # a new key must create its file
        s.store(CONSUMER, 2, 20)
    assert exc.value.filename == path_of(part, CONSUMER, 2)
    assert exc.value.errno == errno.ENOENT and exc.value.code == ErrorCode.CANNOT_OPEN_CONSUMER_OFFSETS_FILE
    assert s.get(CONSUMER, 2) is None and len(s) == 2 and s.lowest() == 10
    s.close()
    with pytest.raises(OffsetStoreError) as exc:  # a known key whose file must be reopened
        s.store(CONSUMER, 1, 99)
    assert exc.value.code == ErrorCode.CANNOT_OPEN_CONSUMER_OFFSETS_FILE
    assert s.get(CONSUMER, 1) == 10 and s.lowest() == 10
    assert s.offsets == {(CONSUMER, 1): 10, (GROUP, 1): 11}
    os.makedirs(part / "offsets" / CONSUMER)
    s.store(CONSUMER, 1, 12)
    s.store(CONSUMER, 2, 20)
    assert reopen(part, 1000).offsets == {(CONSUMER, 1): 12, (CONSUMER, 2): 20, (GROUP, 1): 11}


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_store_failure_read_only(part):
    s = OffsetStore(str(part))
    d = part / "offsets" / GROUP
    os.chmod(d, 0o500)
    try:
        with pytest.raises(OffsetStoreError) as exc:
            s.store(GROUP, 1, 1)
        assert exc.value.errno == errno.EACCES and exc.value.code == ErrorCode.CANNOT_OPEN_CONSUMER_OFFSETS_FILE
        assert s.get(GROUP, 1) is None and len(s) == 0
    finally:
        os.chmod(d, 0o700)


def test_store_failure_disk_full(part):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    s = OffsetStore(str(part))
    s.store(CONSUMER, 1, 10)
    s.close()
    os.unlink(path_of(part, CONSUMER, 1))
    os.symlink("/dev/full", path_of(part, CONSUMER, 1))  # every write fails with ENOSPC
    base = open_fds()
    with pytest.raises(OffsetStoreError) as exc:
        s.store(CONSUMER, 1, 11)
    assert exc.value.errno == errno.ENOSPC and exc.value.code == ErrorCode.CANNOT_WRITE_TO_FILE
    assert s.get(CONSUMER, 1) == 10 and open_fds() == base  # the fd opened for it was closed
