"""Compaction of `meta/` (docs/CLUSTER.md, "Compaction of meta/"; iggy.cluster.compaction), with a
real etcd and, but for the first test, three nodes on loopback compacting after 5 records
(IGGY_CLUSTER_COMPACT_AFTER, a test knob):

- a deposed leader's compaction (its epoch's `leader` key re-created by another node) is refused
  by etcd's transaction and deletes nothing, although it still believes it leads; the leader of
  the current epoch compacts, and an empty node loads the snapshot and replays what follows;
- after enough changes the keys below the lowest applied index are gone, `snapshot` exists, and
  every node holds the same metadata;
- a stopped node's `applied/` key holds compaction at its index; once it is back it catches up
  and compaction goes past it;
- a node whose data directory is wiped after compaction loads the snapshot: the same metadata
  as the others and its partitions' directories;
- a node whose metadata is not empty and whose next record was compacted away refuses to go on.
"""

from __future__ import annotations

import asyncio
import shutil
from types import SimpleNamespace

import pytest

from iggy.cluster import meta_snapshot
from iggy.cluster.compaction import Compaction, applied_key
from iggy.cluster.etcd import Etcd
from iggy.cluster.metalog import Behind, MetaLog, meta_key
from iggy.control import changes, topics
from iggy.metadata.state import State
from iggy.metadata.store import MetadataStore
from iggy.storage.partitions import Storage
from tests.cluster import snapshot_size
from tests.cluster.nodes import TestCluster, local_metadata, sdk, wait_for
from tests.cluster.test_metadata import shared_part

pytestmark = pytest.mark.engine

CLUSTER_PREFIX = b"/iggy/test-cluster/"
APPLIED = 15.0  # seconds for every node to apply, publish and the leader to compact


async def etcd_meta(url: str, prefix: bytes = CLUSTER_PREFIX) -> tuple[list[int], dict | None, dict[int, int]]:
    """(indexes of the meta/ keys, the snapshot {index, below, state} or None, {replica id: applied/ value})."""
    client = Etcd([url], 5.0)
    try:
        for _attempt in range(3):  # a snapshot replaced while its parts were read: read again
            metas = await client.get_all(prefix + b"meta/", prefix + b"meta0")
            applied = await client.get_all(prefix + b"applied/", prefix + b"applied0")
            got = await client.call(lambda c: c.get(meta_snapshot.header_key(prefix)))
            if got is None:
                snap = None
                break
            header = meta_snapshot.decode_header(got.value)
            try:
                snap = meta_snapshot.assemble(header, await meta_snapshot.read_parts(client, prefix, header), prefix)
                break
            except meta_snapshot.SnapshotMismatch:
                continue
    finally:
        await client.close()
    return (
        [int(kv.key.rsplit(b"/", 1)[1]) for kv in metas],
        snap,
        {int(kv.key.rsplit(b"/", 1)[1]): int(kv.value) for kv in applied},
    )


async def part_names(url: str, prefix: bytes) -> dict[str, int]:
    """{snapshot name: number of its part keys} of every snapshot's parts in etcd."""
    client = Etcd([url], 5.0)
    try:
        kvs = await client.get_all(prefix + b"snapshot-parts/", prefix + b"snapshot-parts0")
    finally:
        await client.close()
    names: dict[str, int] = {}
    for kv in kvs:
        name = kv.key[len(prefix + b"snapshot-parts/") :].split(b"/")[0].decode()
        names[name] = names.get(name, 0) + 1
    return names


def in_etcd(url: str):
    return asyncio.run(etcd_meta(url))


def compacted_past(url: str, below: int):
    """The etcd view once a snapshot deleted every key below `below` or more."""
    return wait_for(
        lambda: (view := in_etcd(url))[1] is not None and view[1]["below"] >= below and view,
        APPLIED,
        f"meta/ compacted below {below}",
    )


