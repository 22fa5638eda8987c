"""A partition's leader epochs: which leader's log each range of offsets came from (cluster mode).

One record per epoch in which this node's copy of the partition took batches: `(epoch, start)`,
where `start` is the first offset this node holds from that epoch. Epochs and starts only grow
(two records may share a start: an epoch that added nothing). The offsets of a record run up to
the start of the next one, the last record's up to the log's end. The epoch is the etcd
create_revision of the `leader` key (iggy.cluster.election).

What a record promises: this node's log up to the end of the record's range is a prefix of
the log the leader of that epoch had while it led. The leader records `(epoch, its end)` once
it has reconciled the partition in a new epoch (before its first append in it); a follower
records the epoch carried by the BATCH frames it appends, and `(epoch, end)` once the leader
told it where to cut its log (iggy.cluster.replication). Two copies that share an epoch
therefore agree on every offset below the smaller of their ends of that epoch: comparing
these records, not offsets alone, finds where two logs diverge (docs/CLUSTER.md, "Truncation").

The file `leader-epochs` in the partition directory, little-endian::

    0   8 bytes  magic b"IGGYLEP1"
    8   u32      n, the number of records
   12   n x 16   records: u64 epoch, u64 start offset (epochs strictly increasing, starts
                 non-decreasing)
   12 + 16 n     u32 CRC-32 (zlib.crc32) of every byte before it

It is rewritten whole at each change: written to `leader-epochs.tmp`, fdatasync'ed, renamed
over the file, then the directory is fsynced, so a crash leaves the old or the new file, never a
torn one (a `leader-epochs.tmp` left by a crash is never read, and the next write truncates it).
A missing file is no records (a single node never writes one). A file that does not check out
(size, magic, CRC, order) raises LeaderEpochsCorrupt: the server refuses to start with a message
that names the file, like a damaged metadata journal, rather than guess which log a range came
from.

Many files in one pass (`write_all`). An election changes one record in every partition, on the
new leader (`_make_ready` of each partition once the followers' offers are in) and on each
follower (one TRUNCATE per partition), so a node with thousands of partitions wrote thousands
of files one after the other, each waiting for its own two journal commits on the main loop.
A change made with `defer=True` only updates `records` in memory and leaves the file `pending`;
`write_all` then writes every pending file of a pass the same way as above, in four steps: each
tmp file written and fdatasync'ed, then every rename, then every directory fsynced, the syncs
of each step issued together from a pool of threads. The promise per file is unchanged (the old
or the new records after a crash; each file written once per pass, its newest records), and
the caller keeps the order that matters: a leader serves a partition only after the pass that
holds its record returned, a follower ACKs a TRUNCATE only after it (`FollowerLog.acks`) and
appends a batch to a partition only once its records are on disk (`flush`). What makes it
cheaper: on ext4 (jbd2) and xfs (its log) concurrent fsyncs join the same journal commit, so
thousands issued together cost a few commits and device flushes instead of two each.

Why not `syncfs(2)` of the data directory's file system: it writes back every dirty page of
that file system, not only these files: the segments of `replicated` topics, which are left to
the page cache on purpose (docs/CLUSTER.md), and any other process's files on the same mount,
so an election would pay for all of them; and before Linux 5.8 it did not report writeback
errors, so a failed write of a record could go unseen. fdatasync of each file reports its own
errors and flushes only what the pass wrote.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from iggy.storage.fsutil import fsync_dir

FILE_NAME = "leader-epochs"
MAGIC = b"IGGYLEP1"
_HEAD = struct.Struct("<8sI")
_RECORD = struct.Struct("<QQ")
_CRC = struct.Struct("<I")
_J = TypeVar("_J")
SYNC_THREADS = 16  # fsyncs of one pass of write_all in flight at once


class LeaderEpochsCorrupt(RuntimeError):
    """A damaged leader-epoch file: the server refuses to start."""


class LeaderEpochs:
    def __init__(self, directory: str):
        self.path = os.path.join(directory, FILE_NAME)
        self.records: list[tuple[int, int]] = _load(self.path)
        self._on_disk = self.records  # what the file holds (the same list when nothing is pending)

    @property
    def last_epoch(self) -> int:
        """The newest epoch recorded (0: none)."""
        return self.records[-1][0] if self.records else 0

    @property
    def pending(self) -> bool:
        """`records` changed with `defer=True` and is not written yet (`flush`, `write_all`)."""
        return self.records is not self._on_disk

    def record(self, epoch: int, start: int, defer: bool = False) -> None:
        """Offsets from `start` on come from `epoch` (no change when it is already the newest).
        `defer`: in memory only, until `flush` or `write_all`."""
        if self.records and epoch <= self.records[-1][0]:
            if epoch < self.records[-1][0]:
                raise ValueError(f"epoch {epoch} below the newest recorded ({self.records[-1][0]})")
            return
        if self.records and start < self.records[-1][1]:
            raise ValueError(f"epoch {epoch} from offset {start}, below the newest record's start")
        self._change([*self.records, (epoch, start)], defer)

    def truncate(self, end: int, defer: bool = False) -> None:
        """The log was cut at `end`: records whose range starts at or past it go."""
        kept = [r for r in self.records if r[1] < end]
        if kept != self.records:
            self._change(kept, defer)

    def clear(self) -> None:
        """The log was purged (it starts again at offset 0)."""
        if self.records:
            self._change([], False)

    def flush(self) -> None:
        """Write `records` if a deferred change is pending."""
        if self.pending:
            write_all([self])

    def _change(self, records: list[tuple[int, int]], defer: bool) -> None:
        self.records = records
        if not defer:
            write_all([self])


def write_all(files: Iterable[LeaderEpochs]) -> None:
    """Write every pending file of `files` (each once, its newest records), durably (module
    docstring). On an OSError the files not renamed yet are back to the records they hold on
    disk (their deferred changes are dropped) and the error is raised."""
    todo = list({id(f): f for f in files if f.pending}.values())
    if not todo:
        return
    data = [(f, f.records, _encode(f.records)) for f in todo]
    renamed: list[tuple[LeaderEpochs, list[tuple[int, int]]]] = []
    pool = ThreadPoolExecutor(min(SYNC_THREADS, len(todo))) if len(todo) > 1 else None

    def each(fn: Callable[[_J], None], jobs: list[_J]) -> None:
        for _ in pool.map(fn, jobs) if pool is not None else map(fn, jobs):
            pass

    try:
        each(_write_tmp, [(f.path, b) for f, _, b in data])
        for f, records, _ in data:
            os.replace(f.path + ".tmp", f.path)
            renamed.append((f, records))
        each(fsync_dir, sorted({os.path.dirname(f.path) for f in todo}))
    finally:
        if pool is not None:
            pool.shutdown()
        done = {id(f) for f, _ in renamed}
        for f, records in renamed:
            f._on_disk = f.records = records
        for f in todo:
            if id(f) not in done:
                f.records = f._on_disk


def _encode(records: list[tuple[int, int]]) -> bytes:
    data = _HEAD.pack(MAGIC, len(records)) + b"".join(_RECORD.pack(e, s) for e, s in records)
    return data + _CRC.pack(zlib.crc32(data))


def _write_tmp(job: tuple[str, bytes]) -> None:
    path, data = job
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def end_of(records: list[tuple[int, int]], epoch: int, log_end: int) -> int:
    """Where `epoch`'s range ends in a log described by `records` and ending at `log_end`:
    the start of the first record of a later epoch, else the log's end."""
    for e, start in records:
        if e > epoch:
            return min(start, log_end)
    return log_end


