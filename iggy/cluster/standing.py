"""Whether this node counts toward majorities, or is catching up after losing its data.

A node's copy of the log is part of every majority the cluster relies on: a batch acknowledged
by the leader and one follower is safe because any majority a later leader asks holds it. A
node whose data directory was wiped would break that promise if it went on counting: asked by
a new leader, it answers "empty" where it once held acknowledged batches. So a node counts only
while its data directory still holds what it acknowledged, and one that lost it first copies
the leader's log to the leader's end before it counts again.

Two records tell these apart:

    <system.path>/cluster-member    JSON {"cluster": name, "replica_id": id}, written (fsynced,
                                    directory fsynced) once the node counts
    <prefix>joined/<replica_id>     in etcd, no lease: this replica id has been a member

At start:
- the file is there: the node counts (the file of another cluster or replica id: refuse to start,
  `StandingError`, exit status 3: the data directory is not this node's);
- no file, no `joined/` key: a first start of this replica id; the key is created, then the
  file, and the node counts (key first: a crash between the two leaves a node that catches up
  needlessly, never one that counts without having been recorded);
- no file but the key: the data directory was lost. The node follows the leader without
  counting: it does not campaign (iggy.cluster.election.Election.candidate), its EPOCHS_END
  says so, and the leader leaves it out of every majority (reconciliation, the high-watermark,
  acknowledgements) until it holds every partition up to the leader's end as reconciled and
  up to the high-watermark; then the leader sends IN_SYNC and the node writes the file.

A data directory without the file whose metadata holds anything but the root user each node
makes at its first start, and no `meta/` record of a cluster, is a single node's: its streams,
users or tokens are in no record of the cluster, so the node would diverge from the others. It
is refused at start too (`check_metadata`); a cluster node starts from an empty data directory.

Until etcd has answered, a node without the file does not count either (`known` is False).
If every node of the roster lost its data directory, none may lead: the messages are gone, and
an operator who accepts that deletes `<prefix>joined/` in etcd (docs/CLUSTER.md).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from iggy.cluster.etcd import Etcd
from iggy.metadata.state import State
from iggy.storage.fsutil import fsync_dir

log = logging.getLogger(__name__)

MARKER = "cluster-member"


class StandingError(RuntimeError):
    """The data directory belongs to another cluster or replica id: the server refuses to start."""


class Standing:
    def __init__(self, data_dir: str, cluster: str, replica_id: int, prefix: str):
        self.path = os.path.join(data_dir, MARKER)
        self.cluster = cluster
        self.replica_id = replica_id
        self.key = prefix.encode() + b"joined/" + str(replica_id).encode()
        self.counts = self._read_marker()  # this node's copy counts toward majorities
        self.known = self.counts  # False until etcd said whether this replica id joined before

    def _read_marker(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            raise StandingError(f"{self.path}: unreadable ({exc})") from exc
        mine = {"cluster": self.cluster, "replica_id": self.replica_id}
        if not isinstance(data, dict) or {k: data.get(k) for k in mine} != mine:
            raise StandingError(
                f"{self.path}: this data directory belongs to {data!r}, not to replica {self.replica_id} "
                f"of cluster {self.cluster!r}"
            )
        return True

    def check_metadata(self, state: State) -> None:
        """StandingError for a data directory that holds a single node's metadata (above)."""
        if self.counts or state.cluster_index:
            return
        own = [f"{len(state.streams)} stream(s)"] if state.streams else []
        if len(state.users) > 1:
            own.append(f"{len(state.users)} users")
        if state.tokens:
            own.append(f"{len(state.tokens)} personal access token(s)")
        if own:
            raise StandingError(
                f"{os.path.dirname(self.path)} holds a single node's metadata ({', '.join(own)}) that no record "
                "of the cluster has: a cluster node starts from an empty data directory"
            )

    async def settle(self, etcd: Etcd) -> None:
        """A node without the file: record this replica id in etcd, or learn it was a member
        (then it catches up before it counts). Raises EtcdUnavailable; called again then."""
        if self.known:
            return
        value = json.dumps({"cluster": self.cluster, "replica_id": self.replica_id}).encode()
        key = self.key

        async def join_once(client: Any) -> bool:
            txn = client.transactions
            created, _ = await client.transaction(
                compare=[txn.create(key) == 0], success=[txn.put(key, value)], failure=[]
            )
            return bool(created)

        first = await etcd.call(join_once)
        if first:
            self._write_marker()
            log.info("cluster: replica %d joins for the first time", self.replica_id)
        else:
            log.warning(
                "cluster: replica %d was a member, but its data directory has no %s (it was lost or "
                "replaced): it copies the leader's log and counts toward no majority until it has caught up",
                self.replica_id,
                MARKER,
            )
        self.known = True

    def caught_up(self) -> bool:
        """The leader said this node holds its log (IN_SYNC): write the file; True once it counts."""
        if self.counts:
            return True
        try:
            self._write_marker()
        except OSError as exc:  # it stays a node that does not count; the next IN_SYNC retries
            log.error("cluster: cannot write %s: %s", self.path, exc)
            return False
        log.info("cluster: replica %d has caught up with the leader: it counts toward majorities", self.replica_id)
        return True

    def _write_marker(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(json.dumps({"cluster": self.cluster, "replica_id": self.replica_id}).encode())
            f.flush()
            os.fdatasync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(os.path.dirname(self.path))
        self.counts = True
