"""Log replication of one node: the leader streams every appended batch to the followers and
answers the producer once a majority holds (or fsynced) it; a follower appends what it is sent.

`LogReplication` owns both ends of the replica link for this node (iggy.cluster.replica_link):
the `tcp_replica` listener, which serves followers while this node leads (`lead(epoch)`), and
the link to the current leader while it follows (`follow(address)`), whose frames go to a
FollowerLog (iggy.cluster.follower_log). Everything runs on the main event loop; in cluster
mode every send is appended there (docs/CLUSTER.md says why), so "in offset order per
partition" is the order of the appends.

Leader, per partition (`Tracked`): its log end, the high-watermark `commit` (the largest end
that a majority of the roster holds, the leader counting itself), and per follower what it
acknowledged (`end`, `synced end`) and where the next frame to it starts (`next`). `replicate`
sends the stored batch (the header as stored + the frames, no Python object per message) to
every follower whose `next` is the batch's base offset and returns a future that resolves once
a majority holds it (`replicated` topics) or once the leader and enough followers to make a
majority fsynced it (`persisted`: the caller also awaits the leader's own fsync). A follower
that is behind (it refused a batch with INVALID_OFFSET, it just (re)connected, or it lacked the
partition) gets the missing batches read back from the leader's log, one bounded read at a time,
each sent when the previous one is acknowledged; live batches reach it again once it has caught
up. The high-watermark travels in every BATCH frame, and in a COMMIT frame when it moved and no
batch carried it within COMMIT_DELAY (under a steady producer the next batch does: a COMMIT per
batch cost each follower a frame and an ACK more per batch). What a follower knows of it only
bounds it from below (a new leader starts from it and raises it from its followers' ACKs), so
telling it later is safe.

A majority is counted over the roster, not over the connected followers: with two of three
nodes down nothing is acknowledged. When this node stops leading every waiting producer gets
TRANSIENT_NOT_ACCEPTED (its batch may or may not survive: the new leader decides) and the
per-partition state is dropped; the next leader rebuilds it from its followers' ACKs.

A new leader reconciles each partition before it appends to it or serves it (docs/CLUSTER.md,
"A new leader holds every committed batch"). Each follower, when its link comes up, sends every
partition's end and leader-epoch records (EPOCHS, then EPOCHS_END; a partition it does not
mention is empty there). Once followers that make a majority with the leader have done so, the
leader picks, per partition, the copy with the highest (last epoch, end) among them, itself
first on a tie; when that is a follower's, it cuts its own log where the two diverge and
fetches the rest from that follower (FETCH / SUFFIX, one bounded read at a time), taking over
that follower's epoch records for what it fetched. Then it records (its epoch, its end), and
the partition is `ready`: sends to it are appended, polls served up to the high-watermark (the
partitions made ready when the offers are in get their records written together, in one pass:
iggy.storage.leader_epochs.write_all).
Until then a send or poll of that partition is answered TRANSIENT_NOT_ACCEPTED (the SDK
retries); nothing else waits for it (metadata commands do not). Every follower (a returning old
leader too) is then told where its copy stops being equal to the leader's log (TRUNCATE: the
end, in the older of the two, of the newest epoch both have records of); it cuts its log there,
ACKs, and catches up from there as before. No batch or COMMIT of a partition goes to a follower
before its TRUNCATE.

A follower whose EPOCHS_END says CATCHING_UP lost its data directory (iggy.cluster.standing):
it is sent everything like any follower, but counts toward no majority (neither in
reconciliation nor in the high-watermark) until it holds every reconciled partition up to the
leader's end at reconciliation and up to the high-watermark (`_check_in_sync`); then IN_SYNC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from iggy.cluster import replica_frames as rf
from iggy.cluster.follower_log import FollowerLog
from iggy.cluster.replica_frames import Epochs
from iggy.cluster.replica_link import FollowerLink, LeaderAddress, LeaderEndpoint, LinkIdentity, Peer
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.storage.leader_epochs import divergence, write_all
from iggy.storage.log import VISIBLE_UNKNOWN
from iggy.storage.partitions import Partition

if TYPE_CHECKING:
    from iggy.config import RosterNode

log = logging.getLogger(__name__)

Key = tuple[int, int, int]
Offer = tuple[int, list[tuple[int, int]]]  # a copy's end and leader-epoch records
CATCH_UP_BYTES = 1 << 20  # one catch-up read of the leader's log (at least one batch)
MISSING_RETRY = 0.1  # seconds before asking again a follower that lacked the partition
COMMIT_DELAY = 0.05  # seconds a moved high-watermark waits for a batch to carry it before a COMMIT does


@dataclass
class Position:
    """One follower's place in one partition, as the leader knows it."""

    end: int = 0  # acknowledged: the follower's log holds every offset below it
    synced: int = 0  # acknowledged as fsynced
    next: int | None = None  # where the next frame to it starts; None: unknown (ask with a COMMIT)
    catching_up: int | None = None  # end of the catch-up frame in flight
    ahead: bool = False  # its log went past the leader's (cannot happen after its TRUNCATE)
    probing: bool = False  # a retry is scheduled for a follower that lacked the partition


