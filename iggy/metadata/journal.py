"""Durable metadata: a checksummed msgpack journal of changes plus a periodic snapshot.

Files under `<system.path>/metadata/`::

    snapshot.bin   b"IGGYSNAP" | u64 seq | u64 xxh3(body) | body = msgpack(state dict)
    journal.log    records, each  u32 len | u64 xxh3(body) | body = msgpack(record dict)

A record carries `seq`, one more than the previous record's. Startup loads the snapshot and
replays the journal records whose `seq` is newer. A record is acknowledged to the client only
after it has been appended and fsynced, so a `kill -9` loses nothing acknowledged; a torn or
corrupt tail (the write that was cut by the crash) is cut off and never applied.

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

import msgpack
import xxhash

log = logging.getLogger(__name__)

_SNAP_MAGIC = b"IGGYSNAP"
_SNAP_HEAD = struct.Struct("<8sQQ")
_REC_HEAD = struct.Struct("<IQ")
MAX_RECORD = 64 * 1024 * 1024


class MetadataCorrupt(RuntimeError):
    """The snapshot cannot be trusted: refuse to boot rather than serve wrong metadata."""


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(raw: bytes):
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        self._end = 0                 # end of the last whole record in journal.log
        self.truncated_bytes = 0

    # ---------------------------------------------------------------- loading

    def load(self):
        """Return (snapshot_state or None, [records to replay]) and open the journal for appends."""
        state = None
        snap_seq = 0
        if os.path.exists(self._snap_path):
            with open(self._snap_path, "rb") as f:
                raw = f.read()
            if len(raw) < _SNAP_HEAD.size:
                raise MetadataCorrupt(f"{self._snap_path}: truncated snapshot")
            magic, snap_seq, checksum = _SNAP_HEAD.unpack_from(raw)
            body = raw[_SNAP_HEAD.size:]
            if magic != _SNAP_MAGIC or xxhash.xxh3_64_intdigest(body) != checksum:
                raise MetadataCorrupt(f"{self._snap_path}: checksum mismatch")
            state = _unpack(body)
        self.seq = snap_seq
        records = []
        good_end = 0
        if os.path.exists(self._log_path):
            with open(self._log_path, "rb") as f:
                raw = f.read()
            pos = 0
            while pos + _REC_HEAD.size <= len(raw):
                length, checksum = _REC_HEAD.unpack_from(raw, pos)
                start = pos + _REC_HEAD.size
                end = start + length
                if length > MAX_RECORD or end > len(raw):
                    break
                body = raw[start:end]
                if xxhash.xxh3_64_intdigest(body) != checksum:
                    break
                try:
                    rec = _unpack(body)
                except Exception:  # a checksummed body that doesn't decode is a bug, not a crash
                    break
                if rec.get("seq", 0) > self.seq:
                    records.append(rec)
                    self.seq = rec["seq"]
                pos = end
                good_end = end
            if good_end < len(raw):
                self.truncated_bytes = len(raw) - good_end
                log.warning("metadata journal: cut a torn tail of %d bytes", self.truncated_bytes)
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self._fd, good_end)
        os.lseek(self._fd, good_end, os.SEEK_SET)
        os.fsync(self._fd)
        # a new file (or directory) is on disk only once its directory is fsynced: without
        # this a power cut loses journal.log, or metadata/ itself, with every record in it
        _fsync_dir(self.directory)
        _fsync_dir(os.path.dirname(os.path.abspath(self.directory)))
        self._end = good_end
        self._records_since_snapshot = len(records)
        return state, records

    # ---------------------------------------------------------------- writing

    def append(self, record: dict) -> dict:
        """Stamp `record` with the next seq, write and fsync it. Returns the record.

        Raises OSError when the record can't be written whole and synced (disk full, I/O
        error); whatever part of it reached the file is cut off again, so the next record
        follows the last whole one (a torn record in the middle would end the replay there
        and lose every record after it).
        """
        record["seq"] = self.seq + 1
        body = _pack(record)
        data = _REC_HEAD.pack(len(body), xxhash.xxh3_64_intdigest(body)) + body
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"short write of a journal record ({written} of {len(data)} bytes)")
            os.fdatasync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, self._end)
                os.lseek(self._fd, self._end, os.SEEK_SET)
            except OSError as exc:
                log.error("metadata journal: cannot cut a failed record: %s", exc)
            raise
        self._end += len(data)
        self.seq += 1
        self._records_since_snapshot += 1
        return record

    def should_snapshot(self) -> bool:
        return self._records_since_snapshot >= self.snapshot_every

    def write_snapshot(self, state: dict) -> None:
        body = _pack(state)
        tmp = self._snap_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_SNAP_HEAD.pack(_SNAP_MAGIC, self.seq, xxhash.xxh3_64_intdigest(body)))
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._snap_path)
        _fsync_dir(self.directory)
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.fsync(self._fd)
        self._end = 0
        self._records_since_snapshot = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
