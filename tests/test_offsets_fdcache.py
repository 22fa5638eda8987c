"""Unit tests of the process-wide cache of open consumer-offset files and of the per-partition
limit on stored keys (iggy.storage.offset_store; contract in its docstring).

The cache keeps at most `budget` descriptors open across every OffsetStore, closes the least
recently used first, never closes a descriptor a store is writing through (pinned), and
reopens an evicted key's file on its next store. Which files are open is read from
/proc/self/fd, so the tests see the real descriptors.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import struct
import threading

import pytest
import xxhash

from iggy.protocol.errors import ErrorCode
from iggy.storage.consumer_offsets import (
    CONSUMER,
    GROUP,
    OffsetStore,
    OffsetStoreError,
    configure,
    fd_cache_stats,
    open_files_budget,
)


def record(offset: int) -> bytes:
    raw = struct.pack("<Q", offset)
    return raw + struct.pack("<Q", xxhash.xxh3_64_intdigest(raw))


def open_offset_files(under) -> dict:
    """{fd: path} of this process's descriptors on files below `under`."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(under)):
            out[int(name)] = target
    return out


def open_keys(under, kind=CONSUMER) -> set:
    return {
        int(os.path.basename(p))
        for p in open_offset_files(under).values()
        if os.path.basename(os.path.dirname(p)) == kind and os.path.basename(p).isdigit()
    }


@pytest.fixture
def budget():
    """configure(max_open_files=n) for the test; the previous budget is restored after it."""
    before = fd_cache_stats()

    def set_budget(n):
        configure(max_open_files=n)
        return n

    yield set_budget
    configure(max_open_files=before["budget"], max_offsets=before["max_offsets"])


def store_at(tmp_path, name="p", **kw) -> OffsetStore:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    return OffsetStore(str(d), **kw)


def test_least_recently_used_file_is_closed_first(tmp_path, budget):
    budget(4)
    s = store_at(tmp_path)
    for k in range(10):
        s.store(CONSUMER, k, k * 10)
    assert open_keys(tmp_path) == {6, 7, 8, 9} and fd_cache_stats()["open"] == 4
    s.store(CONSUMER, 6, 61)  # a hit: no file opened, 6 becomes most recent
    assert open_keys(tmp_path) == {6, 7, 8, 9}
    s.store(CONSUMER, 0, 1)  # reopens 0 and closes the least recent: 7
    assert open_keys(tmp_path) == {6, 8, 9, 0}
    s.store(GROUP, 5, 50)  # both kinds share the budget
    assert open_keys(tmp_path) == {6, 9, 0} and open_keys(tmp_path, GROUP) == {5}
    assert s.offsets == {
        **{(CONSUMER, k): k * 10 for k in range(1, 10) if k != 6},
        (CONSUMER, 0): 1,
        (CONSUMER, 6): 61,
        (GROUP, 5): 50,
    }
    for k in range(10):  # every record on disk, evicted or not
        with open(tmp_path / "p" / "offsets" / CONSUMER / str(k), "rb") as f:
            assert f.read() == record(s.get(CONSUMER, k))
    s.close()
    assert open_offset_files(tmp_path) == {} and fd_cache_stats()["open"] == 0


def test_a_cached_descriptor_is_reused(tmp_path, budget):
    budget(4)
    s = store_at(tmp_path)
    s.store(CONSUMER, 1, 1)
    (fd,) = open_offset_files(tmp_path)
    path = tmp_path / "p" / "offsets" / CONSUMER / "1"
    moved = tmp_path / "p" / "offsets" / CONSUMER / "moved"
    os.rename(path, moved)  # the store writes through its open descriptor
    s.store(CONSUMER, 1, 2)
    assert moved.read_bytes() == record(2) and not path.exists()
    assert list(open_offset_files(tmp_path)) == [fd]
    os.rename(moved, path)
    for k in range(2, 6):  # evict key 1 ...
        s.store(CONSUMER, k, k)
    assert 1 not in open_keys(tmp_path)
    s.store(CONSUMER, 1, 3)  # ... and its next store reopens the file
    assert path.read_bytes() == record(3) and 1 in open_keys(tmp_path)
    s.close()


