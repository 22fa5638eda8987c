"""iggy.cluster.standing against a real etcd: the first start of a replica id counts at once,
the same id with a lost data directory does not until IN_SYNC, and a file of another node or a
damaged one is refused, as is a data directory holding a single node's metadata."""

from __future__ import annotations

import json

import pytest

from iggy.cluster.etcd import Etcd
from iggy.cluster.standing import MARKER, Standing, StandingError
from iggy.metadata.state import State

PREFIX = "/iggy/standing-test/"


async def test_first_start_counts_a_lost_data_directory_catches_up(etcd, tmp_path):
    client = Etcd([etcd.url], 2.0)
    try:
        first = Standing(str(tmp_path / "a"), "c", 1, PREFIX)
        (tmp_path / "a").mkdir()
        assert not first.counts and not first.known  # unknown until etcd answers
        await first.settle(client)
        assert first.counts and first.known
        assert json.loads((tmp_path / "a" / MARKER).read_text()) == {"cluster": "c", "replica_id": 1}
        assert Standing(str(tmp_path / "a"), "c", 1, PREFIX).counts  # the file is enough at the next start

        (tmp_path / "b").mkdir()  # replica 1 again, its data directory lost
        lost = Standing(str(tmp_path / "b"), "c", 1, PREFIX)
        await lost.settle(client)
        assert lost.known and not lost.counts
        assert not (tmp_path / "b" / MARKER).exists()
        assert lost.caught_up() and lost.counts  # the leader's IN_SYNC
        assert Standing(str(tmp_path / "b"), "c", 1, PREFIX).counts

        (tmp_path / "c").mkdir()  # another replica id is a first start of its own
        other = Standing(str(tmp_path / "c"), "c", 2, PREFIX)
        await other.settle(client)
        assert other.counts
    finally:
        await client.close()


@pytest.mark.parametrize(
    "content, reason",
    [
        (json.dumps({"cluster": "c", "replica_id": 2}), "belongs to"),
        (json.dumps({"cluster": "other", "replica_id": 1}), "belongs to"),
        (json.dumps([1]), "belongs to"),
        ('{"cluster": "c", "repl', "unreadable"),
    ],
)
def test_a_file_of_another_node_or_a_damaged_one_is_refused(tmp_path, content, reason):
    (tmp_path / MARKER).write_text(content)
    with pytest.raises(StandingError, match=reason):
        Standing(str(tmp_path), "c", 1, PREFIX)


def test_a_single_nodes_metadata_is_refused_a_first_start_or_a_members_is_not(tmp_path):
    fresh = Standing(str(tmp_path), "c", 1, PREFIX)
    state = State()
    state.users = {0: object()}  # the root user every node makes at its first start
    fresh.check_metadata(state)
    for grow in (
        lambda st: st.streams.update({1: object()}),
        lambda st: st.users.update({1: object()}),
        lambda st: st.tokens.update({"h": object()}),
    ):
        single = State()
        single.users = {0: object()}
        grow(single)
        with pytest.raises(StandingError, match="single node's metadata"):
            fresh.check_metadata(single)
        single.cluster_index = 7  # the same held by a node of a cluster (records applied)
        fresh.check_metadata(single)
    (tmp_path / MARKER).write_text(json.dumps({"cluster": "c", "replica_id": 1}))
    member = Standing(str(tmp_path), "c", 1, PREFIX)
    crowded = State()
    crowded.streams = {1: object()}
    member.check_metadata(crowded)  # a member's own data directory