def published(url: str, nodes: list[int], index: int) -> None:
    """Until each of `nodes` has put `index` as its applied/ key."""
    wait_for(
        lambda: all(in_etcd(url)[2].get(i) == index for i in nodes), APPLIED, f"nodes {nodes} publish index {index}"
    )


def same_metadata(cluster: TestCluster, index: int, nodes=range(3)) -> list[State]:
    states = [
        wait_for(
            lambda i=i: (s := local_metadata(cluster.nodes[i])).cluster_index >= index and s,
            APPLIED,
            f"node {i} applies meta/ up to {index}",
        )
        for i in nodes
    ]
    expected = shared_part(states[0])
    for i, s in zip(nodes, states, strict=True):
        assert shared_part(s) == expected, i
    return states


@pytest.fixture
def compacting(tmp_path, etcd):
    """Three nodes that compact meta/ after 5 records, and the leader they agree on."""
    with TestCluster(tmp_path, etcd.url, env={"IGGY_CLUSTER_COMPACT_AFTER": "5"}).running() as started:
        yield started


async def changes_on(cluster: TestCluster, leader: int, names: list[str]) -> None:
    client = await sdk(cluster.address(leader))
    for name in names:
        await client.create_stream(name)
        await client.create_topic(name, "t", 2)


# ---------------------------------------------------------------- without a server process

PREFIX = "/compaction/"


class Node:
    """An election, the metadata log of a real store and storage in tmp_path, and compaction."""

    def __init__(self, url: str, replica_id: int, path):
        from iggy.cluster.election import Election

        self.etcd = Etcd([url], 2.0)
        self.election = Election(self.etcd, PREFIX, replica_id, f"n{replica_id}", 2.0)
        self.meta = MetadataStore(str(path))
        self.meta.open()
        self.storage = Storage(str(path))
        self.plane = SimpleNamespace(meta=self.meta, storage=self.storage, groups=None, logout_user=lambda u: None)
        self.log = MetaLog(
            self.etcd,
            PREFIX,
            lambda: self.meta.state.cluster_index,
            lambda r: changes.apply_replicated(self.plane, r),
            lambda snap: changes.install_snapshot(self.plane, snap),
        )
        # parts of 64 bytes: every snapshot of these tests is written in several parts
        self.compaction = Compaction(self.etcd, PREFIX, replica_id, [0, 1], after=3, part_size=64)

    async def put(self, index: int, record: dict) -> None:
        """The leader's write of meta/<index> (unfenced: the fence under test is the compaction's)."""
        from iggy.cluster.metalog import encode

        record["index"] = index
        await self.etcd.call(lambda c: c.put(meta_key(PREFIX.encode(), index), encode(record)))

    async def compact(self):
        return await self.compaction.compact(
            self.election.epoch, lambda: (self.meta.state.cluster_index, self.meta.state.to_dict())
        )

    async def close(self) -> None:
        await self.election.resign()
        await self.etcd.close()
        self.meta.close()
        self.storage.close()


def stream(i: int) -> dict:
    return {"op": "stream.create", "id": i, "name": f"s{i}", "created_at": i}


def topic(i: int) -> dict:
    return {
        "op": "topic.create",
        "stream": i,
        "id": 0,
        "name": "t",
        "created_at": i,
        "partitions": 2,
        "settings": topics.resolve({}),
        "explicit": [],
    }