def test_the_budget_is_global_across_partitions(tmp_path, budget):
    budget(3)
    a, b = store_at(tmp_path, "a"), store_at(tmp_path, "b")
    for k in range(3):
        a.store(CONSUMER, k, k)
    for k in range(3):
        b.store(CONSUMER, k, 100 + k)
    assert open_keys(tmp_path / "b") == {0, 1, 2} and open_keys(tmp_path / "a") == set()
    a.store(CONSUMER, 1, 11)  # a reopens, b loses its least recent
    assert open_keys(tmp_path / "a") == {1} and open_keys(tmp_path / "b") == {1, 2}
    assert a.offsets == {(CONSUMER, 0): 0, (CONSUMER, 1): 11, (CONSUMER, 2): 2}
    assert b.offsets == {(CONSUMER, k): 100 + k for k in range(3)}
    del a  # deallocation releases its slots
    assert open_keys(tmp_path / "a") == set() and fd_cache_stats()["open"] == 2
    b.close()


def test_shrinking_the_budget_closes_the_excess(tmp_path, budget):
    budget(8)
    s = store_at(tmp_path)
    for k in range(8):
        s.store(CONSUMER, k, k)
    assert len(open_offset_files(tmp_path)) == 8
    budget(2)
    assert open_keys(tmp_path) == {6, 7} and fd_cache_stats()["open"] == 2
    with pytest.raises(ValueError):
        configure(max_open_files=0)
    s.close()


def test_a_pinned_descriptor_is_never_closed(tmp_path, budget):
    budget(1)
    s = store_at(tmp_path)
    s.store(CONSUMER, 1, 1)
    fd, handle = s._pin(CONSUMER, 1)  # as a store holds it during its pwrite
    assert fd_cache_stats()["pinned"] == 1
    path = str(tmp_path / "p" / "offsets" / CONSUMER / "1")
    for k in range(2, 6):  # each new key needs the only slot: 1 is skipped
        s.store(CONSUMER, k, k)
        assert os.readlink(f"/proc/self/fd/{fd}") == path
        assert open_keys(tmp_path) == {1, k}  # over budget by the pinned one, no more
    os.pwrite(fd, record(7), 0)  # still the same, writable file
    s._unpin(handle)  # unpinned over budget: closed at once
    assert open_keys(tmp_path) == {5}
    assert fd_cache_stats()["open"] == 1 and fd_cache_stats()["pinned"] == 0
    s.store(CONSUMER, 1, 8)  # reopened
    with open(path, "rb") as f:
        assert f.read() == record(8)
    # its owner deleting a pinned key: the file goes, the descriptor only at the last unpin
    fd, handle = s._pin(CONSUMER, 1)
    assert s.delete(CONSUMER, 1) and not os.path.exists(path)
    assert os.readlink(f"/proc/self/fd/{fd}") == path + " (deleted)"
    assert s._pin(CONSUMER, 1) is None
    s._unpin(handle)
    assert 1 not in open_keys(tmp_path) and fd_cache_stats()["pinned"] == 0
    s.close()


def test_concurrent_stores_from_threads(tmp_path, budget):
    """Eight threads, each with its own partition (as the shards and the control plane), store
    into one small cache; the open descriptors never pass budget + threads, and every offset
    is right in memory and on disk."""
    n_threads, n_keys, rounds = 8, 200, 6
    budget(6)
    stores = [store_at(tmp_path, f"p{i}") for i in range(n_threads)]
    expected = [dict() for _ in range(n_threads)]
    peak = [0]
    done = threading.Event()
    errors = []

    def worker(i):
        rng = random.Random(i)
        try:
            for r in range(rounds):
                keys = list(range(n_keys))
                rng.shuffle(keys)
                for k in keys:
                    kind = CONSUMER if k % 3 else GROUP
                    value = r * 1000 + k
                    stores[i].store(kind, k, value)
                    expected[i][(kind, k)] = value
        except Exception as exc:
            errors.append(exc)

    def monitor():
        while not done.is_set():
            peak[0] = max(peak[0], fd_cache_stats()["open"], len(open_offset_files(tmp_path)))

    watcher = threading.Thread(target=monitor)
    watcher.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    assert errors == []
    assert peak[0] <= 6 + n_threads
    assert fd_cache_stats()["open"] <= 6 and fd_cache_stats()["pinned"] == 0
    assert len(open_offset_files(tmp_path)) <= 6
    for i, s in enumerate(stores):
        assert s.offsets == expected[i]
        for (kind, k), value in expected[i].items():
            with open(tmp_path / f"p{i}" / "offsets" / kind / str(k), "rb") as f:
                assert f.read() == record(value)
        s.close()
    assert open_offset_files(tmp_path) == {}


