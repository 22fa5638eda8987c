"""A follower's side of log replication: the leader's batches appended to this node's partitions.

`FollowerLog` is the FollowerSink of iggy.cluster.replica_link. For each BATCH frame it appends
the batches to the partition with `PartitionLog.append_stored` (byte for byte, at exactly their
base offset; a gap or an overlap is refused with INVALID_OFFSET and nothing is written), and
records the leader's high-watermark (`commit`), which only grows. After each read of the link,
`acks()` answers one ACK per partition touched: its log end, its fsynced end and the status of
the first refusal (0 when every batch went in). A partition of a `persisted` topic is fsynced
first (one fdatasync per partition per read: group commit), so its synced end is its end; for
a `replicated` topic the synced end is what the last fsync (a sealed segment, shutdown) covered,
as far as this node knows.

A batch for a partition this node does not have (its metadata has not arrived yet) is answered
PARTITION_NOT_FOUND with end 0; the leader sends it again from the follower's end later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from iggy.protocol.errors import ErrorCode, IggyError
from iggy.storage.partitions import Partition

log = logging.getLogger(__name__)

Key = tuple[int, int, int]


class FollowerLog:
    def __init__(self, find: Callable[[int, int, int], Partition | None]):
        self._find = find
        self.commits: dict[Key, int] = {}  # the leader's high-watermark per partition
        self.synced: dict[Key, int] = {}  # end offset covered by this node's last fsync
        self._touched: dict[Key, int] = {}  # partition -> status of its first refusal (0: none)
        self._reported: set[tuple[Key, int]] = set()

    def visible_end(self, key: Key) -> int:
        """Offsets below this may be served from this node's copy (the high-watermark)."""
        return self.commits.get(key, 0)

    def batches(self, key: Key, commit: int, batches: list[memoryview]) -> None:
        status = self._touched.get(key, 0)
        partition = self._find(*key)
        if partition is None:
            status = status or ErrorCode.PARTITION_NOT_FOUND
        elif status == 0:  # after a refusal the rest of the frame cannot fit either
            with partition.lock:
                for batch in batches:
                    try:
                        partition.log.append_stored(batch, 0, len(batch))
                    except IggyError as exc:
                        status = exc.code
                        self._report(key, exc)
                        break
        self._touched[key] = status
        self.commit(key, commit)

    def commit(self, key: Key, commit: int) -> None:
        if commit > self.commits.get(key, 0):
            self.commits[key] = commit
        self._touched.setdefault(key, 0)

    def acks(self) -> list[tuple[Key, int, int, int]]:
        acks = []
        touched, self._touched = self._touched, {}
        for key, status in touched.items():
            partition = self._find(*key)
            if partition is None:
                acks.append((key, 0, 0, status or ErrorCode.PARTITION_NOT_FOUND))
                continue
            with partition.lock:
                if partition.log.closed:
                    acks.append((key, 0, 0, ErrorCode.PARTITION_NOT_FOUND))
                    continue
                end = partition.log.next_offset
                if partition.persisted and self.synced.get(key, 0) < end:
                    try:
                        partition.log.fsync(index=False)
                        self.synced[key] = end
                    except IggyError as exc:
                        log.error("replica of %s: fsync failed: %s", key, exc)
                        status = status or exc.code
            acks.append((key, end, min(self.synced.get(key, 0), end), status))
        return acks

    def _report(self, key: Key, exc: IggyError) -> None:
        """Log a refusal once per partition and code (a leader resends until it catches up)."""
        if (key, exc.code) not in self._reported:
            self._reported.add((key, exc.code))
            log.warning("replica of partition %s: batch refused: %s", "/".join(map(str, key)), exc)