async def test_a_deposed_leaders_compaction_is_refused_and_an_empty_node_loads_the_snapshot(etcd, tmp_path):
    a, b = Node(etcd.url, 0, tmp_path / "a"), Node(etcd.url, 1, tmp_path / "b")
    try:
        await a.election.round()
        await b.election.round()
        assert a.election.is_leader()
        for i in range(4):
            await a.put(2 * i + 1, stream(i))
            await a.put(2 * i + 2, topic(i))
        await a.log.catch_up()
        await b.log.catch_up()
        assert a.meta.state.cluster_index == b.meta.state.cluster_index == 8
        # b's applied/ key is missing: nothing is compacted
        await a.compaction.publish(8)
        assert await a.compact() is None
        await b.compaction.publish(8)
        # a loses its lease (as when paused past its TTL) and b wins; a is not told
        old_epoch = a.election.epoch
        await a.etcd.call(lambda c: a.election.lease.revoke())
        await b.election.round()
        assert b.election.is_leader() and b.election.epoch > old_epoch
        assert await a.compact() is None  # refused by the fence
        metas, snap, _applied = await etcd_meta(etcd.url, PREFIX.encode())
        assert metas == list(range(1, 9)) and snap is None
        refused = await part_names(etcd.url, PREFIX.encode())  # its parts, which no header names
        assert list(refused) == [f"{8:020d}-{old_epoch:020d}"] and refused[f"{8:020d}-{old_epoch:020d}"] > 1
        # the leader of the current epoch compacts: below 8, snapshot at 8
        assert await b.compact() == 8
        metas, snap, _applied = await etcd_meta(etcd.url, PREFIX.encode())
        assert metas == [8]
        assert snap["index"] == 8 and snap["below"] == 8 and snap["state"]["cluster_index"] == 8
        published_parts = await part_names(etcd.url, PREFIX.encode())  # the refused parts are gone
        assert list(published_parts) == [f"{8:020d}-{b.election.epoch:020d}"]
        await b.put(9, stream(4))
        # a node with an empty data directory loads the snapshot, then replays meta/9
        c = Node(etcd.url, 2, tmp_path / "c")
        try:
            assert await c.log.catch_up() == 9
            assert sorted(s.name for s in c.meta.state.streams.values()) == ["s0", "s1", "s2", "s3", "s4"]
            for i in range(4):
                for pid in range(2):
                    assert (tmp_path / "c" / "streams" / str(i) / "topics" / "0" / "partitions" / str(pid)).is_dir()
                    assert (i, 0, pid) in c.storage.partitions
        finally:
            await c.close()
        again = MetadataStore(str(tmp_path / "c"))  # durable: a restart has it
        again.open()
        assert again.state.cluster_index == 9 and len(again.state.streams) == 5
        again.close()
        # a, not empty and at 8, is not affected; a node not empty whose next record is gone
        # refuses to go on, and stays where it was
        await b.put(10, stream(5))
        await b.put(11, stream(6))
        await b.put(12, stream(7))
        await b.log.catch_up()
        await b.compaction.publish(12)
        await a.compaction.publish(12)
        assert await b.compact() == 12
        assert list(await part_names(etcd.url, PREFIX.encode())) == [f"{12:020d}-{b.election.epoch:020d}"]
        d = Node(etcd.url, 3, tmp_path / "d")
        try:
            d.meta.commit_replicated({**stream(0), "index": 1})
            with pytest.raises(Behind, match="not empty"):
                await d.log.catch_up()
            assert d.meta.state.cluster_index == 1
        finally:
            await d.close()
        # a damaged part: an empty node refuses the snapshot and stays empty
        name = f"{12:020d}-{b.election.epoch:020d}"
        await b.etcd.call(lambda c: c.put(meta_snapshot.part_key(PREFIX.encode(), name, 1), b"x" * 64))
        e = Node(etcd.url, 4, tmp_path / "e")
        try:
            with pytest.raises(Behind, match="damaged"):
                await e.log.catch_up()
            assert e.meta.state.cluster_index == 0 and not e.meta.state.streams
        finally:
            await e.close()
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------- three server nodes


async def test_meta_is_compacted_below_the_lowest_applied_index(compacting, etcd):
    cluster, leader = compacting
    await changes_on(cluster, leader, [f"s{i}" for i in range(6)])  # meta/1..12
    metas, snap, applied = await asyncio.to_thread(compacted_past, etcd.url, 12)
    assert snap["below"] == 12 and snap["index"] >= 12
    assert metas[0] == 12 and metas == list(range(12, metas[-1] + 1))
    assert set(applied) == {0, 1, 2}
    states = await asyncio.to_thread(same_metadata, cluster, 12)
    assert {s.name for s in states[0].streams.values()} == {f"s{i}" for i in range(6)}
    # the compaction does not stop what follows
    await changes_on(cluster, leader, ["after"])
    await asyncio.to_thread(same_metadata, cluster, 14)


