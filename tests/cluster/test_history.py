"""The leader's compaction of etcd's history (iggy.cluster.history) against a real etcd:

- `History.step` compacts to the revision it read one period before, never to a newer one, so
  the last period of history stays readable; a history already compacted further is no error;
- on three nodes (the period cut to 1 s by IGGY_CLUSTER_HISTORY_EVERY, a test knob) the
  history is compacted while metadata changes, and the cluster goes on: a follower that was
  down while it was compacted catches up, every node holds the same metadata.
"""

from __future__ import annotations

import asyncio

import aetcd
import pytest
from aetcd import rpc

from iggy.cluster.etcd import Etcd
from iggy.cluster.history import History
from tests.cluster.nodes import TestCluster, wait_for
from tests.cluster.test_compaction import changes_on, same_metadata

PREFIX = b"/history-test/"


async def readable_at(url: str, revision: int) -> bool:
    """Can etcd still answer a read at `revision` (False: compacted away)?"""
    host, port = url.removeprefix("http://").split(":")
    async with aetcd.Client(host=host, port=int(port), timeout=5) as client:
        try:
            await client.kvstub.Range(
                rpc.RangeRequest(key=PREFIX, count_only=True, revision=revision), timeout=5, metadata=client.metadata
            )
        except rpc.AioRpcError as exc:
            assert exc.code() == rpc.StatusCode.OUT_OF_RANGE, exc
            return False
    return True


async def test_each_step_compacts_to_the_revision_read_one_period_before(etcd):
    now = [0.0]
    client = Etcd([etcd.url], 5.0)
    history = History(client, every=10.0, clock=lambda: now[0])
    try:

        async def put(n: int) -> int:
            for i in range(n):
                await client.call(lambda c, i=i: c.put(PREFIX + b"k", b"%d" % i))
            return await client.revision()

        first = await put(3)
        assert await history.step() is None  # the first read: nothing to compact to yet
        second = await put(5)
        now[0] = 9.9
        assert await history.step() is None  # within the period: not even a read
        now[0] = 10.0
        assert await history.step() == first  # the revision read at 0, not the current one
        assert history.compacted == first
        assert not await readable_at(etcd.url, first - 1)
        assert await readable_at(etcd.url, first) and await readable_at(etcd.url, second)
        now[0] = 15.0
        assert await history.step() is None
        third = await put(2)
        now[0] = 20.0
        assert await history.step() == second  # what was read at 10 s
        assert not await readable_at(etcd.url, second - 1) and await readable_at(etcd.url, third)
        now[0] = 30.0
        assert await history.step() == third  # nothing written since 20 s: the same revision
        fourth = await put(3)
        now[0] = 40.0
        assert await history.step() is None  # what was read at 30 s is compacted already
        # etcd compacted further by someone else (e.g. its --auto-compaction): no error
        fifth = await put(2)
        await client.compact(fifth)
        now[0] = 50.0
        assert await history.step() == fourth
        assert not await readable_at(etcd.url, fifth - 1) and await readable_at(etcd.url, fifth)
    finally:
        await client.close()


@pytest.fixture
def cluster_compacting_history(tmp_path, etcd):
    with TestCluster(tmp_path, etcd.url, env={"IGGY_CLUSTER_HISTORY_EVERY": "1"}).running() as started:
        yield started


async def test_three_nodes_compact_the_history_and_go_on(cluster_compacting_history, etcd):
    cluster, leader = cluster_compacting_history
    probe = Etcd([etcd.url], 5.0)
    try:
        await changes_on(cluster, leader, ["a", "b"])  # meta/1..4
        before = await probe.revision()

        async def compacted_past(revision: int) -> bool:
            return not await readable_at(etcd.url, revision)

        # the leader compacts once a second to what it read a second earlier
        await asyncio.to_thread(
            wait_for, lambda: asyncio.run(compacted_past(before)), 15.0, f"history compacted past {before}"
        )
        follower = (leader + 1) % 3
        assert cluster.nodes[follower].stop() == 0
        await changes_on(cluster, leader, ["c", "d"])  # meta/5..8, while it is down
        during = await probe.revision()
        await asyncio.to_thread(
            wait_for, lambda: asyncio.run(compacted_past(during)), 15.0, f"history compacted past {during}"
        )
        await asyncio.to_thread(cluster.nodes[follower].start)
        states = await asyncio.to_thread(same_metadata, cluster, 8)
        assert {s.name for s in states[0].streams.values()} == {"a", "b", "c", "d"}
    finally:
        await probe.close()
