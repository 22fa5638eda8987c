"""The metadata log against a real etcd, without a server process (iggy.cluster.metalog):

- the leader's write lands as `meta/<index>` with the record and its index;
- a deposed leader's write (its epoch's `leader` key is gone, another node campaigned) is refused
  by etcd's transaction and leaves meta/ as it was, even though the old leader still believes
  it leads (no fencing deadline involved: this is the fence of the write itself);
- catch_up applies in index order from the index after the last applied one, and stops at a
  record that does not apply;
- a node that wins an election serves only once it has applied meta/ to its end;
- the applied index survives a snapshot of the local metadata (and a single node's snapshot
  does not mention it).
"""

from __future__ import annotations

from types import SimpleNamespace

import aetcd
import pytest

from iggy.cluster.election import Election
from iggy.cluster.etcd import Etcd
from iggy.cluster.membership import Cluster
from iggy.cluster.metalog import Behind, EtcdThread, MetaLog, NotAccepted, decode, meta_key
from iggy.metadata.store import MetadataStore
from tests.cluster.nodes import first_one_leads

PREFIX = "/metalog/"


class Node:
    """An election and a metadata log whose 'apply' appends to a list."""

    def __init__(self, url: str, replica_id: int):
        self.etcd = Etcd([url], 2.0)
        self.election = Election(self.etcd, PREFIX, replica_id, f"n{replica_id}", 2.0)
        self.applied: list[dict] = []
        self.log = MetaLog(self.etcd, PREFIX, lambda: len(self.applied), self.applied.append)
        self.log.writer = EtcdThread([url], 2.0)

    def write(self, record: dict) -> dict:
        self.log.write(record, self.election.epoch)
        self.applied.append(record)  # the local commit that follows a successful write
        return record

    async def close(self) -> None:
        await self.election.resign()
        await self.etcd.close()
        self.log.writer.close()


async def stored(url: str) -> list[dict]:
    host, port = url.removeprefix("http://").split(":")
    async with aetcd.Client(host=host, port=int(port), timeout=5) as client:
        kvs = await client.get_prefix(PREFIX.encode() + b"meta/")
        return [decode(kv.value) for kv in kvs]


async def test_the_leader_writes_and_a_deposed_leader_is_refused(etcd):
    a, b = Node(etcd.url, 0), Node(etcd.url, 1)
    try:
        await first_one_leads(a, b)
        a.write({"op": "stream.create", "id": 0, "name": "first", "created_at": 1})
        assert await stored(etcd.url) == [
            {"op": "stream.create", "id": 0, "name": "first", "created_at": 1, "index": 1}
        ]
        # a loses its lease (as when paused past its TTL) and b wins; a is not told
        old_epoch = a.election.epoch
        await a.etcd.call(lambda c: a.election.lease.revoke())
        await b.election.round()
        assert b.election.is_leader() and b.election.epoch > old_epoch
        await b.log.catch_up()
        assert [r["index"] for r in b.applied] == [1]
        record = {"op": "stream.create", "id": 1, "name": "ghost", "created_at": 2}
        with pytest.raises(NotAccepted) as refused:
            a.write(record)
        assert refused.value.code == 58
        assert "index" not in record
        assert [r["name"] for r in await stored(etcd.url)] == ["first"]
        b.write({"op": "stream.create", "id": 1, "name": "second", "created_at": 3})
        assert [(r["index"], r["name"]) for r in await stored(etcd.url)] == [(1, "first"), (2, "second")]
        # a, back in contact, follows: it applies what it missed and nothing of its own
        await a.log.catch_up()
        assert [(r["index"], r["name"]) for r in a.applied] == [(1, "first"), (2, "second")]
    finally:
        await a.close()
        await b.close()


async def test_a_write_over_an_existing_index_is_refused(etcd):
    """A leader behind meta/ (its local commit failed after etcd took the record) cannot
    overwrite the record: the transaction also requires the key to be new."""
    a = Node(etcd.url, 0)
    try:
        await a.election.round()
        a.write({"op": "user.delete", "id": 3})
        a.applied.clear()  # as if the local commit of index 1 had not happened
        with pytest.raises(NotAccepted):
            a.write({"op": "user.delete", "id": 4})
        assert [r["id"] for r in await stored(etcd.url)] == [3]
    finally:
        await a.close()


