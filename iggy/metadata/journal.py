"""Durable metadata: a checksummed msgpack journal of changes plus a periodic snapshot.

Files under `<system.path>/metadata/`::

    snapshot.bin   b"IGGYSNAP" | u64 seq | u64 xxh3(body) | body = msgpack(state dict)
    journal.log    records back to back, each:
                       u32 LE len      length of body, 1..MAX_RECORD
                       u64 LE xxh3     XXH3-64 of body
                       body            msgpack(record dict), `op` and `seq` among its keys

A record carries `seq`, one more than the previous record's. Startup loads the snapshot and
replays the journal records whose `seq` is newer. A record is acknowledged to the client only
after it has been appended and fsynced, so a crash (`kill -9` or a power cut) loses nothing
acknowledged.

What a crash can leave, and what startup does with it
-----------------------------------------------------
Records are appended one at a time and each is fdatasynced before the next is written, so a
crash can damage at most the last record, and only by leaving it *never completely written*:

* a short record: its header says `len` bytes but the file ends before them (the write was cut);
* a partial header: fewer than 12 bytes after the last whole record;
* a zero-filled tail: the file size grew but the data never reached the disk, so the rest of
  the file reads as zeros. The zeros start at the record's first byte or, inside the record,
  on a 512-byte file offset (a disk sector: storage persists whole sectors, so the unwritten
  part of a record starts on one). Both run to the end of the file.

Such a tail was never acknowledged; it is cut off (the file truncated to the last whole
record) with a WARNING naming the offset. Everything else is corruption of data that was
acknowledged, and startup refuses (`MetadataCorrupt`, one line naming the file and byte
offset) rather than silently drop it:

* a complete record (all `len` bytes present) whose checksum is wrong, unless the zeros
  above explain it;
* a short record when a valid record starts anywhere after it, or when the bytes up to the
  end of the file are the record with a damaged length field (their checksum matches);
* an impossible length (0 or more than MAX_RECORD) that is not part of a zero-filled tail,
  e.g. bytes that no append wrote;
* a record whose checksum matches but whose body is not a record, or whose `seq` is not
  the previous record's plus one (records are missing), or a first record newer than
  `snapshot seq + 1` (the snapshot is older than the journal);
* a snapshot whose magic or checksum is wrong (refuses always: it is the base state).

Stale bytes cannot appear after the end: the journal is only ever appended at the end of the
last whole record, a failed append is truncated back before the next one is written, and the
reset after a snapshot truncates the file to 0 and fsyncs it. (On ext4 `data=writeback` a
power cut may expose stale blocks of other files in the extended size; those are not a record
prefix, so they are refused as corruption rather than trusted.)

`load(repair=True)` (`iggy-server --repair-metadata`) is the operator accepting the loss:
every record before the first bad one is kept, the damaged journal is moved aside to
`journal.log.corrupt-<UTC time>`, the records it drops (every valid one found after the bad
offset) are logged, and `repair(state)` writes the kept state as a new snapshot with an
empty journal.

Every `snapshot_every` records the whole state is written to `snapshot.tmp`, fsynced and
renamed over `snapshot.bin` (atomic), and the journal starts again empty. A crash between the
rename and the journal reset is harmless: replay skips records the snapshot already holds.

msgpack (C extension) is the encoding because it round-trips nested dicts with int keys and
bytes compactly and fast; metadata is never on the data path.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Any, cast

import msgpack

from iggy._core.checksum import xxh3_64
from iggy.metadata.state import Record
from iggy.storage.fsutil import fsync_dir

log = logging.getLogger(__name__)

_SNAP_MAGIC = b"IGGYSNAP"
_SNAP_HEAD = struct.Struct("<8sQQ")
_REC_HEAD = struct.Struct("<IQ")
MAX_RECORD = 64 * 1024 * 1024
SECTOR = 512
REPAIR_HINT = "iggy-server --repair-metadata"


class MetadataCorrupt(RuntimeError):
    """The metadata on disk cannot be trusted: refuse to boot rather than serve wrong metadata."""


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def utc_stamp() -> str:
    """A file-name-safe UTC time (20250102T030405Z), for files and folders set aside."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


# ---------------------------------------------------------------- scanning


@dataclass
class Scan:
    """What a pass over journal.log found (offsets are byte offsets in the file)."""

    records: list[tuple[int, Record]]  # (offset, record) of the whole valid records, in order
    end: int  # end of the last valid record (where appends continue)
    size: int  # file size
    torn: str | None = None  # the tail from `end` was never completely written: why
    bad: int | None = None  # offset of the first corrupt record
    reason: str = ""  # why it is corrupt


