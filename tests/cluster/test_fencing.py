"""The election and its fencing against a real etcd, driven round by round (no server process).

- the first node to campaign wins; its epoch is the leader key's create_revision;
- a failed renewal extends nothing: the node acts as leader until exactly renewed_at + 2/3 TTL,
  which is before etcd can expire the lease (renewed_at + TTL);
- another node wins only after the lease expired or was revoked, with a larger epoch, and the
  old leader, back in contact, finds its lease gone and follows;
- a leader killed and started again within its lease is reported as leader by nobody (itself
  included) until an election is won again.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from iggy.cluster import election as election_module
from iggy.cluster.election import FENCE_FRACTION, Election
from iggy.cluster.etcd import Etcd, EtcdUnavailable


class CuttableEtcd(Etcd):
    """An Etcd whose calls fail while `cut` is set (a node cut off from etcd)."""

    cut = False

    async def call(self, fn):
        if self.cut:
            raise EtcdUnavailable("cut off by the test")
        return await super().call(fn)


def node(etcd_url: str, replica_id: int, ttl: float = 2.0) -> Election:
    return Election(CuttableEtcd([etcd_url], 2.0), "/fencing/", replica_id, f"n{replica_id}", ttl)


def at(monkeypatch, instant: float, check):
    """`check()` with the election module's clock at `instant` (monotonic seconds)."""
    with monkeypatch.context() as m:
        m.setattr(election_module.time, "monotonic", lambda: instant)
        return check()


async def test_first_campaign_wins_and_the_other_follows(etcd):
    a, b = node(etcd.url, 0), node(etcd.url, 1)
    await a.round()
    await b.round()
    await a.round()  # sees b's members/ key now
    assert a.is_leader() and not b.is_leader()
    assert a.epoch == b.epoch > 0
    assert (a.current_leader(), b.current_leader()) == (0, 0)
    assert a.members == b.members == {0, 1}
    await a.resign()
    await b.round()
    assert b.is_leader() and b.epoch > a.epoch
    await b.resign()


async def test_a_failed_renewal_extends_nothing(etcd, monkeypatch):
    a = node(etcd.url, 0)
    await a.round()
    assert a.is_leader()
    deadline = a.deadline()
    assert deadline == pytest.approx(a.renewed_at + FENCE_FRACTION * a.ttl)
    assert deadline < a.renewed_at + a.ttl  # before etcd can expire the lease
    a.etcd.cut = True
    with pytest.raises(EtcdUnavailable):
        await a.round()
    assert a.deadline() == deadline
    assert at(monkeypatch, deadline - 0.001, a.is_leader)
    assert not at(monkeypatch, deadline, a.is_leader)
    assert at(monkeypatch, deadline, a.current_leader) is None  # reports no leader, not itself
    a.etcd.cut = False
    await a.resign()


async def test_after_the_lease_expires_another_node_wins_and_the_old_leader_follows(etcd):
    a, b = node(etcd.url, 0), node(etcd.url, 1)
    await a.round()
    await b.round()
    first_epoch = a.epoch
    a.etcd.cut = True  # a can no longer renew
    cut_at = time.monotonic()
    while not b.is_leader():
        assert time.monotonic() < cut_at + 3 * b.ttl, "b never won"
        assert b.current_leader() in (0, None)
        await b.round()
        await asyncio.sleep(b.interval)
    # b won only once a could not act as leader any more
    assert not a.is_leader()
    assert b.epoch > first_epoch
    a.etcd.cut = False
    await a.round()  # its lease expired: a new one, and it follows
    assert not a.is_leader()
    assert (a.leader_id, a.epoch) == (1, b.epoch)
    assert a.current_leader() == 1
    await a.resign()
    await b.resign()


async def test_a_leader_started_again_within_its_lease_is_reported_by_nobody(etcd):
    dead, other = node(etcd.url, 0), node(etcd.url, 1)
    await dead.round()
    await other.round()
    assert other.current_leader() == 0
    # replica 0 is killed (its lease lives on until it expires) and started again at once
    again = node(etcd.url, 0)
    await again.round()
    await other.round()
    assert again.leader_id == other.leader_id == 0  # the key still names replica 0
    assert again.current_leader() is None and not again.is_leader()
    assert other.current_leader() is None
    deadline = time.monotonic() + 3 * 2.0
    while not (again.is_leader() or other.is_leader()):  # the old lease expires: a new election
        assert time.monotonic() < deadline, "nobody won after the dead process's lease expired"
        await asyncio.sleep(0.2)
        await again.round()
        await other.round()
    await again.round()
    assert again.current_leader() == other.current_leader() is not None
    assert again.epoch == other.epoch > dead.epoch
    for e in (again, other):
        await e.resign()
    await dead.etcd.close()
