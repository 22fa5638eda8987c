"""Retention: delete whole sealed segments by age (message_expiry) and by size (max_topic_size).

Rules (SEMANTICS 8.6), per partition, oldest sealed segment first, never the active one:

* expiry: a sealed segment goes when `newest timestamp + message_expiry <= now`;
* size: the topic cap is split evenly over its partitions, but a partition may always keep
  `segment_size + 64 MiB`; the oldest sealed segments go while the partition is above it;
* consumer barrier: a segment whose last offset is above the lowest offset any consumer or
  consumer group stored on that partition is kept (nobody stored anything: no barrier).

The decision is made here in Python from one summary row per segment; deleting is a file
operation of the partition log, so no message is touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane
    from iggy.storage.partitions import Partition

log = logging.getLogger(__name__)

U64_MAX = 0xFFFFFFFFFFFFFFFF
MAX_SEGMENTS_PER_PASS = 16
SIZE_SLACK = 64 * 1024 * 1024


def segments_to_delete(
    segments: Sequence[tuple[int, int, int, int, bool]],
    settings: Mapping[str, int],
    partitions_count: int,
    barrier: int | None,
    now_us: int,
) -> list[int]:
    """Base offsets of the sealed segments to delete, oldest first.

    `segments` rows are (base_offset, last_offset, size_bytes, max_timestamp, is_active) in
    offset order; `barrier` is the lowest stored consumer offset or None.
    """
    expiry = settings["message_expiry"]
    cap = settings["max_topic_size"]
    sealed = [s for s in segments if not s[4]]
    total = sum(s[2] for s in segments)
    budget = None
    if cap not in (0, U64_MAX) and partitions_count:
        budget = max(cap // partitions_count, settings["segment_size"] + SIZE_SLACK)
    doomed: list[int] = []
    for base, last, size, max_ts, _ in sealed:
        if len(doomed) >= MAX_SEGMENTS_PER_PASS:
            break
        if barrier is not None and last > barrier:
            break
        expired = expiry not in (0, U64_MAX) and max_ts and max_ts + expiry <= now_us
        oversized = budget is not None and total > budget
        if not (expired or oversized):
            break
        doomed.append(base)
        total -= size
    return doomed


def run_once(
    plane: ControlPlane, now_us: int, on_cut: Callable[[tuple[int, int, int], Partition], None] | None = None
) -> int:
    """One retention pass over every partition; returns the number of segments deleted.
    `on_cut(key, partition)`, after the partition's lock is released, for each partition that
    lost segments (a cluster's leader tells its followers: LogReplication.retained)."""
    deleted = 0
    for s in plane.meta.state.streams.values():
        for t in s.topics.values():
            st = t.settings
            if st["message_expiry"] in (0, U64_MAX) and st["max_topic_size"] in (0, U64_MAX):
                continue
            for pid in t.partitions:
                p = plane.storage.partition(s.id, t.id, pid)
                if p is None:
                    continue
                cut = 0
                with p.lock:
                    for base in segments_to_delete(p.log.segments(), st, len(t.partitions), p.offsets.lowest(), now_us):
                        p.log.delete_segment(base)
                        cut += 1
                deleted += cut
                if cut and on_cut is not None:
                    on_cut((s.id, t.id, pid), p)
    if deleted:
        log.info("retention deleted %d segments", deleted)
    return deleted
