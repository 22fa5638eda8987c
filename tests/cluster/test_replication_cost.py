"""tests/cluster/replication_cost.py in small: W1's producer and consumer against a plain node and
the leader of 3 nodes, for both durabilities; every message produced is consumed (counts only,
no timings)."""

from __future__ import annotations

from tests.cluster.replication_cost import DURABILITIES, SIDES, measure, single_node


def test_w1_consumers_receive_every_message_on_one_node_and_on_the_leader(tmp_path, cluster):
    single = single_node(tmp_path / "single" / "data").start()
    try:
        leader = cluster.wait_leader(20)
        results = measure(str(single.tcp_address), cluster.address(leader), batches=3, rounds=1, shape=(100, 50))
    finally:
        single.stop()
    assert [r["durability"] for r in results] == list(DURABILITIES)
    for row in results:
        for side in SIDES:
            assert row[side]["produce"]["messages"] == 150, (row["durability"], side)
            assert row[side]["consume"]["messages"] == 150, (row["durability"], side)
