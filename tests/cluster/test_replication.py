"""Log replication (iggy.cluster.replication) between three LogReplication objects in one process:
real partitions in temp dirs, real replica links on loopback, no etcd and no server.

- every batch the leader appends reaches both followers, whose segment files end up byte for
  byte the leader's; the producer's future resolves once a majority holds the batch, the
  high-watermark follows and reaches the followers;
- with both followers away nothing is acknowledged; one follower back (it catches up from the
  leader's log first) makes a majority again;
- a follower that missed many batches catches up by itself once it reconnects;
- `persisted`: acknowledged once a follower fsynced too;
- a leader that stops leading fails every waiting producer with 58 TransientNotAccepted;
- leader epochs: a new leader that lacks batches a follower holds fetches them before it
  serves; a returning old leader drops its unacknowledged suffix and ends up with the new
  leader's files; a leader without a majority of answers serves nothing;
- retention on the leader (RETAIN): every follower removes the same segments, and one whose
  copy ends below the leader's start starts again there and catches up;
- past the fencing deadline no producer is answered, even when a majority holds its batch;
  back within it (a renewed lease), the held ones are;
- a follower that lost its data directory counts toward no majority (a new leader does not
  reconcile with its empty copy) until it holds the leader's log; then IN_SYNC.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket

import pytest

from iggy.cluster.replication import LogReplication
from iggy.protocol.batch import build_batch
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.storage.partitions import Partition
from tests.cluster.test_follower_log import segment_bytes, settings
from tests.cluster.test_replica_link import until

KEY = (1, 1, 1)
SECRET = b"k" * 32
EPOCH = 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, root, replica_id: int, roster: list[dict], durability: str, segment_size: int = 1 << 20):
        self.replica_id = replica_id
        self.dir = str(root / f"node-{replica_id}")
        self.partition = Partition(self.dir, 1, settings(durability, segment_size), True)
        self.repl = LogReplication("c", replica_id, roster, SECRET, self.find, keys=lambda: [KEY])

    def find(self, s, t, p):
        return self.partition if (s, t, p) == KEY else None

    def lose_data(self, durability: str = "replicated") -> list[int]:
        """Its data directory is wiped: an empty partition, a link that says it is catching up;
        returns the list that records each IN_SYNC the leader sends it."""
        self.partition.close()
        shutil.rmtree(self.dir)
        self.partition = Partition(self.dir, 1, settings(durability), True)
        self.repl.link.catching_up = True
        in_sync: list[int] = []
        self.repl.link.on_in_sync = lambda: in_sync.append(1) is None
        return in_sync

    async def start(self):
        await self.repl.start("127.0.0.1")

    async def stop(self):
        await self.repl.stop()


class Cluster3:
    def __init__(self, root, durability: str = "replicated", segment_size: int = 1 << 20):
        roster = [
            {"replica_id": i, "name": f"n{i}", "ip": "127.0.0.1", "ports": {"tcp_replica": free_port()}}
            for i in range(3)
        ]
        self.nodes = [Node(root, i, roster, durability, segment_size) for i in range(3)]
        self.leader = self.nodes[0]

    async def __aenter__(self):
        for node in self.nodes:
            await node.start()
        self.leader.repl.lead(EPOCH)
        for node in self.nodes[1:]:
            node.repl.follow(0, EPOCH)
        return self

    async def __aexit__(self, *exc):
        for node in self.nodes:
            await node.stop()
            node.partition.close()

    def send(self, n: int, leader: Node | None = None) -> asyncio.Future:
        """Append a batch of n messages on the leader, as the send path does, and replicate it."""
        leader = leader or self.leader
        batch = build_batch([(i + 1, os.urandom(20), b"") for i in range(n)])
        head = bytearray(256)
        partition = leader.partition
        assert leader.repl.writable(KEY, partition)  # the send path's gate
        with partition.lock:
            base, count = partition.log.append(batch, 0, len(batch), 1, head_out=head)
            return leader.repl.replicate(KEY, partition, head, batch[256:], base, count)

    async def cut(self, *followers: Node) -> None:
        """The followers leave the leader (as when they lose it), until the leader is linked to
        exactly the others."""
        for node in followers:
            node.repl.follow(None, EPOCH)
        staying = {n.replica_id for n in self.nodes if n is not self.leader and n not in followers}
        await until(lambda: set(self.leader.repl.peers) == staying)

    async def split_at_12_and_22(self) -> None:
        """12 messages on every node, then node 1 away and 10 more, acknowledged by the leader
        and node 2 (a majority): node 1 ends at 12, the others at 22."""
        await self.reconciled()
        await asyncio.wait_for(asyncio.gather(*(self.send(3) for _ in range(4))), 10)
        await self.cut(self.nodes[1])
        await asyncio.wait_for(asyncio.gather(*(self.send(2) for _ in range(5))), 10)
        assert [n.partition.log.next_offset for n in self.nodes] == [22, 12, 22]

    async def reconciled(self, leader: Node | None = None) -> None:
        """Until the leader may append: followers that make a majority said where they stand."""
        leader = leader or self.leader
        await until(lambda: leader.repl.writable(KEY, leader.partition))

    def same_files(self, *indexes: int) -> bool:
        for node in self.nodes:
            node.partition.log.fsync()
        leader = segment_bytes(self.leader.dir)
        return all(segment_bytes(self.nodes[i].dir) == leader for i in indexes)


async def test_every_batch_reaches_the_followers_byte_for_byte(tmp_path):
    async with Cluster3(tmp_path) as c:
        await until(lambda: len(c.leader.repl.peers) == 2)
        await c.reconciled()
        futures = [c.send(n) for n in (1, 5, 3, 10)]
        await asyncio.wait_for(asyncio.gather(*futures), 10)
        await until(lambda: all(n.partition.log.next_offset == 19 for n in c.nodes))
        assert c.same_files(1, 2)
        assert c.leader.repl.visible_end(KEY) == 19
        await until(lambda: all(n.repl.visible_end(KEY) == 19 for n in c.nodes[1:]))  # the COMMIT frame


async def test_no_majority_no_acknowledgement_then_catch_up(tmp_path):
    async with Cluster3(tmp_path) as c:
        await c.reconciled()
        await c.cut(*c.nodes[1:])
        futures = [c.send(2) for _ in range(20)]
        await asyncio.sleep(0.3)
        assert not any(f.done() for f in futures)
        assert c.leader.repl.visible_end(KEY) == 0
        c.nodes[2].repl.follow(0, EPOCH)  # back: it catches up from the leader's log, then a majority holds it all
        await asyncio.wait_for(asyncio.gather(*futures), 10)
        assert c.nodes[2].partition.log.next_offset == 40
        assert c.nodes[1].partition.log.next_offset == 0
        assert c.same_files(2)


async def test_a_follower_away_for_many_batches_catches_up(tmp_path):
    async with Cluster3(tmp_path) as c:
        await c.cut(c.nodes[2])
        await c.reconciled()
        futures = [c.send(50) for _ in range(100)]  # 5,000 messages, well past one catch-up read
        await asyncio.wait_for(asyncio.gather(*futures), 20)
        assert c.nodes[2].partition.log.next_offset == 0
        c.nodes[2].repl.follow(0, EPOCH)
        await until(lambda: c.nodes[2].partition.log.next_offset == 5000, timeout=20)
        await asyncio.wait_for(c.send(1), 10)  # and live batches flow to it again
        await until(lambda: c.nodes[2].partition.log.next_offset == 5001)
        assert c.same_files(1, 2)


async def test_persisted_waits_for_a_follower_fsync(tmp_path):
    async with Cluster3(tmp_path, durability="persisted") as c:
        await until(lambda: len(c.leader.repl.peers) == 2)
        await c.reconciled()
        await asyncio.wait_for(c.send(3), 10)
        tracked = c.leader.repl.tracked[KEY]
        assert max(p.synced for p in tracked.followers.values()) >= 3


async def test_a_leader_that_steps_down_fails_its_waiting_producers(tmp_path):
    async with Cluster3(tmp_path) as c:
        await c.reconciled()
        await c.cut(*c.nodes[1:])
        fut = c.send(1)
        c.leader.repl.lead(None)
        with pytest.raises(IggyError) as err:
            await fut
        assert err.value.code == ErrorCode.TRANSIENT_NOT_ACCEPTED
        assert c.leader.repl.writable(KEY, c.leader.partition)  # not leading: the gate is the cluster's
        with pytest.raises(IggyError):
            await c.send(1)


async def test_a_leader_that_meets_a_newer_epoch_steps_down(tmp_path):
    async with Cluster3(tmp_path) as c:
        await until(lambda: len(c.leader.repl.peers) == 2)
        await c.cut(c.nodes[1])
        c.nodes[1].repl.epochs.saw(EPOCH + 1)  # it heard of a later election the leader missed
        c.nodes[1].repl.lead(EPOCH + 1)
        c.leader.repl.follow(1, EPOCH)  # the old leader, told of node 1 in an old epoch, dials it
        await until(lambda: c.leader.repl.epoch is None)
        assert c.leader.repl.epochs.highest == EPOCH + 1


def same_files(nodes: list[Node]) -> bool:
    for node in nodes:
        node.partition.log.fsync()
    return all(segment_bytes(n.dir) == segment_bytes(nodes[0].dir) for n in nodes[1:])


async def test_a_new_leader_fetches_the_batches_a_follower_has_beyond_its_own(tmp_path):
    async with Cluster3(tmp_path) as c:
        old, behind, ahead = c.nodes
        await c.split_at_12_and_22()
        old.repl.lead(None)
        await old.stop()  # gone for good
        behind.repl.lead(EPOCH + 1)
        ahead.repl.follow(1, EPOCH + 1)
        await c.reconciled(behind)  # only once it holds what `ahead` holds
        assert behind.partition.log.next_offset == 22
        assert behind.partition.epochs.records == [(EPOCH, 0), (EPOCH + 1, 22)]
        await asyncio.wait_for(c.send(1, behind), 10)
        await until(lambda: ahead.partition.log.next_offset == 23)
        assert same_files([behind, ahead])


async def test_a_returning_old_leader_drops_its_unacknowledged_suffix(tmp_path):
    async with Cluster3(tmp_path) as c:
        old, new, other = c.nodes
        await c.reconciled()
        await asyncio.wait_for(asyncio.gather(*(c.send(3) for _ in range(3))), 10)
        await until(lambda: all(n.partition.log.next_offset == 9 for n in c.nodes))
        await c.cut(new, other)
        lost = [c.send(4) for _ in range(2)]  # appended on the old leader only
        assert old.partition.log.next_offset == 17
        new.repl.lead(EPOCH + 1)
        other.repl.follow(1, EPOCH + 1)
        await c.reconciled(new)
        await asyncio.wait_for(asyncio.gather(*(c.send(1, new) for _ in range(3))), 10)
        old.repl.lead(None)  # it learns of the election (the Cluster does this from etcd)
        old.repl.follow(1, EPOCH + 1)
        for fut in lost:
            with pytest.raises(IggyError):
                await fut
        await until(lambda: old.partition.log.next_offset == 12 and same_files([new, old, other]))
        assert old.partition.epochs.records == [(EPOCH, 0), (EPOCH + 1, 9)]


async def test_without_a_majority_of_answers_a_new_leader_serves_nothing(tmp_path):
    async with Cluster3(tmp_path) as c:
        for node in c.nodes[1:]:
            node.repl.follow(None, EPOCH)
        await asyncio.sleep(0.3)
        assert not c.leader.repl.writable(KEY, c.leader.partition)
        assert c.leader.repl.visible_end(KEY) == 0
        c.nodes[1].repl.follow(0, EPOCH)
        await c.reconciled()


async def test_a_partition_created_again_is_not_reconciled_with_what_followers_said_of_the_old_one(tmp_path):
    async with Cluster3(tmp_path) as c:
        await c.reconciled()
        await asyncio.wait_for(asyncio.gather(*(c.send(2) for _ in range(3))), 10)
        await until(lambda: all(n.partition.log.next_offset == 6 for n in c.nodes))
        for node in c.nodes[1:]:  # they reconnect: their offers now speak of 6 messages
            node.repl.follow(None, EPOCH)
        await until(lambda: not c.leader.repl.peers)
        for node in c.nodes[1:]:
            node.repl.follow(0, EPOCH)
        await until(lambda: len(c.leader.repl.offers) == 2)
        for node in c.nodes:  # the topic deleted and created again on every node
            node.partition.close()
            shutil.rmtree(node.dir)
            node.partition = Partition(node.dir, 1, settings("replicated"), True)
        # empty everywhere: ready at once, not fetched from a follower's (old) copy
        assert c.leader.repl.writable(KEY, c.leader.partition)
        await asyncio.wait_for(c.send(1), 10)
        await until(lambda: all(n.partition.log.next_offset == 1 for n in c.nodes))
        assert same_files(c.nodes)


async def test_a_follower_that_lost_its_data_counts_toward_no_majority_until_it_caught_up(tmp_path):
    async with Cluster3(tmp_path) as c:
        old, behind, wiped = c.nodes
        await c.split_at_12_and_22()
        old.repl.lead(None)  # the leader is away
        wiped.repl.follow(None, EPOCH)
        in_sync = wiped.lose_data()  # and the only other holder of offsets 12..21 loses them
        behind.repl.lead(EPOCH + 1)
        wiped.repl.follow(1, EPOCH + 1)
        await until(lambda: 2 in behind.repl.offers and 2 in behind.repl.catching_up)
        await asyncio.sleep(0.3)
        # counted, the empty copy would have made a majority with `behind`, which would have
        # served its 12 messages and given offsets 12..21 to new batches: 10 acknowledged lost
        assert not behind.repl.writable(KEY, behind.partition)
        assert behind.partition.log.next_offset == 12 and not in_sync
        old.repl.follow(1, EPOCH + 1)  # the old leader returns as a follower: a majority that counts
        await c.reconciled(behind)
        assert behind.partition.log.next_offset == 22  # fetched from the old leader's copy
        await until(lambda: in_sync and wiped.partition.log.next_offset == 22)
        assert 2 not in behind.repl.catching_up
        await asyncio.wait_for(c.send(1, behind), 10)
        await until(lambda: all(n.partition.log.next_offset == 23 for n in c.nodes))
        assert same_files(c.nodes)


async def test_what_retention_removes_on_the_leader_goes_on_every_follower(tmp_path):
    async with Cluster3(tmp_path, segment_size=4096) as c:
        leader, near, far = c.nodes
        await c.reconciled()
        await asyncio.wait_for(asyncio.gather(*(c.send(5) for _ in range(30))), 10)
        await until(lambda: all(n.partition.log.next_offset == 150 for n in c.nodes))
        await c.cut(far)
        await asyncio.wait_for(asyncio.gather(*(c.send(5) for _ in range(30))), 10)
        log = leader.partition.log
        with leader.partition.lock:  # what a retention pass does, down to past `far`'s end
            log.delete_oldest_segments(log.segments_count - 2)
        start = log.first_offset
        assert start > 150
        leader.repl.retained(KEY, leader.partition)
        await until(lambda: near.partition.log.first_offset == start)
        assert c.same_files(1)
        far.repl.follow(0, EPOCH)  # back: its copy ends below the leader's start
        await until(lambda: far.partition.log.next_offset == 300)
        assert far.partition.log.first_offset == start
        assert c.same_files(1, 2)


async def test_past_the_fencing_deadline_no_producer_is_answered(tmp_path):
    async with Cluster3(tmp_path) as c:
        await c.reconciled()
        fenced = [False]
        c.leader.repl.may_acknowledge = lambda: not fenced[0]
        await asyncio.wait_for(c.send(2), 10)
        fenced[0] = True  # the leader's deadline passed (a pause), its step-down timer not run yet
        held = [c.send(3) for _ in range(3)]
        await until(lambda: all(n.partition.log.next_offset == 11 for n in c.nodes))  # a majority holds them
        await asyncio.sleep(0.2)
        assert not any(f.done() for f in held)
        fenced[0] = False  # a round renewed the lease in time
        c.leader.repl.release_held()
        await asyncio.wait_for(asyncio.gather(*held), 10)
        fenced[0] = True
        more = c.send(1)
        await until(lambda: all(n.partition.log.next_offset == 12 for n in c.nodes))
        c.leader.repl.lead(None)  # the step-down instead: 58, as for every waiting producer
        with pytest.raises(IggyError) as refused:
            await more
        assert refused.value.code == ErrorCode.TRANSIENT_NOT_ACCEPTED
