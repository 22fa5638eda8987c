"""Leader election through an etcd lease, with an epoch and a fencing deadline.

Keys under `cluster.etcd.prefix` (docs/CLUSTER.md, "Who is leader")::

    leader                JSON {"replica_id", "name", "started_at"}, on the leader's lease
    members/<replica_id>  JSON {"name", "started_at"}, on each node's own lease

Each round (every TTL / 6): renew this node's lease (grant one, and put its `members/` key, when
it has none or it expired), then one transaction "if `leader` does not exist, put it with my
lease; read `leader`" (only the read on a node that is not a `candidate`: one catching up after
losing its data, iggy.cluster.standing), then read `members/`. The node that created `leader` is the leader; the
key's create_revision is the **epoch**, larger at every election because etcd revisions only
grow.

Fencing: `renewed_at` is the monotonic time at which this node *sent* the last renewal etcd
confirmed; etcd cannot expire the lease before renewed_at + TTL (it restarts the TTL when the
renewal arrives, which is later). `is_leader()` is true only until renewed_at + 2/3 TTL, so a
node that can no longer renew stops acting as leader at least TTL / 3 before another node can
win. `deadline()` is that instant, for the timer that steps down on time (iggy.cluster.membership).

A leader killed and started again within its lease finds the leader key still naming its
replica id, on the dead process's lease, until that lease expires. Nobody reports it as leader
meanwhile: the key carries the winner's `started_at`, and a node whose `members/` key shows
another `started_at` (or the node itself, whose lease it is not) is a later incarnation of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from iggy.cluster.etcd import Etcd, EtcdUnavailable

log = logging.getLogger(__name__)

# fraction of the lease TTL after the last confirmed renewal during which the node may act as leader
FENCE_FRACTION = 2 / 3
ROUNDS_PER_TTL = 6


class Election:
    def __init__(
        self,
        etcd: Etcd,
        prefix: str,
        replica_id: int,
        name: str,
        heartbeat_timeout: float,
        on_round: Callable[[], None] = lambda: None,
    ):
        self.etcd = etcd
        self.prefix = prefix.encode()
        self.replica_id = replica_id
        self.name = name
        # etcd leases count whole seconds
        self.ttl = max(2, math.ceil(heartbeat_timeout))
        self.interval = self.ttl / ROUNDS_PER_TTL
        self.on_round = on_round
        self.lease: Any = None  # aetcd Lease of this node
        self.renewed_at: float | None = None  # monotonic send time of the last confirmed renewal
        self.leader_id: int | None = None  # replica_id in `leader` at the last read
        self.leader_started_at: float | None = None  # the winner's started_at in `leader`
        self.member_started: dict[int, float] = {}  # replica id -> started_at in its members/ key
        self.epoch = 0  # create_revision of `leader` at the last read
        self.holds_leader_key = False  # `leader` is on this node's lease
        self.members: set[int] = set()  # replica ids whose members/ key exists
        self.viewed_at: float | None = None  # monotonic time of the last complete round
        self.started_at = time.time()
        # campaigns for the leader key; False on a node that is catching up after losing its
        # data directory (iggy.cluster.standing): it must not lead before it counts
        self.candidate = True
        self._failing = False

    # ---------------------------------------------------------------- what the node knows

    def deadline(self) -> float:
        """Monotonic time until which this node may act as leader (0: not at all)."""
        if not self.holds_leader_key or self.renewed_at is None:
            return 0.0
        return self.renewed_at + FENCE_FRACTION * self.ttl

    def is_leader(self) -> bool:
        return time.monotonic() < self.deadline()

    def view_is_fresh(self) -> bool:
        """The last complete round is recent enough to report the others' state."""
        return self.viewed_at is not None and time.monotonic() < self.viewed_at + FENCE_FRACTION * self.ttl

    def current_leader(self) -> int | None:
        """The leader's replica_id as this node reports it; None between leaders or when unsure."""
        if self.holds_leader_key:
            return self.replica_id if self.is_leader() else None
        if self.leader_id is None or not self.view_is_fresh():
            return None
        if self.leader_id == self.replica_id:
            return None  # the key names this node on a lease not its own: a dead earlier process
        started = self.member_started.get(self.leader_id)
        if started is not None and self.leader_started_at is not None and started != self.leader_started_at:
            return None  # the node named was started again since it won: that process is gone
        return self.leader_id

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.round()
                if self._failing:
                    log.info("etcd reachable again (%s)", self.etcd.endpoint)
                self._failing = False
            except EtcdUnavailable as exc:
                if not self._failing:
                    log.warning("cluster: %s; retrying every %.2f s", exc, self.interval)
                self._failing = True
            self.on_round()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def round(self) -> None:
        await self._renew()
        txn_result = await self.etcd.call(self._campaign)
        members = await self.etcd.call(lambda c: c.get_prefix(self.prefix + b"members/"))
        self._read_leader(txn_result)
        self.members = set()
        self.member_started = {}
        for kv in members:
            try:
                rid = int(kv.key.rsplit(b"/", 1)[1])
            except ValueError:
                continue
            self.members.add(rid)
            started = _started_at(kv.value)
            if started is not None:
                self.member_started[rid] = started
        self.viewed_at = time.monotonic()

    async def _renew(self) -> None:
        sent = time.monotonic()
        if self.lease is not None:
            reply = await self.etcd.call(lambda c: self.lease.refresh())
            if reply is not None and reply.TTL > 0:
                self.renewed_at = sent
                return
            log.warning("cluster: lease %x expired (not renewed in %d s); taking a new one", self.lease.id, self.ttl)
            self.lease = None
            self.renewed_at = None
            self.holds_leader_key = False
        sent = time.monotonic()
        lease = await self.etcd.call(lambda c: c.lease(self.ttl))
        self.lease = lease
        self.renewed_at = sent
        value = json.dumps({"name": self.name, "started_at": self.started_at}).encode()
        key = self.prefix + b"members/" + str(self.replica_id).encode()
        await self.etcd.call(lambda c: c.put(key, value, lease=lease))

    async def _campaign(self, client: Any) -> Any:
        """One transaction: create `leader` on this node's lease if nobody holds it; read it.
        A node that is not a candidate only reads it."""
        key = self.prefix + b"leader"
        txn = client.transactions
        if not self.candidate:
            return await client.transaction(compare=[], success=[txn.get(key)], failure=[])
        value = json.dumps({"replica_id": self.replica_id, "name": self.name, "started_at": self.started_at}).encode()
        return await client.transaction(
            compare=[txn.create(key) == 0],
            success=[txn.put(key, value, lease=self.lease), txn.get(key)],
            failure=[txn.get(key)],
        )

    def _read_leader(self, txn_result: Any) -> None:
        _won, responses = txn_result
        kvs = responses[-1] if responses else []
        if not kvs:  # deleted between the compare and the read: next round
            self.leader_id, self.holds_leader_key = None, False
            return
        value, kv = kvs[0]
        was_leader = self.holds_leader_key
        try:
            self.leader_id = int(json.loads(value)["replica_id"])
        except (ValueError, KeyError, TypeError):
            log.error("cluster: unreadable leader key %r", value)
            self.leader_id = None
        self.leader_started_at = _started_at(value)
        self.epoch = kv.create_revision
        self.holds_leader_key = self.lease is not None and kv.lease == self.lease.id
        if self.holds_leader_key and not was_leader:
            log.info("cluster: node %s (replica %d) won the election, epoch %d", self.name, self.replica_id, self.epoch)

    async def resign(self) -> None:
        """Graceful stop: revoke the lease, so `leader` and `members/<id>` go at once."""
        lease, self.lease = self.lease, None
        self.holds_leader_key = False
        if lease is not None:
            try:
                await self.etcd.call(lambda c: lease.revoke())
            except EtcdUnavailable as exc:
                log.warning("cluster: lease not revoked at stop (%s); it expires within %d s", exc, self.ttl)


def _started_at(value: bytes) -> float | None:
    """The `started_at` of a `leader` or `members/` value (None: absent or unreadable)."""
    try:
        started = json.loads(value)["started_at"]
    except (ValueError, KeyError, TypeError):
        return None
    return float(started) if isinstance(started, (int, float)) else None
