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
torn one. A missing file is no records (a single node never writes one). A file that does not
check out (size, magic, CRC, order) raises LeaderEpochsCorrupt: the server refuses to start
with a message that names the file, like a damaged metadata journal, rather than guess which
log a range came from.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib

from iggy.storage.fsutil import fsync_dir

FILE_NAME = "leader-epochs"
MAGIC = b"IGGYLEP1"
_HEAD = struct.Struct("<8sI")
_RECORD = struct.Struct("<QQ")
_CRC = struct.Struct("<I")


class LeaderEpochsCorrupt(RuntimeError):
    """A damaged leader-epoch file: the server refuses to start."""


class LeaderEpochs:
    def __init__(self, directory: str):
        self.path = os.path.join(directory, FILE_NAME)
        self.records: list[tuple[int, int]] = _load(self.path)

    @property
    def last_epoch(self) -> int:
        """The newest epoch recorded (0: none)."""
        return self.records[-1][0] if self.records else 0

    def record(self, epoch: int, start: int) -> None:
        """Offsets from `start` on come from `epoch` (no change when it is already the newest)."""
        if self.records and epoch <= self.records[-1][0]:
            if epoch < self.records[-1][0]:
                raise ValueError(f"epoch {epoch} below the newest recorded ({self.records[-1][0]})")
            return
        if self.records and start < self.records[-1][1]:
            raise ValueError(f"epoch {epoch} from offset {start}, below the newest record's start")
        self._write([*self.records, (epoch, start)])

    def truncate(self, end: int) -> None:
        """The log was cut at `end`: records whose range starts at or past it go."""
        kept = [r for r in self.records if r[1] < end]
        if kept != self.records:
            self._write(kept)

    def clear(self) -> None:
        """The log was purged (it starts again at offset 0)."""
        if self.records:
            self._write([])

    def _write(self, records: list[tuple[int, int]]) -> None:
        data = _HEAD.pack(MAGIC, len(records)) + b"".join(_RECORD.pack(e, s) for e, s in records)
        data += _CRC.pack(zlib.crc32(data))
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(os.path.dirname(self.path))
        self.records = records


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
