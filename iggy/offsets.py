"""Stored consumer and consumer-group offsets of one partition.

The store itself is `iggy._core.offsets.OffsetStore` (Cython, so the io_uring shard can read
and store offsets without the GIL); its docstring has the file layout::

    offsets/consumers/<consumer key>    16 bytes: offset u64 LE | XXH3-64 of those 8 bytes
    offsets/groups/<group id>           same

A consumer key is the numeric consumer id, or XXH32 of the name for a named consumer (as
the reference server does, so offsets stored by name and by number don't mix).
"""
from __future__ import annotations

import xxhash

from iggy._core.offsets import OffsetStore

CONSUMER = "consumers"
GROUP = "groups"

__all__ = ["CONSUMER", "GROUP", "OffsetStore", "consumer_key"]


def consumer_key(ident) -> int:
    """Numeric consumer ids are used as they are; names become XXH32(name)."""
    if isinstance(ident, int):
        return ident
    return xxhash.xxh32_intdigest(ident.encode("utf-8"))
