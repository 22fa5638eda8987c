"""pyperf suite of the core pieces on the data path (ECOSYSTEM.md 11), with its calibration.

CI (scripts/test.sh) runs the quick form and the gate (~13 s idle, ~20 s under load):

    python perf/bench_core.py --quick -q --append /tmp/new.json
    python perf/compare.py perf/baseline.json /tmp/new.json    # exit 1 on a regression
    # on exit 1 only: one more quick run appended to /tmp/new.json, then compare.py again

perf/baseline.json is re-recorded (on the CI machine) with exactly

    rm -f perf/baseline.json
    for i in 1 2 3; do python perf/bench_core.py --quick -q --append perf/baseline.json; done

(three quick runs merged: the gate compares minimums, and more values put the baseline's minimum
closer to the undisturbed time).

(`--quick` = 2 passes over the suite, each `--processes 2 --values 6 --warmups 1 --loops 1`,
appended to the output file; `--fast` and `--rigorous` work as in pyperf, in one pass.)

Benchmarks (each value is one operation):

* frame_parse_1MB            FrameReader: a 1 MB SEND_MESSAGES frame fed in 64 KiB chunks, then next_frame
* frame_parse_small_x1000    FrameReader: 1000 POLL_MESSAGES frames (294 B) fed at once, next_frame x 1000
* batch_validate_1000x1000B  validate_batch of a 1000 x 1000-byte batch (every XXH3 checksum)
* log_append_1000x1000B      PartitionLog.append of that batch to a log in a temp dir (page cache)
* index_seek_read_1000msgs   PartitionLog.read of 1000 messages at scattered offsets of a log of
                             10,000 batches x 10 messages x 100 B (index seek + cut of 2 batches)
* poll_read_1000x1000B       PartitionLog.read of one stored 1000 x 1000-byte batch (W1's poll)

Calibration workloads (stdlib only, so no change to this repository can change their speed; they
measure the machine, and compare.py divides every benchmark by them, see there):

* calibration_hash_copy      blake2b + crc32 + a bytearray copy of a fixed 256 KiB buffer (C code, memory)
* calibration_py_loop        a small pure-Python loop (dict get/set, int arithmetic, str of ints)
* calibration_file_io        16 x os.pwrite then 16 x os.pread of 64 KiB in a temp file (page-cache syscalls)

Clock: `--clock cpu` (default) times with time.process_time, the CPU time of the worker (user +
system, so the page-cache copies of append and read count), which does not grow while another
process holds the CPU: the main noise on a shared machine. `--clock wall` uses time.perf_counter
(pyperf's usual clock); it also sees waiting (an added fsync or sleep) but is far noisier here.
The clock is saved in the suite's metadata (`iggy_clock`) and compare.py refuses to mix them.

Setup happens inside each time function (bench_time_func), outside the timed loop, so a
pyperf worker only builds what its own benchmark needs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pyperf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from iggy.bench.client import numeric_id, poll_body
from iggy.protocol.batch import build_batch, validate_batch
from iggy.protocol.wire import FrameReader, build_request
from iggy.storage.log import PartitionLog

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
CLOCK = CLOCKS["cpu"]  # set from --clock in main(), in the parent and in every worker

# `--quick`: what CI runs. QUICK_PASSES passes over the whole suite, each a child process
# running pyperf with QUICK_ARGS (2 worker processes x 6 values per benchmark after 1 warmup,
# one loop of OPS_PER_LOOP operations, ~20 ms, per value) and appending to the output file.
# Two passes rather than one pass of 4 workers spread each benchmark's values over two moments
# ~7 s apart: on the shared machine slowdowns of 1.3-1.8x that hit one benchmark and not the
# calibration come and go over seconds (perf/README.md, "Noise and threshold"), and the gate
# takes the minimum of all values.
QUICK_PASSES = 2
QUICK_ARGS = ["--processes", "2", "--values", "6", "--warmups", "1", "--loops", "1"]


def _batch(count: int, size: int) -> bytes:
    payload = os.urandom(size * count)
    return build_batch([(i + 1, payload[i * size : (i + 1) * size], b"") for i in range(count)], origin_timestamp=1)


def _send_frame(batch: bytes, count: int) -> bytes:
    # stream and topic ids, partitioning by partition id (kind 2, 4 bytes) 0, message count
    meta = numeric_id(0) + numeric_id(0) + b"\x02\x04" + struct.pack("<II", 0, count)
    return build_request(160, 0, struct.pack("<I", len(meta)) + meta + batch, session=1, request=1, client=1)


def _poll_frame() -> bytes:
    return build_request(2, 100, poll_body(1, 0, 0, 0, 0, 1000), session=1, request=1, client=1)


def time_frame_parse_1mb(loops: int) -> float:
    frame = _send_frame(_batch(1000, 1000), 1000)
    view = memoryview(frame)
    chunks = [view[i : i + 65536] for i in range(0, len(frame), 65536)]
    reader = FrameReader()
    t0 = CLOCK()
    for _ in range(loops):
        for chunk in chunks:
            reader.feed(chunk)
        reader.next_frame()
    return CLOCK() - t0


def time_frame_parse_small(loops: int) -> float:
    stream = _poll_frame() * 1000
    reader = FrameReader()
    t0 = CLOCK()
    for _ in range(loops):
        reader.feed(stream)
        nxt = reader.next_frame
        while nxt() is not None:
            pass
    return CLOCK() - t0


def time_batch_validate(loops: int) -> float:
    batch = _batch(1000, 1000)
    n = len(batch)
    t0 = CLOCK()
    for _ in range(loops):
        validate_batch(batch, 0, n, 1000)
    return CLOCK() - t0


def time_log_append(loops: int) -> float:
    batch = _batch(1000, 1000)
    n = len(batch)
    root = tempfile.mkdtemp(prefix="iggy-perf-append-")
    try:
        log = PartitionLog(os.path.join(root, "p0"), 0)
        now = time.time_ns() // 1000
        t0 = CLOCK()
        for i in range(loops):
            log.append(batch, 0, n, now + i)
        elapsed = CLOCK() - t0
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
    t0 = CLOCK()
    for i in range(loops):
        log.read(starts[i & 255], 1000)
    return CLOCK() - t0


def time_poll_read(loops: int) -> float:
    log = _log_of("poll", 32, 1000, 1000)
    t0 = CLOCK()
    for i in range(loops):
        log.read((i & 31) * 1000, 1000)
    return CLOCK() - t0


# --------------------------------------------------------------------------- calibration
# Fixed stdlib workloads: they never import iggy, so they time the machine, not our code.

_CAL_BUF = bytes(range(256)) * 1024  # 256 KiB, the same bytes every run


def time_calibration_hash_copy(loops: int) -> float:
    buf = _CAL_BUF
    t0 = CLOCK()
    for _ in range(loops):
        hashlib.blake2b(buf).digest()
        zlib.crc32(bytearray(buf))
    return CLOCK() - t0


def _py_loop() -> int:
    d: dict[int, int] = {}
    total = 0
    for i in range(3000):
        k = i & 63
        d[k] = d.get(k, 0) + i * 3
        total += len(str(i))
    return total


def time_calibration_py_loop(loops: int) -> float:
    t0 = CLOCK()
    for _ in range(loops):
        _py_loop()
    return CLOCK() - t0


def time_calibration_file_io(loops: int) -> float:
    chunk = _CAL_BUF[:65536]
    fd, path = tempfile.mkstemp(prefix="iggy-perf-cal-")
    try:
        t0 = CLOCK()
        for _ in range(loops):
            for i in range(16):
                os.pwrite(fd, chunk, i * 65536)
            for i in range(16):
                os.pread(fd, 65536, i * 65536)
        return CLOCK() - t0
    finally:
        os.close(fd)
        os.unlink(path)


def _commit() -> str:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True, stderr=subprocess.DEVNULL
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# in run order: the calibration spread through the run, so a change of load during it averages out
SUITE = [
    ("calibration_hash_copy", time_calibration_hash_copy),
    ("frame_parse_1MB", time_frame_parse_1mb),
    ("frame_parse_small_x1000", time_frame_parse_small),
    ("batch_validate_1000x1000B", time_batch_validate),
    ("calibration_py_loop", time_calibration_py_loop),
    ("log_append_1000x1000B", time_log_append),
    ("index_seek_read_1000msgs", time_index_seek_read),
    ("poll_read_1000x1000B", time_poll_read),
    ("calibration_file_io", time_calibration_file_io),
]
# operations per pyperf loop (pyperf's inner_loops: values stay per operation), ~20 ms on the
# CI box, so that --quick can pass `--loops 1` and skip pyperf's loop-calibration process (a third
# of the processes, and of the time under load). --fast / --rigorous calibrate loops on top.
OPS_PER_LOOP = {
    "calibration_hash_copy": 64,
    "frame_parse_1MB": 400,
    "frame_parse_small_x1000": 256,
    "batch_validate_1000x1000B": 400,
    "calibration_py_loop": 48,
    "log_append_1000x1000B": 96,
    "index_seek_read_1000msgs": 600,
    "poll_read_1000x1000B": 160,
    "calibration_file_io": 256,
}


def _pass_clock(cmd: list[str], args) -> None:
    cmd.extend(["--clock", args.clock])


def _quick(argv: list[str]) -> int:
    """Run QUICK_PASSES passes of the suite, each `this script QUICK_ARGS argv --append OUT`."""
    out, mode, rest = None, None, []
    args = iter(argv)
    for arg in args:
        key, eq, value = arg.partition("=")
        if key in ("-o", "--output", "--append"):
            out, mode = (value if eq else next(args, None)), key
            if out is None:
                print(f"{key} needs a file name", file=sys.stderr)
                return 2
        else:
            rest.append(arg)
    if mode in ("-o", "--output") and os.path.exists(out):
        print(f"ERROR: the JSON file {out!r} already exists", file=sys.stderr)
        return 2
    for _ in range(QUICK_PASSES):
        cmd = [sys.executable, os.path.abspath(__file__), *QUICK_ARGS, *rest]
        if out is not None:
            cmd += ["--append", out]
        rc = subprocess.call(cmd)
        if rc:
            return rc
    return 0


def main(argv: list[str] | None = None) -> int:
    global CLOCK
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--quick" in argv:
        argv.remove("--quick")
        return _quick(argv)
    runner = pyperf.Runner(add_cmdline_args=_pass_clock)
    runner.argparser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: process CPU time (default, robust on a shared machine); wall: perf_counter",
    )
    runner.argparser.add_argument(
        "--quick",
        action="store_true",
        help=f"CI's short run: {QUICK_PASSES} passes of {' '.join(QUICK_ARGS)}, appended to -o/--append",
    )
    args = runner.parse_args(argv)
    CLOCK = CLOCKS[args.clock]
    runner.metadata["iggy_commit"] = _commit()
    runner.metadata["iggy_clock"] = args.clock
    for name, func in SUITE:
        n = OPS_PER_LOOP[name]
        runner.bench_time_func(name, lambda loops, f=func, n=n: f(loops * n), inner_loops=n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