async def test_a_stopped_node_holds_compaction_at_its_index_until_it_is_back(compacting, etcd):
    cluster, leader = compacting
    down = (leader + 1) % 3
    await changes_on(cluster, leader, ["a", "b"])  # meta/1..4
    await asyncio.to_thread(published, etcd.url, [down], 4)
    assert cluster.nodes[down].stop() == 0
    await changes_on(cluster, leader, [f"s{i}" for i in range(8)])  # meta/5..20
    others = [i for i in range(3) if i != down]
    await asyncio.to_thread(published, etcd.url, others, 20)
    # the leader had every reason to compact but the stopped node's index 4
    await asyncio.sleep(2.5)
    metas, snap, applied = await asyncio.to_thread(in_etcd, etcd.url)
    assert applied[down] == 4
    assert snap is None or snap["below"] <= 4
    assert 5 in metas  # the record the stopped node needs next
    await asyncio.to_thread(cluster.nodes[down].start)
    metas, snap, applied = await asyncio.to_thread(compacted_past, etcd.url, 20)
    assert metas[0] >= 20
    await asyncio.to_thread(same_metadata, cluster, 20)
    log = cluster.nodes[down].log()
    assert "loaded the metadata snapshot" not in log  # it replayed from 5


async def test_a_wiped_node_loads_the_snapshot(compacting, etcd):
    cluster, leader = compacting
    wiped = (leader + 2) % 3
    client = await sdk(cluster.address(leader))
    await changes_on(cluster, leader, [f"s{i}" for i in range(4)])
    await client.create_partitions("s1", "t", 3)
    await client.create_consumer_group("s1", "t", "billing")
    await client.create_user("alice", "secret-1")
    await client.delete_stream("s2")  # meta/1..12
    await asyncio.to_thread(compacted_past, etcd.url, 12)
    assert cluster.nodes[wiped].stop() == 0
    shutil.rmtree(cluster.nodes[wiped].data_dir)
    await asyncio.to_thread(cluster.nodes[wiped].start)
    await changes_on(cluster, leader, ["after"])  # meta/13, 14
    states = await asyncio.to_thread(same_metadata, cluster, 14)
    assert {s.name for s in states[wiped].streams.values()} == {"s0", "s1", "s3", "after"}
    assert states[wiped].user_by_name("alice") is not None
    assert "loaded the metadata snapshot of meta/ at index" in cluster.nodes[wiped].log()
    streams = cluster.nodes[wiped].data_dir / "streams"
    for s in states[leader].streams.values():
        for t in s.topics.values():
            for pid in t.partitions:
                assert (streams / str(s.id) / "topics" / str(t.id) / "partitions" / str(pid)).is_dir()
    assert sorted(p.name for p in streams.iterdir()) == sorted(str(s.id) for s in states[leader].streams.values())
    # its applied/ key follows, so compaction goes on past the snapshot
    await asyncio.to_thread(published, etcd.url, [wiped], 14)


def test_the_key_layout_and_the_snapshot_size_tool(capsys):
    assert applied_key(b"/p/", 2) == b"/p/applied/2"
    assert meta_snapshot.header_key(b"/p/") == b"/p/snapshot"
    assert meta_snapshot.part_key(b"/p/", "n", 3) == b"/p/snapshot-parts/n/000003"
    # every snapshot's parts but one name's, and nothing outside snapshot-parts/
    assert meta_snapshot.other_parts(b"/p/", "n") == [
        (b"/p/snapshot-parts/", b"/p/snapshot-parts/n/"),
        (b"/p/snapshot-parts/n0", b"/p/snapshot-parts0"),
    ]
    snapshot_size.main([10])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("10 topics: ") and "(fits)" in lines[0] and len(lines) == 3
