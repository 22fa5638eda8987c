"""Stored consumer and consumer-group offsets of one partition.

The store itself is `iggy.storage.offset_store.OffsetStore` (Cython, so the io_uring shard can read
and store offsets without the GIL); its docstring has the file layout::

    offsets/consumers/<consumer key>    16 bytes: offset u64 LE | XXH3-64 of those 8 bytes
    offsets/groups/<group id>           same

A consumer key is the numeric consumer id, or XXH32 of the name for a named consumer (as
the reference server does, so offsets stored by name and by number don't mix).

Two limits, set once at start-up by `configure_from(config)` before the partitions open:

* `limits.max_open_offset_files` (0 = auto): descriptors of offset files kept open by the
  process-wide cache (least recently used closed first). Auto is a quarter of what
  RLIMIT_NOFILE leaves after `limits.max_connections` (at least 16), so offset files can
  never take the descriptors that sockets and segment files need.
* `limits.max_consumer_offsets`: keys of each kind (consumers, groups) one partition stores;
  a new key beyond it is refused with 3024 too_many_consumer_offsets. It bounds the files a
  user allowed to poll can create (one per consumer id).
"""

from __future__ import annotations

import logging
import resource
from typing import TYPE_CHECKING

from iggy._core.checksum import xxh32
from iggy.storage.offset_store import OffsetStore, OffsetStoreError, configure, fd_cache_stats

if TYPE_CHECKING:
    from iggy.config import Config

CONSUMER = "consumers"
GROUP = "groups"
MIN_OPEN_FILES = 16

__all__ = [
    "CONSUMER",
    "GROUP",
    "OffsetStore",
    "OffsetStoreError",
    "configure",
    "configure_from",
    "consumer_key",
    "fd_cache_stats",
    "open_files_budget",
]

log = logging.getLogger("iggy.storage.consumer_offsets")


def consumer_key(ident: int | str) -> int:
    """Numeric consumer ids are used as they are; names become XXH32(name)."""
    if isinstance(ident, int):
        return ident
    return xxh32(ident.encode("utf-8"))


def open_files_budget(max_connections: int, nofile: int | None = None) -> int:
    """A quarter of the descriptors RLIMIT_NOFILE (the soft limit, as raised by the server)
    leaves after `max_connections` sockets; at least MIN_OPEN_FILES."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY or nofile > 1 << 30:
        nofile = 1 << 30
    return max(MIN_OPEN_FILES, (nofile - max_connections) // 4)


def configure_from(config: Config) -> None:
    """Apply `limits.max_open_offset_files` and `limits.max_consumer_offsets` (call it after
    raising RLIMIT_NOFILE and before opening the partitions)."""
    limits = config.limits
    budget = limits.max_open_offset_files or open_files_budget(limits.max_connections)
    configure(max_open_files=budget, max_offsets=limits.max_consumer_offsets)
    log.info(
        "consumer offsets: at most %d files open, %d keys per kind and partition", budget, limits.max_consumer_offsets
    )