def divergence(mine: list[tuple[int, int]], my_end: int, theirs: list[tuple[int, int]], their_end: int) -> int:
    """The offset below which two copies of a partition are known to be equal: the smaller of
    their ends of the newest epoch both have records of (0 when they share none)."""
    shared = {e for e, _ in mine} & {e for e, _ in theirs}
    if not shared:
        return 0
    epoch = max(shared)
    return min(end_of(mine, epoch, my_end), end_of(theirs, epoch, their_end))


def _load(path: str) -> list[tuple[int, int]]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []

    def bad(why: str) -> LeaderEpochsCorrupt:
        return LeaderEpochsCorrupt(
            f"storage: the leader-epoch file {path} is damaged ({why}): refusing to start; "
            "restore it, or remove the partition's copy on this node so it is copied again from the leader"
        )

    if len(data) < _HEAD.size + _CRC.size:
        raise bad(f"{len(data)} bytes")
    magic, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise bad("not a leader-epoch file")
    if len(data) != _HEAD.size + n * _RECORD.size + _CRC.size:
        raise bad(f"{len(data)} bytes for {n} records")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if crc != zlib.crc32(data[: -_CRC.size]):
        raise bad("checksum mismatch")
    records = [_RECORD.unpack_from(data, _HEAD.size + i * _RECORD.size) for i in range(n)]
    for (e0, s0), (e1, s1) in itertools.pairwise(records):
        if e1 <= e0 or s1 < s0:
            raise bad(f"record ({e1}, {s1}) does not follow ({e0}, {s0})")
    return [(int(e), int(s)) for e, s in records]
