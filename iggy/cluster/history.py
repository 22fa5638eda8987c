"""The leader compacts etcd's key history (docs/CLUSTER.md, "etcd's history").

etcd keeps every revision of every key (MVCC) until someone compacts the history: deleting a
key, or overwriting it, frees nothing. The cluster writes etcd all the time (a `meta/` record
per metadata change, `applied/<replica_id>` about once a second per node while metadata
changes, a key of `offsets/` per stored or auto-committed consumer offset), so without a
compaction the database grows until it reaches etcd's backend quota (2 GiB by default). etcd
then raises its NOSPACE alarm and refuses every write: no metadata change, no stored offset, no
new election. Deleting the old `meta/` records (iggy.cluster.compaction) does not help by
itself, it only makes their last revision a deletion.

So the leader does what Kubernetes' API server does for its etcd: every `HISTORY_EVERY`
seconds it reads etcd's current revision and compacts the history up to the revision it read
the previous time, so the last `HISTORY_EVERY` seconds of history always stay. What the nodes
read at an older revision is short-lived: a paged range read (`Etcd.get_all`) pins the
revision of its first page for the seconds it takes, and a watch starts at the current
revision. A read that still meets a compacted revision fails like any etcd error and is tried
again at the next round. Compaction is a plain etcd request with no fence: whoever compacts,
only history older than every live reader's revision goes, so a deposed leader compacting once
more is harmless.

Compaction leaves free pages in etcd's database file, which etcd reuses; the file only shrinks
with `etcdctl defrag`, which blocks that member while it runs and is left to the operator.
An operator who already runs etcd with `--auto-compaction-retention` loses nothing: a
compaction to a revision etcd already compacted is no error (`Etcd.compact`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from iggy.cluster.etcd import Etcd

log = logging.getLogger(__name__)

HISTORY_EVERY = 300.0  # seconds of etcd history kept, and between two compactions


class History:
    """The leader's periodic compaction of etcd's history."""

    def __init__(self, etcd: Etcd, every: float = HISTORY_EVERY, clock: Callable[[], float] = time.monotonic):
        self.etcd = etcd
        self.every = every
        self.clock = clock
        self._seen: tuple[float, int] | None = None  # (clock, etcd's revision) at the last read
        self.compacted = 0  # the revision the history was last compacted to (0: not yet)

    async def step(self) -> int | None:
        """Called often on the leader: once `every` seconds passed since the last read, read the
        revision and compact to the one read before. Returns the revision compacted to, or None.
        EtcdUnavailable when etcd did not answer (the next step tries again)."""
        now = self.clock()
        if self._seen is not None and now - self._seen[0] < self.every:
            return None
        revision = await self.etcd.revision()
        previous, self._seen = self._seen, (now, revision)
        if previous is None or previous[1] <= self.compacted:
            return None
        await self.etcd.compact(previous[1])
        self.compacted = previous[1]
        log.info("cluster: etcd history compacted to revision %d (now at %d)", previous[1], revision)
        return previous[1]
