"""Short form of tests/reliability/cluster_faults.py: etcd and three nodes, producers and
consumers on a `replicated` and a `persisted` topic, a few faults in a fixed order (SIGKILL of the
leader, SIGSTOP of the leader past its lease, the leader isolated by a partition when network
namespaces can be made, else SIGKILL of a follower), then the strict check of the log."""

import pytest

from tests.cluster.etcd import ETCD, MISSING
from tests.reliability.cluster_faults import Harness, failures

pytestmark = pytest.mark.engine

# the known gap (docs/CLUSTER.md, "Guarantees today"): until step E a node that misses the last
# committed batch may still win the election, and a returning old leader keeps the uncommitted
# suffix it appended (it is not truncated): then an acknowledged message is missing on the new
# leader, or a node's files differ from the leader's below the committed offset
STEP_E = (
    "step E not built: no in-sync rule for who may become leader and no truncation of a returning "
    "leader's uncommitted suffix (docs/CLUSTER.md, Guarantees today)"
)


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
    # what must hold whatever step E's state: no corrupt or invented message, one leader per
    # epoch, every acknowledgement from a node that was leader then, nothing served changed
    assert stats["errors"] == [], stats["errors"]
    assert stats["epochs"]["problems"] == [] and stats["epochs"]["acks_outside_leadership"] == 0, stats["epochs"]
    assert stats["served_changed"] == 0
    found = failures(stats)
    if found:
        pytest.xfail(f"{STEP_E}: {found}")