def _decode(body: bytes) -> Record | None:
    """The record dict a checksummed body holds, or None when it is not one."""
    try:
        rec = _unpack(body)
    except Exception:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("seq"), int) or not isinstance(rec.get("op"), str):
        return None
    return cast(Record, rec)


def _record_at(raw: bytes, pos: int) -> tuple[Record, int] | None:
    """(record dict, end) of the whole, checksummed record starting at `pos`, or None."""
    if pos + _REC_HEAD.size > len(raw):
        return None
    length, checksum = _REC_HEAD.unpack_from(raw, pos)
    end = pos + _REC_HEAD.size + length
    if not 0 < length <= MAX_RECORD or end > len(raw):
        return None
    body = raw[pos + _REC_HEAD.size : end]
    if xxh3_64(body) != checksum:
        return None
    rec = _decode(body)
    return None if rec is None else (rec, end)


def records_after(raw: bytes, start: int) -> list[tuple[int, Record]]:
    """Every valid record found at an offset >= `start`, resynchronising byte by byte past
    damage: [(offset, record)]. What --repair-metadata reports as dropped, and the proof that
    a bad record is not the last write."""
    found: list[tuple[int, Record]] = []
    pos = start
    while pos + _REC_HEAD.size < len(raw):
        hit = _record_at(raw, pos)
        if hit is None:
            pos += 1
            continue
        found.append((pos, hit[0]))
        pos = hit[1]
    return found