async def test_catch_up_stops_at_a_record_that_does_not_apply(etcd):
    a, b = Node(etcd.url, 0), Node(etcd.url, 1)
    try:
        await a.election.round()
        for i in range(3):
            a.write({"op": "stream.create", "id": i, "name": f"s{i}", "created_at": i})

        def apply(record):
            if record["index"] == 2:
                raise KeyError("no such stream")
            b.applied.append(record)

        b.log.apply = apply
        with pytest.raises(Behind):
            await b.log.catch_up()
        assert [r["index"] for r in b.applied] == [1]
        b.log.apply = b.applied.append
        assert await b.log.catch_up() == 3
        assert [r["index"] for r in b.applied] == [1, 2, 3]
        assert meta_key(b"/p/", 12) == b"/p/meta/00000000000000000012"
    finally:
        await a.close()
        await b.close()


def stub_plane(tmp_path):
    """What iggy.cluster.membership.Cluster uses of a control plane: the metadata store (real,
    in tmp_path), the routing table's poll deadline (what it was given, in order), and a storage
    that a stream.create does not touch."""
    meta = MetadataStore(str(tmp_path))
    meta.open()
    poll_until: list[float | None] = []
    storage = SimpleNamespace(partition=lambda s, t, p: None, partitions={})
    return SimpleNamespace(
        meta=meta, routes=SimpleNamespace(set_poll_until=poll_until.append), poll_until=poll_until, storage=storage
    )


def cluster_config(url: str, data_dir: str) -> SimpleNamespace:
    node = {"name": "n0", "ip": "127.0.0.1", "replica_id": 0, "ports": {}}
    return SimpleNamespace(
        system=SimpleNamespace(path=data_dir),
        cluster=SimpleNamespace(
            name="c",
            nodes=[node],
            replica_id=0,
            node=SimpleNamespace(name="n0"),
            heartbeat_timeout=2.0,
            etcd=SimpleNamespace(endpoints=[url], prefix=PREFIX),
            auth=SimpleNamespace(enabled=False, shared_secret=""),
        ),
    )


async def test_an_elected_node_serves_only_after_applying_meta_to_its_end(etcd, tmp_path):
    writer = Node(etcd.url, 1)
    await writer.election.round()
    for i in range(3):
        writer.write({"op": "stream.create", "id": i, "name": f"s{i}", "created_at": i})
    await writer.close()  # resigns: the next campaign wins
    plane = stub_plane(tmp_path)
    cluster = Cluster(cluster_config(etcd.url, str(tmp_path)), plane)
    try:
        await cluster._settle()  # the first start of replica 0: it counts, so it campaigns
        assert cluster.election.candidate
        await cluster.election.round()
        assert cluster.election.is_leader()
        cluster._update()
        # elected, but meta/ holds changes it has not applied: it does not serve yet
        assert not cluster.is_leader() and not cluster.serves(201)
        assert set(plane.poll_until) == {None}  # the shards serve no poll yet
        await cluster._sync
        assert cluster.is_leader() and cluster.serves(201)
        # the shards serve polls up to the fencing deadline
        assert plane.poll_until[-1] == cluster.election.deadline()
        assert plane.meta.state.cluster_index == 3
        assert sorted(s.name for s in plane.meta.state.streams.values()) == ["s0", "s1", "s2"]
    finally:
        await cluster.election.resign()
        await cluster.etcd.close()
        await cluster.metalog.etcd.close()
        plane.meta.close()


def test_the_applied_index_survives_a_snapshot_and_a_single_node_has_none(tmp_path):
    replicated = MetadataStore(str(tmp_path / "cluster"), snapshot_every=2)
    replicated.open()
    for i in range(2):  # a snapshot after the second, and an empty journal
        replicated.commit_replicated({"op": "stream.create", "id": i, "name": f"s{i}", "created_at": i, "index": i + 1})
    replicated.close()
    again = MetadataStore(str(tmp_path / "cluster"))
    again.open()
    assert again.journal.snapshot_seq == 2 and again.state.cluster_index == 2
    again.close()
    single = MetadataStore(str(tmp_path / "single"), snapshot_every=1)
    single.open()
    single.commit({"op": "stream.create", "id": 0, "name": "s", "created_at": 0})
    assert single.state.cluster_index == 0
    assert "cluster_index" not in single.state.to_dict()
    single.close()