@dataclass
class Tracked:
    partition: Partition
    end: int
    commit: int = 0
    ready_end: int = 0  # the leader's end when it reconciled the partition in this epoch
    commit_sent: int = 0
    followers: dict[int, Position] = field(default_factory=dict)
    # (end offset of the batch, fsync needed, producer's future), in offset order
    waiters: deque[tuple[int, bool, asyncio.Future[None]]] = field(default_factory=deque)


class LogReplication:
    def __init__(
        self,
        cluster: str,
        replica_id: int,
        roster: list[RosterNode],
        secret: bytes | None,
        find: Callable[[int, int, int], Partition | None],
        on_newer_epoch: Callable[[int], None] = lambda epoch: None,
        keys: Callable[[], Iterable[Key]] = lambda: (),
        on_in_sync: Callable[[], bool] = lambda: True,
        may_acknowledge: Callable[[], bool] = lambda: True,
    ):
        self.replica_id = replica_id
        self.roster = {n["replica_id"]: n for n in roster}
        self.majority = len(roster) // 2 + 1
        self.epochs = Epochs(on_newer=self._newer_epoch)
        self._on_newer_epoch = on_newer_epoch
        self.find = find
        me = LinkIdentity(cluster, replica_id, secret, self.epochs)
        self.endpoint = LeaderEndpoint(me, set(self.roster), self)
        self.keys = keys
        self.follower_log = FollowerLog(find, keys)
        self.link = FollowerLink(me, self.follower_log, on_in_sync=on_in_sync)
        self.epoch: int | None = None  # set while this node leads
        self.peers: dict[int, Peer] = {}
        self.tracked: dict[Key, Tracked] = {}
        # reconciliation in this epoch: what each follower said of its copies (once complete),
        # the partitions reconciled, the ones being fetched from a follower (its id, up to where)
        self._offering: dict[int, dict[Key, Offer]] = {}
        self.offers: dict[int, dict[Key, Offer]] = {}
        # the uid of this node's log of each offered partition when the offer came: a partition
        # deleted and created again since is empty on every node, whatever the offer said
        self._offer_uids: dict[int, dict[Key, int]] = {}
        # followers that lost their data directory and count toward no majority until IN_SYNC
        self.catching_up: set[int] = set()
        self.ready: dict[Key, Partition] = {}
        self.fetching: dict[Key, tuple[int, int, list[tuple[int, int]]]] = {}
        self._commits_due: set[Key] = set()
        # the fencing deadline (Election.is_leader): no producer is answered past it, even when
        # the ACKs that complete its batch are read before the step-down timer runs (a leader
        # resumed after a pause runs ready I/O before expired timers)
        self.may_acknowledge = may_acknowledge
        self._held = False  # producers whose batches a majority holds wait for the next round
        self._flush_scheduled = False

    # ---------------------------------------------------------------- life cycle and role

    async def start(self, host: str) -> None:
        await self.endpoint.start(host, self.roster[self.replica_id]["ports"]["tcp_replica"])

    async def stop(self) -> None:
        self.lead(None)
        await self.link.stop()
        await self.endpoint.stop()

    def lead(self, epoch: int | None) -> None:
        """This node leads in `epoch` (None: it does not lead)."""
        if epoch is not None:
            self.epochs.saw(epoch)
            self.link.follow(None)
        if epoch == self.epoch:
            return
        if self.epoch is not None:
            self._stop_leading()
        self.epoch = epoch

    def follow(self, leader_id: int | None, epoch: int) -> None:
        """Keep the link to `leader_id` (another node, elected in `epoch`), or to nobody."""
        self.epochs.saw(epoch)
        if leader_id is None or leader_id == self.replica_id:
            self.link.follow(None)
            return
        node = self.roster[leader_id]
        self.link.follow(LeaderAddress(leader_id, node["ip"], node["ports"]["tcp_replica"]))

    def _newer_epoch(self, epoch: int) -> None:
        if self.epoch is not None:
            log.warning("replication: a peer knows epoch %d, this leader is of %d: stepping down", epoch, self.epoch)
            self._stop_leading()
            self.epoch = None
        self._on_newer_epoch(epoch)

    def _stop_leading(self) -> None:
        for tracked in self.tracked.values():
            for _, _, fut in tracked.waiters:
                if not fut.done():
                    fut.set_exception(IggyError(ErrorCode.TRANSIENT_NOT_ACCEPTED, "no longer the leader"))
        for partition in self.ready.values():
            partition.log.set_visible_end(VISIBLE_UNKNOWN)  # the shards hand its polls to Python
        self.tracked.clear()
        self._held = False
        self._offering.clear()
        self.offers.clear()
        self._offer_uids.clear()
        self.catching_up.clear()
        self.ready.clear()
        self.fetching.clear()
        for peer in list(self.peers.values()):
            peer.close()
        self.peers.clear()

    # ---------------------------------------------------------------- what may be served

    def visible_end(self, key: Key) -> int | None:
        """Offsets at or above this are not served to consumers (None: no bound known here)."""
        if self.epoch is None:
            return self.follower_log.visible_end(key)
        if key not in self.ready:
            return 0  # not reconciled in this epoch yet: nothing is known to be committed
        tracked = self.tracked.get(key)
        return None if tracked is None else tracked.commit

    def writable(self, key: Key, partition: Partition) -> bool:
        """May this leader append to (and serve) `partition`: reconciled in this epoch (tried
        now when it is not). True on a node that does not lead (its gate answers for it).
        Called without the partition's lock."""
        return self.epoch is None or self.ready.get(key) is partition or self._reconcile(key, partition)

    def _publish(self, key: Key) -> None:
        """The leader's high-watermark of a ready partition, for the shards' polls (the C data
        path bounds them by it, iggy.engine.uring.dataplane; None here: they hand them to Python)."""
        partition = self.ready.get(key)
        if partition is not None:
            end = self.visible_end(key)
            partition.log.set_visible_end(VISIBLE_UNKNOWN if end is None else end)

    # ---------------------------------------------------------------- leader: the send path

    def replicate(
        self, key: Key, partition: Partition, head: bytes | bytearray, frames: bytes | memoryview, base: int, count: int
    ) -> asyncio.Future[None]:
        """After the leader appended [base, base + count) to `partition` (head: the header as
        stored, frames: the rest of the batch): send it, and a future for the producer."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self.epoch is None:
            fut.set_exception(IggyError(ErrorCode.TRANSIENT_NOT_ACCEPTED, "no longer the leader"))
            return fut
        tracked = self.tracked.get(key)
        if tracked is None or tracked.partition is not partition:
            tracked = self.tracked[key] = Tracked(partition, base)
            self._publish(key)
        if partition.epochs.last_epoch < self.epoch:  # records cleared by a purge (the caller holds the lock)
            partition.epochs.record(self.epoch, base)
        tracked.end = base + count
        tracked.waiters.append((tracked.end, partition.persisted, fut))
        for rid, peer in self.peers.items():
            pos = tracked.followers.get(rid)
            # in step (a follower is sent nothing before its TRUNCATE was answered)
            if (
                pos is not None
                and pos.next == base
                and peer.send(rf.BATCH, rf.BATCH_HEAD.pack(*key, tracked.commit), head, frames)
            ):
                pos.next = tracked.end
        tracked.commit_sent = tracked.commit
        self._advance(key, tracked)
        return fut

    # ---------------------------------------------------------------- leader: the link's callbacks

    def leader_epoch(self) -> int | None:
        return self.epoch

    def joined(self, peer: Peer) -> None:
        old = self.peers.pop(peer.replica_id, None)
        if old is not None:
            old.close("replaced by a new connection")
        self.peers[peer.replica_id] = peer
        self._forget(peer.replica_id)
        self._offering[peer.replica_id] = {}  # its EPOCHS frames come next

    def _forget(self, rid: int) -> None:
        """What a follower said of its copies and where it stood, once its link is gone."""
        self._offering.pop(rid, None)
        self.offers.pop(rid, None)
        self._offer_uids.pop(rid, None)
        self.catching_up.discard(rid)
        for key in [k for k, (source, _, _) in self.fetching.items() if source == rid]:
            del self.fetching[key]  # reconciled again at the next send or poll
        for tracked in self.tracked.values():
            tracked.followers.pop(rid, None)

    def offered(self, peer: Peer, key: Key, end: int, records: list[tuple[int, int]]) -> None:
        offering = self._offering.get(peer.replica_id)
        if offering is not None and self.peers.get(peer.replica_id) is peer:
            offering[key] = (end, records)

    def offers_done(self, peer: Peer, catching_up: bool = False) -> None:
        if self.peers.get(peer.replica_id) is not peer or peer.replica_id not in self._offering:
            return
        if catching_up:
            log.info("replication: follower %d lost its data: it counts once it holds this log", peer.replica_id)
            self.catching_up.add(peer.replica_id)
        self.offers[peer.replica_id] = self._offering.pop(peer.replica_id)
        uids = self._offer_uids[peer.replica_id] = {}
        for key in self.offers[peer.replica_id]:
            partition = self.find(*key)
            if partition is not None:
                uids[key] = partition.log.uid
        for key in list(self.ready):
            self._send_truncate(peer, key)
        started, before = time.monotonic(), len(self.ready)
        agreed: list[tuple[Key, Partition]] = []
        for key in list(self.keys()):
            partition = self.find(*key)
            if partition is not None and self.ready.get(key) is not partition:
                self._reconcile(key, partition, agreed)
        self._make_ready(agreed)
        if len(self.ready) > before:
            log.info(
                "replication: %d partitions reconciled and ready in %.3f s",
                len(self.ready) - before,
                time.monotonic() - started,
            )
        self._check_in_sync(peer)

    # ---------------------------------------------------------------- leader: reconciliation

    def _reconcile(self, key: Key, partition: Partition, agreed: list[tuple[Key, Partition]] | None = None) -> bool:
        """Make `partition` ready in this epoch when followers that make a majority with this
        node have said where their copies stand; True when it is ready now. With `agreed`, a
        partition this node's copy is the best of is added to it instead, for the caller to
        make ready with the others (one pass of epoch-file writes, `_make_ready`)."""
        counted = [rid for rid in self.offers if rid not in self.catching_up]
        if self.epoch is None or key in self.fetching or len(counted) + 1 < self.majority:
            return False
        with partition.lock:
            if partition.log.closed:
                return False
            mine: Offer = (partition.log.next_offset, list(partition.epochs.records))
        best, best_rid = mine, None
        for rid in counted:
            theirs = self._offer(rid, key, partition)
            if _rank(theirs) > _rank(best):
                best, best_rid = theirs, rid
        if best_rid is None:
            if agreed is not None:
                agreed.append((key, partition))
                return False
            self._make_ready([(key, partition)])
            return True
        cut = divergence(mine[1], mine[0], best[1], best[0])
        with partition.lock:
            if cut < partition.log.next_offset:
                log.warning(
                    "replication: partition %s: dropping this node's offsets %d..%d, not in replica %d's copy",
                    key,
                    cut,
                    partition.log.next_offset - 1,
                    best_rid,
                )
                partition.log.truncate(cut)
            partition.epochs.truncate(cut)
        log.info(
            "replication: partition %s: fetching offsets %d..%d from replica %d before serving it",
            key,
            cut,
            best[0] - 1,
            best_rid,
        )
        self.fetching[key] = (best_rid, best[0], best[1])
        self.peers[best_rid].send(rf.FETCH, rf.FETCH_BODY.pack(*key, cut, best[0]))
        return False

    def fetched(self, peer: Peer, key: Key, batches: list[memoryview]) -> None:
        source = self.fetching.get(key)
        if source is None or source[0] != peer.replica_id or self.peers.get(peer.replica_id) is not peer:
            return
        _, target, records = source
        partition = self.find(*key)
        if partition is None or not batches:
            log.error("replication: partition %s: replica %d did not send what it holds", key, peer.replica_id)
            del self.fetching[key]
            return
        try:
            with partition.lock:
                for batch in batches:
                    base = rf.batch_base_offset(batch)
                    epoch = _epoch_at(records, base)
                    if epoch > partition.epochs.last_epoch:
                        partition.epochs.record(epoch, base)
                    partition.log.append_stored(batch, 0, len(batch))
                end = partition.log.next_offset
        except (IggyError, ValueError, OSError) as exc:
            log.error("replication: partition %s: cannot take replica %d's batches: %s", key, peer.replica_id, exc)
            del self.fetching[key]
            return
        if end < target:
            peer.send(rf.FETCH, rf.FETCH_BODY.pack(*key, end, target))
            return
        del self.fetching[key]
        self._make_ready([(key, partition)])

    def _make_ready(self, partitions: list[tuple[Key, Partition]]) -> None:
        """Record (this epoch, its end) for each partition, all in one pass of epoch-file writes
        (iggy.storage.leader_epochs.write_all: every record is on disk when it returns), then
        serve them. The pass runs on the main loop, as every change of these partitions' records
        does in cluster mode, so none changes in between."""
        if not partitions:
            return
        epoch = self.epoch
        assert epoch is not None
        ends = []
        for key, partition in partitions:
            with partition.lock:
                end = partition.log.next_offset
                partition.epochs.record(epoch, end, defer=True)
            ends.append((key, partition, end))
        write_all(partition.epochs for _, partition, _ in ends)
        for key, partition, end in ends:
            self._serve(key, partition, end)

    def _serve(self, key: Key, partition: Partition, end: int) -> None:
        """`partition`, its record of this epoch on disk, is ready: sends and polls are served."""
        self.ready[key] = partition
        # what this node knew as a follower is committed; the followers' ACKs raise it
        self.tracked[key] = Tracked(
            partition, end, commit=min(end, self.follower_log.commits.get(key, 0)), ready_end=end
        )
        self._publish(key)
        for peer in self.peers.values():
            if peer.replica_id in self.offers:
                self._send_truncate(peer, key)
        for rid in list(self.catching_up):
            self._check_in_sync(self.peers[rid])

    def _offer(self, rid: int, key: Key, partition: Partition) -> Offer:
        """What follower `rid` said of its copy of `partition` (empty: it has none, or it spoke
        of an earlier partition with the same ids)."""
        offer = self.offers[rid].get(key)
        if offer is None or self._offer_uids[rid].get(key) != partition.log.uid:
            return (0, [])
        return offer

    def _send_truncate(self, peer: Peer, key: Key) -> None:
        """Tell a follower where its copy of `key` stops being equal to this log; its ACK then
        says where it is, and it catches up from there."""
        tracked = self.tracked.get(key)
        offers = self.offers.get(peer.replica_id)
        if tracked is None or offers is None:
            return
        end, records = self._offer(peer.replica_id, key, tracked.partition)
        with tracked.partition.lock:
            cut = divergence(list(tracked.partition.epochs.records), tracked.partition.log.next_offset, records, end)
            start = tracked.partition.log.first_offset
        tracked.followers[peer.replica_id] = Position()
        peer.send(rf.TRUNCATE, rf.TRUNCATE_BODY.pack(*key, cut))
        if start:  # what retention removed here goes there too
            peer.send(rf.RETAIN, rf.RETAIN_BODY.pack(*key, start))

    def retained(self, key: Key, partition: Partition) -> None:
        """This leader removed the oldest segments of `partition` (retention, DELETE_SEGMENTS):
        every follower that had its TRUNCATE removes the same (RETAIN). Called without the lock."""
        tracked = self.tracked.get(key)
        if self.epoch is None or tracked is None or tracked.partition is not partition:
            return  # a follower linked later gets RETAIN after its TRUNCATE
        with partition.lock:
            if partition.log.closed:
                return
            body = rf.RETAIN_BODY.pack(*key, partition.log.first_offset)
        for rid in tracked.followers:
            peer = self.peers.get(rid)
            if peer is not None:
                peer.send(rf.RETAIN, body)

    def left(self, peer: Peer) -> None:
        if self.peers.get(peer.replica_id) is peer:
            del self.peers[peer.replica_id]
            self._forget(peer.replica_id)

    def acked(self, peer: Peer, key: Key, end: int, synced: int, status: int) -> None:
        tracked = self.tracked.get(key)
        if tracked is None or self.peers.get(peer.replica_id) is not peer:
            return
        pos = tracked.followers.get(peer.replica_id)
        if pos is None:  # before its TRUNCATE: where it stands is not known yet
            return
        pos.end, pos.synced = end, synced
        if end > tracked.end:
            if not pos.ahead:
                log.warning(
                    "replication: follower %d holds partition %s up to %d, past this leader's %d "
                    "(after its TRUNCATE: not counted)",
                    peer.replica_id,
                    key,
                    end,
                    tracked.end,
                )
            pos.ahead = True
            pos.next = None
            return
        pos.ahead = False
        if status == ErrorCode.PARTITION_NOT_FOUND:
            # its metadata (through etcd) is behind: ask again shortly, it catches up once it has it
            pos.next = pos.catching_up = None
            if not pos.probing:
                pos.probing = True
                asyncio.get_running_loop().call_later(MISSING_RETRY, self._probe, peer, key, pos)
        elif status or pos.next is None:
            pos.next, pos.catching_up = end, None
        elif pos.catching_up is not None and end >= pos.catching_up:
            pos.catching_up = None
        if pos.next is not None and pos.catching_up is None and pos.next < tracked.end:
            self._catch_up(peer, key, tracked, pos)
        self._advance(key, tracked)
        if peer.replica_id in self.catching_up:
            self._check_in_sync(peer)

    def _probe(self, peer: Peer, key: Key, pos: Position) -> None:
        pos.probing = False
        tracked = self.tracked.get(key)
        if tracked is not None and self.peers.get(peer.replica_id) is peer:
            peer.send(rf.COMMIT, rf.COMMIT_BODY.pack(*key, tracked.commit))

    def _catch_up(self, peer: Peer, key: Key, tracked: Tracked, pos: Position) -> None:
        """Send the follower the next stored batches from `pos.next`, read from this log."""
        start = pos.next
        assert start is not None
        partition = tracked.partition
        try:
            with partition.lock:
                if partition.log.closed:
                    return
                first = partition.log.first_offset
                if start < first:
                    # retention removed what it lacks: it starts again where this log starts,
                    # and its ACK says where the catch-up goes on from
                    peer.send(rf.RETAIN, rf.RETAIN_BODY.pack(*key, first))
                    pos.next = pos.catching_up = None
                    return
                data, n = partition.log.read(start, tracked.end - start, CATCH_UP_BYTES)
        except IggyError as exc:
            log.error(
                "replication: cannot read partition %s at %d for follower %d: %s", key, start, peer.replica_id, exc
            )
            return
        if n == 0 or rf.batch_base_offset(data) != start:  # not a batch boundary of this log
            log.error(
                "replication: follower %d needs partition %s from %d, not in this log", peer.replica_id, key, start
            )
            return
        if peer.send(rf.BATCH, rf.BATCH_HEAD.pack(*key, tracked.commit), data):
            pos.next = pos.catching_up = start + n

    # ---------------------------------------------------------------- leader: the high-watermark

    def _advance(self, key: Key, tracked: Tracked) -> None:
        """Raise the high-watermark to what a majority holds; answer the producers it covers."""
        need = self.majority - 1  # followers besides the leader
        counted = [p for rid, p in tracked.followers.items() if not p.ahead and rid not in self.catching_up]
        ends = sorted((p.end for p in counted), reverse=True)
        held = tracked.end if need == 0 else (min(ends[need - 1], tracked.end) if len(ends) >= need else 0)
        if held > tracked.commit:
            tracked.commit = held
            self._publish(key)
            self._commits_due.add(key)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_later(COMMIT_DELAY, self._send_commits)
        if not self.may_acknowledge():
            self._held = True
            return
        synced = sorted((p.synced for p in counted), reverse=True)
        synced_held = tracked.end if need == 0 else (synced[need - 1] if len(synced) >= need else 0)
        waiters = tracked.waiters
        while waiters:
            end, persisted, fut = waiters[0]
            if end > (synced_held if persisted else tracked.commit):
                break
            waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    def release_held(self) -> None:
        """After a round that renewed the lease: answer the producers held back at the fencing
        deadline (if the node stepped down instead, they were failed with 58)."""
        if self._held and self.may_acknowledge():
            self._held = False
            for key, tracked in list(self.tracked.items()):
                self._advance(key, tracked)

    def _check_in_sync(self, peer: Peer) -> None:
        """A follower that was catching up counts from now on when it holds every partition of
        this node reconciled in this epoch, up to the end it had then and up to the
        high-watermark: every batch acknowledged before or since (IN_SYNC tells it so)."""
        rid = peer.replica_id
        if rid not in self.catching_up or rid not in self.offers:
            return
        for key in self.keys():
            partition = self.find(*key)
            if partition is None:
                continue
            tracked = self.tracked.get(key)
            if self.ready.get(key) is not partition or tracked is None or tracked.partition is not partition:
                return
            pos = tracked.followers.get(rid)
            if pos is None or pos.ahead or pos.end < max(tracked.ready_end, tracked.commit):
                return
        if peer.send(rf.IN_SYNC):
            self.catching_up.discard(rid)
            log.info("replication: follower %d holds this log: it counts toward majorities again", rid)
            for key, tracked in self.tracked.items():
                self._advance(key, tracked)

    def _send_commits(self) -> None:
        self._flush_scheduled = False
        due, self._commits_due = self._commits_due, set()
        for key in due:
            tracked = self.tracked.get(key)
            if tracked is None or tracked.commit <= tracked.commit_sent:
                continue
            tracked.commit_sent = tracked.commit
            body = rf.COMMIT_BODY.pack(*key, tracked.commit)
            for rid, peer in self.peers.items():
                if rid in tracked.followers:  # its TRUNCATE went first
                    peer.send(rf.COMMIT, body)


def _rank(offer: Offer) -> tuple[int, int]:
    """Which copy holds every committed batch: the highest (last epoch, end)."""
    end, records = offer
    return (records[-1][0] if records else 0, end)


def _epoch_at(records: list[tuple[int, int]], offset: int) -> int:
    """The epoch of the record whose range holds `offset` (0: none)."""
    epoch = 0
    for e, start in records:
        if start > offset:
            break
        epoch = e
    return epoch