def test_out_of_descriptors_sheds_the_cache(tmp_path, budget):
    """An open failing with EMFILE closes the least recently used cached file and retries."""
    budget(1000)
    s = store_at(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 10, hard))
    try:
        for k in range(50):  # far more keys than descriptors left
            s.store(CONSUMER, k, k)
        assert fd_cache_stats()["open"] < 20  # bounded by the limit, not the budget
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert s.offsets == {(CONSUMER, k): k for k in range(50)}
    s.close()


def test_stored_keys_are_limited_per_kind(tmp_path, budget):
    s = store_at(tmp_path, max_offsets=3)
    assert s.max_offsets == 3
    for k in (1, 2, 3):
        s.store(CONSUMER, k, k)
    with pytest.raises(OffsetStoreError) as exc:
        s.store(CONSUMER, 4, 4)
    assert exc.value.code == ErrorCode.TOO_MANY_CONSUMER_OFFSETS == 3024
    assert s.get(CONSUMER, 4) is None and not (tmp_path / "p" / "offsets" / CONSUMER / "4").exists()
    s.store(CONSUMER, 2, 20)  # existing keys are still updated
    for k in (1, 2, 3):  # groups count on their own
        s.store(GROUP, k, k)
    assert s.count_of(CONSUMER) == 3 and s.count_of(GROUP) == 3
    assert s.delete(CONSUMER, 1)  # delete makes room
    s.store(CONSUMER, 4, 4)
    assert s.count_of(CONSUMER) == 3
    s.close()
    # more keys on disk than a lowered limit: all loaded and updatable, no new one
    t = OffsetStore(str(tmp_path / "p"), max_offsets=2)
    t.load(100)
    assert t.offsets == {
        (CONSUMER, 2): 20,
        (CONSUMER, 3): 3,
        (CONSUMER, 4): 4,
        (GROUP, 1): 1,
        (GROUP, 2): 2,
        (GROUP, 3): 3,
    }
    t.store(CONSUMER, 3, 30)
    with pytest.raises(OffsetStoreError):
        t.store(CONSUMER, 5, 5)
    t.max_offsets = 4  # a public attribute
    t.store(CONSUMER, 5, 5)
    t.close()


def test_default_limit_and_budget_from_configure(tmp_path, budget):
    configure(max_offsets=2)
    assert fd_cache_stats()["max_offsets"] == 2
    s = store_at(tmp_path)
    assert s.max_offsets == 2
    s.store(CONSUMER, 1, 1)
    s.store(CONSUMER, 2, 2)
    with pytest.raises(OffsetStoreError) as exc:
        s.store(CONSUMER, 3, 3)
    assert exc.value.errno == errno.EDQUOT
    s.close()
    with pytest.raises(ValueError):
        configure(max_offsets=0)


def test_open_files_budget():
    assert open_files_budget(10000, 20000) == 2500  # this machine's hard limit
    assert open_files_budget(10000, 1 << 20) == ((1 << 20) - 10000) // 4
    assert open_files_budget(10000, 10500) == 125
    assert open_files_budget(10000, 1024) == 16  # never below the minimum
    assert open_files_budget(10000, resource.RLIM_INFINITY) == ((1 << 30) - 10000) // 4


def test_configured_from_the_limits_keys(budget):
    from iggy.config import ConfigError, load_config
    from iggy.storage.consumer_offsets import configure_from

    cfg = load_config(env={"IGGY_LIMITS_MAX_OPEN_OFFSET_FILES": "5", "IGGY_LIMITS_MAX_CONSUMER_OFFSETS": "7"})
    configure_from(cfg)
    assert fd_cache_stats()["budget"] == 5 and fd_cache_stats()["max_offsets"] == 7
    auto = load_config(env={"IGGY_LIMITS_MAX_CONNECTIONS": "100"})
    assert auto.limits.max_open_offset_files == 0 and auto.limits.max_consumer_offsets == 4096
    configure_from(auto)
    assert fd_cache_stats()["budget"] == open_files_budget(100)
    for env in ({"IGGY_LIMITS_MAX_CONSUMER_OFFSETS": "0"}, {"IGGY_LIMITS_MAX_OPEN_OFFSET_FILES": "-1"}):
        with pytest.raises(ConfigError, match=next(iter(env))):
            load_config(env=env)
