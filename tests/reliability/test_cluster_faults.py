"""Short form of tests/reliability/cluster_faults.py: etcd and three nodes, producers and
consumers on a `replicated` and a `persisted` topic, a few faults in a fixed order (SIGKILL of the
leader, SIGSTOP of the leader past its lease, the leader isolated by a partition when network
namespaces can be made, else SIGKILL of a follower), then the strict check of the log: nothing
acknowledged lost, every node's files equal to the leader's up to the committed offset, one
leader per epoch and every acknowledgement from a node that was leader then. Before step E (a new
leader that reconciles with a majority, truncation of a returning node's uncommitted suffix) it
found lost acknowledged messages and followers whose files differed from the leader's."""

import pytest

from tests.cluster.etcd import ETCD, MISSING
from tests.reliability.cluster_faults import Harness, failures

pytestmark = pytest.mark.engine


def test_faults_lose_no_acknowledged_message(tmp_path):
    if ETCD is None:
        pytest.skip(MISSING)
    # bounded waits (seconds: a leader again, every producer acknowledged again, the files caught
    # up at the check) so the test stays within about a minute and a half at worst
    h = Harness(tmp_path, seed=15, log=None, bounds=(20.0, 8.0, 5.0))
    try:
        third = "isolate-leader" if h.net else "kill-follower"
        stats = h.run(rounds=3, schedule=["kill-leader", "stop-leader", third], time_limit=35)
    finally:
        h.close()
    assert stats["rounds"] >= 2
    for topic in ("replicated", "persisted"):
        assert stats[topic]["acked"] > 0, stats
    assert sum(v["samples"] for v in stats["failover_s"].values()) > 0, stats
    assert failures(stats) == []
