"""pyperf suite of the core pieces on the data path (ECOSYSTEM.md 11).

    python perf/bench_core.py --fast -o perf/results/new.json
    python perf/compare.py perf/baseline.json perf/results/new.json     # exit 1 on a > 20 % slowdown

Benchmarks (each value is one operation):

* frame_parse_1MB            FrameReader: a 1 MB SEND_MESSAGES frame fed in 64 KiB chunks, then next_frame
* frame_parse_small_x1000    FrameReader: 1000 POLL_MESSAGES frames (294 B) fed at once, next_frame x 1000
* batch_validate_1000x1000B  validate_batch of a 1000 x 1000-byte batch (every XXH3 checksum)
* log_append_1000x1000B      PartitionLog.append of that batch to a log in a temp dir (page cache)
* index_seek_read_1000msgs   PartitionLog.read of 1000 messages at scattered offsets of a log of
                             10,000 batches x 10 messages x 100 B (index seek + cut of 2 batches)
* poll_read_1000x1000B       PartitionLog.read of one stored 1000 x 1000-byte batch (W1's poll)

Setup happens inside each time function (bench_time_func), outside the timed loop, so a
pyperf worker only builds what its own benchmark needs.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyperf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from iggy._core.batch import build_batch, validate_batch
from iggy._core.log import PartitionLog
from iggy._core.wire import FrameReader, build_request


def _batch(count: int, size: int) -> bytes:
    payload = os.urandom(size * count)
    return build_batch(
        [(i + 1, payload[i * size : (i + 1) * size], b"") for i in range(count)], origin_timestamp=1
    )


def _send_frame(batch: bytes, count: int) -> bytes:
    meta = (
        b"\x01\x04"
        + struct.pack("<I", 0)
        + b"\x01\x04"
        + struct.pack("<I", 0)
        + b"\x02\x04"
        + struct.pack("<II", 0, count)
    )
    return build_request(160, 0, struct.pack("<I", len(meta)) + meta + batch, session=1, request=1, client=1)


def _poll_frame() -> bytes:
    body = (
        b"\x01\x01\x04"
        + struct.pack("<I", 1)
        + b"\x01\x04"
        + struct.pack("<I", 0)
        + b"\x01\x04"
        + struct.pack("<I", 0)
        + b"\x01"
        + struct.pack("<I", 0)
        + b"\x01"
        + struct.pack("<Q", 0)
        + struct.pack("<I", 1000)
        + b"\x00"
    )
    return build_request(2, 100, body, session=1, request=1, client=1)


def time_frame_parse_1mb(loops: int) -> float:
    frame = _send_frame(_batch(1000, 1000), 1000)
    view = memoryview(frame)
    chunks = [view[i : i + 65536] for i in range(0, len(frame), 65536)]
    reader = FrameReader()
    t0 = time.perf_counter()
    for _ in range(loops):
        for chunk in chunks:
            reader.feed(chunk)
        reader.next_frame()
    return time.perf_counter() - t0


def time_frame_parse_small(loops: int) -> float:
    stream = _poll_frame() * 1000
    reader = FrameReader()
    t0 = time.perf_counter()
    for _ in range(loops):
        reader.feed(stream)
        nxt = reader.next_frame
        while nxt() is not None:
            pass
    return time.perf_counter() - t0


def time_batch_validate(loops: int) -> float:
    batch = _batch(1000, 1000)
    n = len(batch)
    t0 = time.perf_counter()
    for _ in range(loops):
        validate_batch(batch, 0, n, 1000)
    return time.perf_counter() - t0


def time_log_append(loops: int) -> float:
    batch = _batch(1000, 1000)
    n = len(batch)
    root = tempfile.mkdtemp(prefix="iggy-perf-append-")
    try:
        log = PartitionLog(os.path.join(root, "p0"), 0)
        now = time.time_ns() // 1000
        t0 = time.perf_counter()
        for i in range(loops):
            log.append(batch, 0, n, now + i)
        elapsed = time.perf_counter() - t0
        log.close()
        return elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


_LOGS: dict[str, tuple] = {}


def _log_of(name: str, batches: int, count: int, size: int):
    """A log built once per worker process (kept in a temp dir removed at exit)."""
    if name not in _LOGS:
        import atexit

        root = tempfile.mkdtemp(prefix=f"iggy-perf-{name}-")
        atexit.register(shutil.rmtree, root, True)
        log = PartitionLog(os.path.join(root, "p0"), 0)
        batch = _batch(count, size)
        now = time.time_ns() // 1000
        for i in range(batches):
            log.append(batch, 0, len(batch), now + i)
        _LOGS[name] = (root, log)
    return _LOGS[name][1]


def time_index_seek_read(loops: int) -> float:
    log = _log_of("seek", 10_000, 10, 100)
    total = 100_000
    # scattered, not batch-aligned starts (a multiplicative walk over the log)
    starts = [(i * 7919 + 3) % (total - 1000) for i in range(256)]
    t0 = time.perf_counter()
    for i in range(loops):
        log.read(starts[i & 255], 1000)
    return time.perf_counter() - t0


def time_poll_read(loops: int) -> float:
    log = _log_of("poll", 32, 1000, 1000)
    t0 = time.perf_counter()
    for i in range(loops):
        log.read((i & 31) * 1000, 1000)
    return time.perf_counter() - t0


def _commit() -> str:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True, stderr=subprocess.DEVNULL
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    runner = pyperf.Runner()
    runner.metadata["iggy_commit"] = _commit()
    runner.bench_time_func("frame_parse_1MB", time_frame_parse_1mb)
    runner.bench_time_func("frame_parse_small_x1000", time_frame_parse_small)
    runner.bench_time_func("batch_validate_1000x1000B", time_batch_validate)
    runner.bench_time_func("log_append_1000x1000B", time_log_append)
    runner.bench_time_func("index_seek_read_1000msgs", time_index_seek_read)
    runner.bench_time_func("poll_read_1000x1000B", time_poll_read)


if __name__ == "__main__":
    main()
