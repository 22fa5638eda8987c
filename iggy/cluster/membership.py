"""This node's place in the cluster: the roster with roles and statuses, and the follower gate.

`Cluster` is what the rest of the server sees (`plane.cluster`; None on a single node):

- `metadata()` is the GET_CLUSTER_METADATA answer as a dict, as iggy.control.system encodes it:
  every roster node with its configured name, ip and ports; role "leader" for the node this one
  believes is leader (iggy.cluster.election.Election.current_leader), "follower" for the rest,
  so between leaders every node is a follower and the SDK waits; status "healthy" for a node
  whose `members/` key exists, "unreachable" for one whose key expired or when this node's own
  view of etcd is stale, "starting" for this node before its first round with etcd. Never the
  "unknown" status, which the SDK refuses.
- `serves(code)`: the leader serves everything; a follower only FOLLOWER_COMMANDS (login, logout,
  ping, who am I, the metadata), the rest is answered 58 TransientNotAccepted, which the SDK
  treats as "re-read the metadata and go to the leader" (docs/CLUSTER.md, "What the nodes
  answer").
- Metadata (iggy.cluster.metalog): every metadata change goes through `replicate`, the leader's
  fenced write of `meta/<index>` to etcd; a node that is not the leader refuses it. A node that
  is not leader applies `meta/` as it grows (a watch, and a catch-up at every round); a node that
  wins an election applies `meta/` to its end before it serves (`ready_epoch`), so the new leader
  holds every change the old one acknowledged. Every node puts the index it has applied as
  `applied/<replica_id>`, and the leader compacts meta/ below the lowest of them
  (iggy.cluster.compaction, `_applied_loop`); an empty node loads the snapshot instead of the
  records compacted away (`changes.install_snapshot`).
- Leadership changes: the io_uring shards serve polls (without auto-commit) only while this
  node leads, up to its fencing deadline, which every verdict publishes to the routing table
  (iggy.engine.uring.routing.Routes.set_poll_until; the shards compare it with the clock, as
  `is_leader` does); otherwise the C data path sends every request to Python, where the gate
  answers it. A timer fires at the fencing deadline, so the node steps down on time even when
  no round completes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iggy.cluster.compaction import COMPACT_AFTER, PUBLISH_EVERY, Compaction
from iggy.cluster.election import Election
from iggy.cluster.etcd import Etcd, EtcdUnavailable
from iggy.cluster.history import HISTORY_EVERY, History
from iggy.cluster.metalog import Behind, EtcdThread, MetaLog, NotAccepted
from iggy.cluster.offsets import OffsetLog
from iggy.cluster.replication import LogReplication
from iggy.cluster.standing import Standing
from iggy.control import changes
from iggy.control.throttle import RateLimit
from iggy.metadata.state import REVOCATIONS_PER_USER, Record
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode
from iggy.tasks import cancel_and_wait

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane

log = logging.getLogger(__name__)

LOGOUTS_PER_SECOND = 10.0  # a user's HTTP logouts the leader writes to etcd, 30 at once

# what a follower answers itself; everything else waits for the leader
FOLLOWER_COMMANDS = frozenset(
    {
        codes.PING,
        codes.GET_CLUSTER_METADATA,
        codes.GET_ME,
        codes.LOGIN_REGISTER,
        codes.LOGIN_REGISTER_WITH_PAT,
        codes.LOGIN_USER_LEGACY,
        codes.LOGIN_WITH_PAT_LEGACY,
        codes.LOGOUT_USER,
    }
)


class Cluster:
    # the reply status of a command a follower does not serve: upstream's "not admitted here,
    # safe to re-issue elsewhere"
    NOT_LEADER = ErrorCode.TRANSIENT_NOT_ACCEPTED

    def __init__(
        self,
        config: Any,
        plane: ControlPlane,
        compact_after: int = COMPACT_AFTER,
        revocations_per_user: int = REVOCATIONS_PER_USER,
        history_every: float = HISTORY_EVERY,
        logouts_per_second: float = LOGOUTS_PER_SECOND,
    ):
        c = config.cluster
        self.name = c.name
        self.roster = list(c.nodes)
        self.replica_id = c.replica_id
        self.node_name = c.node.name
        # the leader's cap on a user's logged-out JWTs kept as records (http.routes.users.revoke_jwt)
        self.revocations_per_user = revocations_per_user
        # and on the rate of a user's logouts, each an etcd write (http.routes.users.revoke_jwt)
        self.logout_rate = RateLimit(logouts_per_second, burst=max(1, round(3 * logouts_per_second)))
        self.plane = plane
        # the shards' C data path serves only polls in cluster mode (Routes.set_cluster): every
        # send is appended on the main loop, where it is replicated (docs/CLUSTER.md)
        self.on_leadership: Callable[[bool], None] = self._lead
        secret = c.auth.shared_secret.encode() if c.auth.enabled else None
        # raises StandingError (the server refuses to start) for another node's data directory,
        # or for a single node's (metadata of its own that the cluster's records do not hold)
        self.standing = Standing(config.system.path, c.name, self.replica_id, c.etcd.prefix)
        self.standing.check_metadata(plane.meta.state)
        self.replication = LogReplication(
            c.name,
            self.replica_id,
            self.roster,
            secret,
            plane.storage.partition,
            on_newer_epoch=self._newer_epoch,
            keys=lambda: list(plane.storage.partitions),
            on_in_sync=self._in_sync,
            may_acknowledge=lambda: self.election.is_leader(),
        )
        etcd_timeout = max(0.5, c.heartbeat_timeout / 6)
        self.etcd = Etcd(list(c.etcd.endpoints), etcd_timeout)
        self.election = Election(
            self.etcd, c.etcd.prefix, self.replica_id, self.node_name, c.heartbeat_timeout, on_round=self._update
        )
        self.etcd_timeout = etcd_timeout
        self.config_endpoints = list(c.etcd.endpoints)
        # meta/ reads and the watch on a connection of their own: a call of theirs that times
        # out drops that connection, not the one the election renews the lease on
        self.metalog = MetaLog(
            Etcd(list(c.etcd.endpoints), etcd_timeout),
            c.etcd.prefix,
            applied=lambda: plane.meta.state.cluster_index,
            apply=lambda record: changes.apply_replicated(plane, record),
            restore=lambda snapshot: changes.install_snapshot(plane, snapshot),
        )
        # applied/<replica_id> and the leader's compaction of meta/, on a connection of their own
        self.compaction = Compaction(
            Etcd(list(c.etcd.endpoints), etcd_timeout),
            c.etcd.prefix,
            self.replica_id,
            [n["replica_id"] for n in self.roster],
            compact_after,
        )
        # the leader's compaction of etcd's history, on the compaction's connection
        self.history = History(self.compaction.etcd, history_every)
        # stored consumer offsets in etcd (offsets/), on a connection of their own too
        self.offsets = OffsetLog(
            Etcd(list(c.etcd.endpoints), etcd_timeout),
            c.etcd.prefix,
            plane,
            epoch=lambda: self.ready_epoch if self.is_leader() else 0,
            writer=lambda: self.metalog.writer,
            lost=self._write_failed,
        )
        self.leading = False
        # the epoch in which this node, holding the leader key, applied meta/ to its end: it
        # serves only while that is the current epoch (0: not caught up as leader)
        self.ready_epoch = 0
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._sync: asyncio.Task[None] | None = None
        self._applied: asyncio.Task[None] | None = None
        self._sync_again = False
        self._fence: asyncio.TimerHandle | None = None
        self._settling: asyncio.Task[None] | None = None
        self._apply_standing()

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        log.info(
            "cluster %r: node %s (replica %d) of %d, etcd %s, lease %d s",
            self.name,
            self.node_name,
            self.replica_id,
            len(self.roster),
            ", ".join(f"{h}:{p}" for h, p in self.etcd.endpoints),
            self.election.ttl,
        )
        self.metalog.writer = EtcdThread(list(self.config_endpoints), self.etcd_timeout)
        self.plane.meta.replicator = self.replicate
        self._task = asyncio.ensure_future(self.election.run())
        self._watch = asyncio.ensure_future(self.metalog.watch(self._kick))
        self._applied = asyncio.ensure_future(self._applied_loop())
        if not self.standing.known:
            self._settling = asyncio.ensure_future(self._settle())

    async def stop(self) -> None:
        await cancel_and_wait((self._task, self._watch, self._sync, self._applied, self._settling))
        if self._fence is not None:
            self._fence.cancel()
        self.ready_epoch = 0
        self._set_leading(False)
        await self.replication.stop()
        await self.election.resign()
        await self.etcd.close()
        await self.metalog.etcd.close()
        await self.offsets.close()
        await self.compaction.etcd.close()
        if self.metalog.writer is not None:
            self.metalog.writer.close()

    # ---------------------------------------------------------------- standing (iggy.cluster.standing)

    async def _settle(self) -> None:
        """A node without the cluster-member file: ask etcd until it answers whether this
        replica id was a member before (then the node catches up before it counts)."""
        while not self.standing.known:
            try:
                await self.standing.settle(self.etcd)
            except EtcdUnavailable as exc:
                log.debug("cluster: standing not known yet: %s", exc)
                await asyncio.sleep(self.election.interval)
        self._apply_standing()

    def _in_sync(self) -> bool:
        """The leader's IN_SYNC: record that this node counts again; True once it does."""
        counts = self.standing.caught_up()
        self._apply_standing()
        return counts

    def _apply_standing(self) -> None:
        """A node counts toward majorities, campaigns and says so on the replica link only
        while its data directory holds what it acknowledged."""
        counts = self.standing.counts
        self.election.candidate = counts
        self.replication.link.catching_up = not counts

    # ---------------------------------------------------------------- leadership

    def is_leader(self) -> bool:
        """Elected, within the fencing deadline, and caught up with meta/ in this epoch."""
        return self.election.is_leader() and self.ready_epoch == self.election.epoch

    def serves(self, code: int) -> bool:
        return code in FOLLOWER_COMMANDS or self.is_leader()

    def replicate(self, record: Record) -> None:
        """MetadataStore.replicator: the leader's fenced write of `record` to meta/ (blocking).
        Refused (NotAccepted, 58) on a node that is not the leader; after a failed write the
        node stops serving until it has caught up with meta/ again (the write may have landed)."""
        if not self.is_leader():
            raise NotAccepted("this node is not the leader")
        try:
            self.metalog.write(record, self.ready_epoch)
        except NotAccepted as exc:
            log.warning("cluster: %s; serving again once caught up with meta/", exc)
            self._write_failed()
            raise

    def _write_failed(self) -> None:
        """A fenced write to etcd failed: serve again only once caught up (meta/, offsets/)."""
        self.ready_epoch = 0
        self._follow_verdict()
        self._kick()

    def _update(self) -> None:
        """After each round, and at the fencing deadline: follow the election's verdict, and
        apply what meta/ has beyond this node (a follower; a node elected but not caught up)."""
        self._follow_verdict()
        self.replication.release_held()
        if not self.is_leader():
            self._kick()
            # the replica link goes to the leader etcd names (none between leaders)
            self.replication.follow(self.election.current_leader(), self.election.epoch)

    def _kick(self) -> None:
        """Run a catch-up with meta/ now, or once more after the one running."""
        if self._sync is None or self._sync.done():
            self._sync = asyncio.ensure_future(self._catch_up())
        else:
            self._sync_again = True

    async def _catch_up(self) -> None:
        while True:
            self._sync_again = False
            # the leader key is this node's in this epoch before the read: meta/ cannot grow
            # behind the read except by this node's own writes
            epoch = self.election.epoch if self.election.is_leader() else 0
            try:
                await self.metalog.catch_up()
                if epoch and self.ready_epoch != epoch:
                    await self.offsets.load(epoch)  # the stored consumer offsets, before serving
            except (EtcdUnavailable, Behind) as exc:
                log.debug("cluster: catch-up with meta/ stopped: %s", exc)
                break
            if epoch and self.election.is_leader() and self.election.epoch == epoch and self.ready_epoch != epoch:
                log.info(
                    "cluster: applied meta/ up to index %d; serving as leader", self.plane.meta.state.cluster_index
                )
                self.ready_epoch = epoch
            if not self._sync_again:
                break
        self._follow_verdict()

    async def _applied_loop(self) -> None:
        """Every PUBLISH_EVERY seconds: put this node's applied index (applied/<replica_id>) when
        it changed; on the leader, then compact meta/ when every node is far enough past the
        last snapshot (iggy.cluster.compaction), and etcd's history once every HISTORY_EVERY
        seconds (iggy.cluster.history)."""
        meta = self.plane.meta
        while True:
            await asyncio.sleep(PUBLISH_EVERY)
            try:
                await self.compaction.publish(meta.state.cluster_index)
                if self.is_leader():
                    await self.compaction.compact(
                        self.ready_epoch, lambda: (meta.state.cluster_index, meta.state.to_dict())
                    )
                    await self.history.step()
            except EtcdUnavailable as exc:
                log.debug("cluster: applied/, the compaction of meta/ or of etcd's history not done: %s", exc)

    def _follow_verdict(self) -> None:
        self._set_leading(self.is_leader())
        self.plane.routes.set_poll_until(self.election.deadline() if self.leading else None)
        if self._fence is not None:
            self._fence.cancel()
            self._fence = None
        if self.leading:
            loop = asyncio.get_running_loop()
            # a hair after the deadline, so is_leader() is already false when it runs
            self._fence = loop.call_at(_loop_time(loop, self.election.deadline()) + 0.001, self._follow_verdict)

    def _lead(self, leading: bool) -> None:
        """Leadership gained or lost: the log replication leads in this epoch, or stops leading."""
        self.replication.lead(self.election.epoch if leading else None)

    def _newer_epoch(self, epoch: int) -> None:
        """A peer on the replica link proved a later election than this node's: it is no longer
        the leader, whatever its last round said (the next round reads etcd again)."""
        if self.election.holds_leader_key and epoch > self.election.epoch:
            log.warning(
                "cluster: a peer knows epoch %d, later than this node's %d: stepping down", epoch, self.election.epoch
            )
            self.election.holds_leader_key = False
            self.ready_epoch = 0
            self._follow_verdict()

    def _set_leading(self, leading: bool) -> None:
        if leading == self.leading:
            return
        self.leading = leading
        if leading:
            log.info("cluster: this node (%s) is the leader, epoch %d", self.node_name, self.election.epoch)
        else:
            log.warning(
                "cluster: this node (%s) is no longer the leader (epoch %d)", self.node_name, self.election.epoch
            )
        self.on_leadership(leading)

    # ---------------------------------------------------------------- metadata

    def leader_http_url(self) -> str | None:
        """`http://ip:port` of the leader's HTTP listener; None between leaders or without one."""
        leader = self.election.current_leader()
        node = next((n for n in self.roster if n["replica_id"] == leader), None)
        if node is None or not node["ports"]["http"]:
            return None
        host = f"[{node['ip']}]" if ":" in node["ip"] else node["ip"]
        return f"http://{host}:{node['ports']['http']}"

    def metadata(self) -> dict[str, Any]:
        election = self.election
        leader = election.current_leader()
        fresh = election.view_is_fresh()
        nodes = []
        for n in self.roster:
            rid = n["replica_id"]
            if rid == self.replica_id:
                status = "starting" if election.viewed_at is None else "healthy"
            elif fresh and rid in election.members:
                status = "healthy"
            else:
                status = "unreachable"
            ports = n["ports"]
            nodes.append(
                {
                    "name": n["name"],
                    "ip": n["ip"],
                    "tcp_port": ports["tcp"],
                    "quic_port": ports["quic"],
                    "http_port": ports["http"],
                    "websocket_port": ports["websocket"],
                    "role": "leader" if rid == leader else "follower",
                    "status": status,
                }
            )
        return {"name": self.name, "nodes": nodes}


def _loop_time(loop: asyncio.AbstractEventLoop, monotonic: float) -> float:
    """A time.monotonic() instant on the loop's clock (uvloop's clock is not time.monotonic)."""
    return loop.time() + (monotonic - time.monotonic())
