"""What the startup check of segments costs: opening a big partition, warm and cold.

Writes one partition of `--gib` GiB (batches of 10 messages of 1,000 bytes, 128 MiB
segments) with PartitionLog directly, then opens it in fresh processes: with the page cache
warm, and cold (the files' pages dropped with POSIX_FADV_DONTNEED first, which touches only
these files). For comparison the same partition with its index files deleted, so that
recovery walks and checksums every byte (what a full verification at startup would cost).
`--baseline PATH` also opens it with the checkout at PATH (built in place), e.g. a tree
without the check.

`python -m tests.reliability.startup_cost --gib 1 [--baseline /path/to/other/checkout]`
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

OPEN = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
from iggy.storage.log import PartitionLog
t0 = time.perf_counter()
lg = PartitionLog(sys.argv[2], 0, 128 << 20)
print(f"{time.perf_counter() - t0:.4f}")
'''
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(directory: str, gib: float) -> dict:
    from iggy.protocol.batch import build_batch
    from iggy.storage.log import PartitionLog

    lg = PartitionLog(directory, 0, 128 << 20)
    batch = build_batch([(i + 1, bytes([65 + i]) * 1000, b"") for i in range(10)])
    ts = 1_700_000_000_000_000
    while lg.size_bytes < gib * (1 << 30):
        ts += 1
        lg.append(batch, 0, len(batch), ts)
    out = {
        "bytes": lg.size_bytes,
        "messages": lg.next_offset,
        "batches": lg.next_offset // 10,
        "segments": lg.segments_count,
    }
    lg.close()
    return out


def evict(directory: str) -> None:
    for path in glob.glob(os.path.join(directory, "*")):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def open_seconds(root: str, directory: str, cold: bool) -> float:
    if cold:
        evict(directory)
    out = subprocess.run(
        [sys.executable, "-c", OPEN, root, directory],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    return float(out.stdout.strip())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline", help="another checkout to open the same partition with")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="iggy-startup-") as tmp:
        directory = os.path.join(tmp, "p")
        stats = {"partition": write(directory, args.gib)}
        roots = {"this checkout": REPO}
        if args.baseline:
            roots["baseline"] = os.path.abspath(args.baseline)
        for name, root in roots.items():
            open_seconds(root, directory, False)
            stats[name] = {
                "warm_open_s": min(open_seconds(root, directory, False) for _ in range(args.runs)),
                "cold_open_s": min(open_seconds(root, directory, True) for _ in range(args.runs)),
            }
        for path in glob.glob(os.path.join(directory, "*.index")):
            os.unlink(path)
        stats["full walk, cold (index files deleted)"] = open_seconds(REPO, directory, True)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
