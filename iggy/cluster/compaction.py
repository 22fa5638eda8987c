"""Compaction of the cluster's metadata log in etcd (docs/CLUSTER.md, "Compaction of meta/").

Keys under `cluster.etcd.prefix`, beside `meta/<index>` (iggy.cluster.metalog)::

    applied/<replica_id>   the last meta/ index this node has applied, in decimal. A record is
                           applied only after it was fsynced to the node's own metadata journal
                           (iggy.metadata.journal), so the index is durable on that node.
    snapshot, snapshot-parts/...
                           the State as of index A (State.to_dict, cluster_index = A), its header
                           saying A and `below` = L, in parts (iggy.cluster.meta_snapshot). The
                           keys meta/<i> with i < L are gone; meta/<L> and everything after it
                           are still there.

Every node puts its `applied/` key (a plain put, no lease) when its index changed, at most once
per `PUBLISH_EVERY` seconds; never on the data path.

The leader (only while it serves as leader) reads `applied/` every `PUBLISH_EVERY` seconds and
takes `low`, the smallest index over every roster node. A roster node without a key blocks
compaction: it may be a new node that has to replay everything. When `low` is at least
`after` records past the last snapshot's `below`, it puts the snapshot's parts (one put each,
unfenced: a part no header names is never read), then writes, in ONE transaction fenced on its
epoch exactly as MetaLog.write is (`leader` still has create_revision = epoch):

    put snapshot = the header {index: A = the leader's own applied index, below: low, ...}
    delete meta/<i> for every i < low   (one range delete: the keys are 20 zero-padded digits)
    delete every other snapshot's parts  (two range deletes)

`low <= A` (no node is ahead of the leader in its own epoch), so every node (they are all at
`low` or after it) still finds the record after its own index; a node with an empty data
directory loads the snapshot and replays meta/ from A + 1 (MetaLog.catch_up). meta/<low> is
kept on purpose: meta/ is never empty once written, so a node that finds no key after its
index knows it is at the end, and a node whose next key is not there sees a first key past it.

The snapshot is bounded by the metadata itself (streams, topics, partitions, users, tokens, and
the JWT revocations not expired yet), not by the number of changes. A snapshot over
`SNAPSHOT_MAX` compressed (64 MiB, several hundred thousand topics) is not written (logged once)
and meta/ is then not compacted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from iggy.cluster import meta_snapshot
from iggy.cluster.etcd import Etcd
from iggy.cluster.meta_snapshot import PART_SIZE, SNAPSHOT_MAX
from iggy.cluster.metalog import meta_key

log = logging.getLogger(__name__)

COMPACT_AFTER = 1000  # records: compact once every node is this far past the last snapshot
PUBLISH_EVERY = 1.0  # seconds between two puts of applied/<id>, and between two compaction checks


def applied_key(prefix: bytes, replica_id: int) -> bytes:
    return prefix + b"applied/" + str(replica_id).encode()


class Compaction:
    """This node's `applied/` key, and the leader's compaction of meta/."""

    def __init__(
        self,
        etcd: Etcd,
        prefix: str,
        replica_id: int,
        roster: list[int],
        after: int = COMPACT_AFTER,
        part_size: int = PART_SIZE,
    ):
        self.etcd = etcd
        self.part_size = part_size
        self.prefix = prefix.encode()
        self.replica_id = replica_id
        self.roster = sorted(roster)
        self.after = max(1, after)
        self.published: int | None = None  # the index last put as applied/<replica_id>
        self._below: tuple[int, int] | None = None  # (epoch, the snapshot's `below`) read in that epoch
        self._warned = ""  # the last reason not to compact that was logged

    async def publish(self, index: int) -> None:
        """Put applied/<replica_id> = index, unless that is what was put last."""
        if index == self.published:
            return
        key = applied_key(self.prefix, self.replica_id)
        await self.etcd.call(lambda c: c.put(key, str(index).encode()))
        self.published = index

    async def lowest_applied(self) -> int | None:
        """The smallest applied index over the roster; None while a roster node has no key."""
        start = self.prefix + b"applied/"
        kvs = await self.etcd.call(lambda c: c.get_prefix(start))
        seen: dict[int, int] = {}
        for kv in kvs or ():
            try:
                seen[int(kv.key[len(start) :])] = int(kv.value)
            except ValueError:
                continue
        missing = [rid for rid in self.roster if rid not in seen]
        if missing:
            self._note(f"no applied/ key of replica {missing[0]} yet")
            return None
        return min(seen[rid] for rid in self.roster)

    async def below(self, epoch: int) -> int:
        """The `below` of the snapshot in etcd (1: none), read once per epoch: within an epoch
        only this leader writes it."""
        if self._below is not None and self._below[0] == epoch:
            return self._below[1]
        got = await self.etcd.call(lambda c: c.get(meta_snapshot.header_key(self.prefix)))
        below = meta_snapshot.decode_header(got.value)["below"] if got is not None else 1
        self._below = (epoch, below)
        return below

    async def compact(self, epoch: int, snapshot: Callable[[], tuple[int, dict[str, Any]]]) -> int | None:
        """The leader, in `epoch`: snapshot and delete meta/ below the lowest applied index when
        that is `after` records past the last snapshot. `snapshot()` gives the leader's applied
        index and its State.to_dict() as of that index (taken together, without yielding).
        Returns the new `below`, or None when nothing was done. EtcdUnavailable when etcd did
        not answer (the outcome is then unknown)."""
        low = await self.lowest_applied()
        if low is None:
            return None
        below = await self.below(epoch)
        if low - below < self.after:
            return None
        index, state = snapshot()
        low = min(low, index)  # no node is past the leader in its epoch: a stale key at most
        # packed here (the state's dicts change under the main loop), compressed on a thread
        packed = meta_snapshot.pack_state(state)
        snap = await asyncio.to_thread(meta_snapshot.encode, index, low, epoch, packed, self.part_size)
        size = sum(len(part) for part in snap.parts)
        if size > SNAPSHOT_MAX:
            self._note(f"the metadata snapshot has {size} bytes, more than {SNAPSHOT_MAX}", logging.WARNING)
            return None
        for i, value in enumerate(snap.parts):
            key = meta_snapshot.part_key(self.prefix, snap.name, i)

            async def put(client: Any, key: bytes = key, value: bytes = value) -> None:
                await client.put(key, value)

            await self.etcd.call(put)
        leader = self.prefix + b"leader"
        first, end = meta_key(self.prefix, 0), meta_key(self.prefix, low)
        others = meta_snapshot.other_parts(self.prefix, snap.name)

        async def fenced(client: Any) -> Any:
            txn = client.transactions
            return await client.transaction(
                compare=[txn.create(leader) == epoch],
                success=[
                    txn.put(meta_snapshot.header_key(self.prefix), snap.header),
                    txn.delete(first, end),
                    *(txn.delete(start, stop) for start, stop in others),
                ],
                failure=[],
            )

        done, _responses = await self.etcd.call(fenced)
        if not done:
            self._below = None
            log.warning("cluster: compaction of meta/ refused by etcd: epoch %d is over", epoch)
            return None  # its parts go with the next published snapshot's
        self._below = (epoch, low)
        self._warned = ""
        log.info(
            "cluster: compacted meta/: snapshot at index %d (%d bytes in %d parts), records below %d deleted",
            index,
            size,
            len(snap.parts),
            low,
        )
        return low

    def _note(self, why: str, level: int = logging.DEBUG) -> None:
        if why != self._warned:
            log.log(level, "cluster: meta/ not compacted: %s", why)
            self._warned = why
