"""Stored consumer and consumer-group offsets of one partition.

Layout under the partition directory::

    offsets/consumers/<consumer key>    16 bytes: offset u64 LE | XXH3-64 of those 8 bytes
    offsets/groups/<group id>           same

A consumer key is the numeric consumer id, or XXH32 of the name for a named consumer (as
the reference server does, so offsets stored by name and by number don't mix). A store
overwrites the 16 bytes in place; the checksum tells a torn write from a good one, and a torn
or corrupt file is reported and ignored at start. A recovered offset above the partition's
current offset is clamped down to it (messages may have been lost from an unsynced tail).
With `persisted` consumer-offset durability each store is fsynced before it is acknowledged.
"""
from __future__ import annotations

import logging
import os
import struct

import xxhash

log = logging.getLogger(__name__)

_RECORD = struct.Struct("<QQ")
CONSUMER = "consumers"
GROUP = "groups"


def consumer_key(ident) -> int:
    """Numeric consumer ids are used as they are; names become XXH32(name)."""
    if isinstance(ident, int):
        return ident
    return xxhash.xxh32_intdigest(ident.encode("utf-8"))


class OffsetStore:
    def __init__(self, partition_dir: str, fsync: bool = False):
        self.root = os.path.join(partition_dir, "offsets")
        self.fsync = fsync
        self.offsets: dict[tuple[str, int], int] = {}
        for kind in (CONSUMER, GROUP):
            os.makedirs(os.path.join(self.root, kind), exist_ok=True)

    def load(self, current_offset: int | None) -> None:
        """Read every stored offset; `current_offset` None means the partition is empty."""
        for kind in (CONSUMER, GROUP):
            directory = os.path.join(self.root, kind)
            for name in os.listdir(directory):
                if not name.isdigit():
                    continue
                path = os.path.join(directory, name)
                with open(path, "rb") as f:
                    raw = f.read()
                if len(raw) == 16:
                    offset, checksum = _RECORD.unpack(raw)
                    if xxhash.xxh3_64_intdigest(raw[:8]) != checksum:
                        log.warning("corrupt consumer offset file %s ignored", path)
                        continue
                elif len(raw) == 8:  # legacy record without checksum
                    offset = struct.unpack("<Q", raw)[0]
                else:
                    log.warning("torn consumer offset file %s ignored", path)
                    continue
                if current_offset is None:
                    continue
                self.offsets[(kind, int(name))] = min(offset, current_offset)

    def get(self, kind: str, key: int) -> int | None:
        return self.offsets.get((kind, key))

    def store(self, kind: str, key: int, offset: int) -> None:
        raw = struct.pack("<Q", offset)
        record = raw + struct.pack("<Q", xxhash.xxh3_64_intdigest(raw))
        path = os.path.join(self.root, kind, str(key))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, record, 0)
            if self.fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        self.offsets[(kind, key)] = offset

    def delete(self, kind: str, key: int) -> bool:
        if self.offsets.pop((kind, key), None) is None:
            return False
        try:
            os.unlink(os.path.join(self.root, kind, str(key)))
        except FileNotFoundError:
            pass
        return True

    def clear(self) -> None:
        for kind, key in list(self.offsets):
            self.delete(kind, key)

    def lowest(self) -> int | None:
        """The lowest stored offset of anyone (the retention barrier), None if none stored."""
        return min(self.offsets.values()) if self.offsets else None