def _zero_tail(zeros_from: int, pos: int, end: int) -> int | None:
    """Where the zero-filled end of the file (it is all zeros from `zeros_from`) starts inside
    the record [pos, end), if its zeros start at pos or on a sector boundary before end."""
    if zeros_from <= pos:
        return pos
    aligned = -(-zeros_from // SECTOR) * SECTOR
    return aligned if aligned < end else None


def scan(raw: bytes, snap_seq: int) -> Scan:
    """Classify journal.log's bytes (see the module docstring for the rules)."""
    out = Scan(records=[], end=0, size=len(raw))
    prev_seq = None
    pos = 0
    size = len(raw)
    head = _REC_HEAD.size
    zeros_from = len(raw.rstrip(b"\0"))  # the file is all zeros from here to its end

    def corrupt(reason: str) -> Scan:
        out.bad, out.reason = pos, reason
        return out

    while pos < size:
        out.end = pos
        if zeros_from <= pos:
            out.torn = f"{size - pos} zero bytes (a zero-filled tail)"
            return out
        if size - pos < head:
            out.torn = f"a partial record header of {size - pos} bytes"
            return out
        length, checksum = _REC_HEAD.unpack_from(raw, pos)
        if not 0 < length <= MAX_RECORD:
            zeros = _zero_tail(zeros_from, pos, pos + head)
            if zeros is not None:  # the header itself is cut by the zero-filled tail
                out.torn = f"a record header zero-filled from offset {zeros} to the end of the file"
                return out
            return corrupt(f"impossible record length {length}")
        end = pos + head + length
        if end > size:
            if xxh3_64(raw[pos + head :]) == checksum:
                return corrupt(
                    f"the length field says {length} bytes but the {size - pos - head} bytes "
                    "to the end of the file are the record"
                )
            later = records_after(raw, pos + 1)
            if later:
                return corrupt(
                    f"a record header claiming {length} bytes, followed by a valid record at offset {later[0][0]}"
                )
            out.torn = f"a short record ({size - pos - head} of {length} body bytes)"
            return out
        body = raw[pos + head : end]
        if xxh3_64(body) != checksum:
            zeros = _zero_tail(zeros_from, pos, end)
            if zeros is not None:
                out.torn = f"a record zero-filled from offset {zeros} to the end of the file"
                return out
            return corrupt(f"checksum mismatch in a complete record of {length} bytes")
        rec = _decode(body)
        if rec is None:
            return corrupt("a checksummed body that is not a record")
        seq = rec["seq"]
        if prev_seq is None and seq > snap_seq + 1:
            return corrupt(
                f"the first record has seq {seq} but the snapshot ends at seq {snap_seq}: "
                f"records {snap_seq + 1}..{seq - 1} are missing"
            )
        if prev_seq is not None and seq != prev_seq + 1:
            return corrupt(f"record seq {seq} follows seq {prev_seq}")
        prev_seq = seq
        out.records.append((pos, rec))
        pos = end
    out.end = pos
    return out


def describe(rec: Record) -> str:
    """`seq 12 stream.create id=3 name='orders'`: a dropped record in the repair log."""
    keys = [k for k in ("stream", "topic", "id", "ids", "name", "username", "user_id") if k in rec]
    return " ".join([f"seq {rec.get('seq')} {rec.get('op')}"] + [f"{k}={rec[k]!r}" for k in keys])


class Journal:
    """Append-only change log with snapshots. Not thread-safe: one writer (the control plane)."""

    def __init__(self, directory: str, snapshot_every: int = 1000):
        self.directory = directory
        self.snapshot_every = max(1, snapshot_every)
        os.makedirs(directory, exist_ok=True)
        self._snap_path = os.path.join(directory, "snapshot.bin")
        self._log_path = os.path.join(directory, "journal.log")
        self.seq = 0
        self._records_since_snapshot = 0
        self._fd: int | None = None
        self._end = 0  # end of the last whole record in journal.log
        self._cut_failed = False  # a failed append could not be cut off again
        self.truncated_bytes = 0
        self._raw = b""  # journal.log as read by load(), kept for a repair
        self._offsets: list[int] = []  # file offset of each record load() returned
        self._snap_seq = 0
        self.damage: tuple[int, str] | None = None  # (offset, reason) being repaired

    @property
    def log_path(self) -> str:
        return self._log_path

    @property
    def snapshot_seq(self) -> int:
        """The seq the loaded snapshot holds (0 without one)."""
        return self._snap_seq

    # ---------------------------------------------------------------- loading

    def load(self, repair: bool = False) -> tuple[dict[str, Any] | None, list[Record]]:
        """Return (snapshot_state or None, [records to replay]).

        A torn tail is cut. Corruption raises MetadataCorrupt, or under `repair` keeps the
        records before it and leaves the journal closed until `repair(state)`. Otherwise the
        journal is open for appends when this returns.
        """
        state = None
        snap_seq = 0
        if os.path.exists(self._snap_path):
            with open(self._snap_path, "rb") as f:
                raw = f.read()
            if len(raw) < _SNAP_HEAD.size:
                raise MetadataCorrupt(
                    f"metadata snapshot {self._snap_path} is truncated ({len(raw)} bytes): "
                    "refusing to start; restore the data directory from a backup"
                )
            magic, snap_seq, checksum = _SNAP_HEAD.unpack_from(raw)
            body = raw[_SNAP_HEAD.size :]
            if magic != _SNAP_MAGIC or xxh3_64(body) != checksum:
                raise MetadataCorrupt(
                    f"metadata snapshot {self._snap_path}: checksum mismatch (offset 0, "
                    f"{len(raw)} bytes): refusing to start; restore the data directory "
                    "from a backup"
                )
            try:
                state = _unpack(body)
            except Exception as exc:
                raise MetadataCorrupt(
                    f"metadata snapshot {self._snap_path} does not decode ({exc}): refusing "
                    "to start; restore the data directory from a backup"
                ) from None
        self.seq = self._snap_seq = snap_seq
        raw = b""
        if os.path.exists(self._log_path):
            with open(self._log_path, "rb") as f:
                raw = f.read()
        found = scan(raw, snap_seq)
        records = []
        for offset, rec in found.records:
            if rec["seq"] > snap_seq:
                records.append(rec)
                self._offsets.append(offset)
                self.seq = rec["seq"]
        self._raw = raw
        self._records_since_snapshot = len(records)
        if found.bad is not None:
            if not repair:
                raise MetadataCorrupt(self.corruption_message(found.bad, found.reason, len(records)))
            self.damage = (found.bad, found.reason)
            return state, records
        if found.torn is not None:
            self.truncated_bytes = found.size - found.end
            log.warning(
                "metadata journal %s: cut a torn tail at offset %d: %s, %d bytes (the last write "
                "before a crash, never acknowledged)",
                self._log_path,
                found.end,
                found.torn,
                self.truncated_bytes,
            )
        self._open_for_append(found.end)
        return state, records

    def corruption_message(self, offset: int, reason: str, kept: int) -> str:
        return (
            f"metadata journal {self._log_path} is corrupt at byte offset {offset} ({reason}): refusing "
            f"to start, acknowledged metadata would be lost. Restore the data directory from a backup, "
            f"or run `{REPAIR_HINT}` to keep the {kept} records before offset {offset} and drop the rest "
            "(the journal is kept as journal.log.corrupt-<time>)"
        )

    def reject_from(self, index: int, reason: str) -> tuple[int, str]:
        """Records[index:] of load() can't be applied: corruption at that record's offset
        (under repair the rest is dropped; else the caller raises corruption_message).
        Returns the damage: (offset, reason)."""
        offset = self._offsets[index]
        self.damage = (offset, reason)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        del self._offsets[index:]
        return self.damage

    def repair(self, state: dict[str, Any], seq: int) -> list[Record]:
        """Set the damaged journal aside, log what it drops, and make `state` (the snapshot plus
        the records kept, up to `seq`) the new snapshot with an empty journal. Returns the
        dropped records that could be read."""
        if self.damage is None:
            raise RuntimeError("repair() without damage found by load()")
        offset, reason = self.damage
        aside = f"{self._log_path}.corrupt-{utc_stamp()}"
        # records the snapshot already holds (left by a crash before a journal reset) are not lost
        dropped = [(pos, rec) for pos, rec in records_after(self._raw, offset) if rec["seq"] > seq]
        log.warning(
            "metadata repair: %s is damaged at byte offset %d (%s); keeping the state up to seq %d, "
            "dropping %d bytes from that offset, which hold %d readable records",
            self._log_path,
            offset,
            reason,
            seq,
            len(self._raw) - offset,
            len(dropped),
        )
        for pos, rec in dropped:
            log.warning("metadata repair: dropped record at offset %d: %s", pos, describe(rec))
        # the kept state is made durable first: a crash before the journal is moved aside
        # leaves the snapshot at `seq` and the same damage after it (a repair runs again)
        self.seq = seq
        self._write_snapshot_file(state)
        os.replace(self._log_path, aside)
        self._open_for_append(0)  # a new, empty journal
        fsync_dir(self.directory)
        self._records_since_snapshot = 0
        log.warning("metadata repair: the damaged journal was moved to %s", aside)
        self.damage = None
        return [rec for _, rec in dropped]

    def _open_for_append(self, end: int) -> None:
        self._raw = b""
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, end)
        os.lseek(self._fd, end, os.SEEK_SET)
        os.fsync(self._fd)
        # a new file (or directory) is on disk only once its directory is fsynced: without
        # this a power cut loses journal.log, or metadata/ itself, with every record in it
        fsync_dir(self.directory)
        fsync_dir(os.path.dirname(os.path.abspath(self.directory)))
        self._end = end

    # ---------------------------------------------------------------- writing

    def append(self, record: Record) -> Record:
        """Stamp `record` with the next seq, write and fsync it. Returns the record.

        Raises OSError when the record can't be written whole and synced (disk full, I/O
        error); whatever part of it reached the file is cut off again, so the next record
        follows the last whole one (a torn record in the middle would be corruption: the next
        start would refuse). When even the cut fails, appends are refused until it succeeds.
        """
        if self._cut_failed:
            self._cut_back()
        record["seq"] = self.seq + 1
        body = _pack(record)
        if len(body) > MAX_RECORD:  # load() would take its length for damage
            raise OSError(errno.EFBIG, f"metadata record of {len(body)} bytes (at most {MAX_RECORD})")
        data = _REC_HEAD.pack(len(body), xxh3_64(body)) + body
        try:
            written = os.write(self._open_fd(), data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write of a journal record ({written} of {len(data)} bytes)")
            os.fdatasync(self._open_fd())
        except OSError:
            try:
                self._cut_back()
            except OSError as exc:
                log.error("metadata journal: cannot cut a failed record: %s", exc)
            raise
        self._end += len(data)
        self.seq += 1
        self._records_since_snapshot += 1
        return record

    def _cut_back(self) -> None:
        self._cut_failed = True
        os.ftruncate(self._open_fd(), self._end)
        os.lseek(self._open_fd(), self._end, os.SEEK_SET)
        self._cut_failed = False

    def _open_fd(self) -> int:
        """journal.log's descriptor: writing before load() or after close() is a bug."""
        if self._fd is None:
            raise RuntimeError("the metadata journal is not open for appends")
        return self._fd

    def should_snapshot(self) -> bool:
        return self._records_since_snapshot >= self.snapshot_every

    def write_snapshot(self, state: dict[str, Any]) -> None:
        self._write_snapshot_file(state)
        fd = self._open_fd()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.fsync(fd)
        self._end = 0
        self._records_since_snapshot = 0

    def _write_snapshot_file(self, state: dict[str, Any]) -> None:
        body = _pack(state)
        tmp = self._snap_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_SNAP_HEAD.pack(_SNAP_MAGIC, self.seq, xxh3_64(body)))
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._snap_path)
        fsync_dir(self.directory)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
