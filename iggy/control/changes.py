"""Metadata changes with their storage side: the one place a record takes effect.

A command handler validates a request and builds a record (iggy.metadata.state: the `op` and
every value the change needs, decided by this node: ids, timestamps, hashes); `apply(plane,
record)` then commits it and does what goes with it outside the metadata, in the order that keeps
a crash harmless:

    topic.create, partitions.create   prepare the partitions' files, commit, install them
                                      (a create the storage cannot serve is refused uncommitted)
    stream.delete, topic.delete       commit, drop the consumer groups' state, delete the files
    partitions.delete                 commit, delete the files, rebalance the groups
    group.delete                      commit, drop its members and stored offsets
    user.delete, user.generation      commit, log out its sessions
    stream.purge, topic.purge         commit (cluster mode only, see `purge`), purge the messages
    everything else                   commit

In cluster mode a follower applies the leader's records through `apply_replicated`, the same
effects with a local commit only (iggy.cluster.metalog), so every node ends in the same state:
the leader's handler and a follower's applier cannot drift apart. A node with empty metadata
that finds the records before its next one compacted away installs the cluster's snapshot
instead (`install_snapshot`): the partitions of every topic in it are made as their creates
would have made them, then the snapshot is committed, then they are served.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iggy.metadata.state import Record

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane

Commit = Callable[[Record], Record]


def apply(plane: ControlPlane, record: Record) -> Record:
    """Commit `record` (through etcd first in cluster mode) with its storage side; in cluster
    mode the leader then deletes the stored offsets of what it deleted or purged from etcd."""
    done = _effect(plane, record, plane.meta.commit)
    if plane.cluster is not None:
        plane.cluster.offsets.forget(record)
    return done


def apply_replicated(plane: ControlPlane, record: Record) -> Record:
    """A follower: the leader's record (it carries its `index`), committed here only."""
    return _effect(plane, record, plane.meta.commit_replicated)


def install_snapshot(plane: ControlPlane, snapshot: dict[str, Any]) -> None:
    """Cluster mode: load the snapshot of meta/ ({index, state}: State.to_dict as of index) into
    a node whose metadata is empty (no record of meta/ applied, no stream, no partition); any
    other node refuses it (ValueError), since records it applied would be overwritten."""
    meta, storage = plane.meta, plane.storage
    if meta.state.cluster_index or meta.state.streams or storage.partitions:
        raise ValueError(
            f"this node's metadata is not empty (applied index {meta.state.cluster_index}, "
            f"{len(meta.state.streams)} streams): it cannot replace it with the snapshot"
        )
    state = snapshot["state"]
    if state.get("cluster_index") != snapshot["index"]:
        raise ValueError(f"the snapshot's state is at index {state.get('cluster_index')}, not {snapshot['index']}")
    prepared = []
    try:
        for s in state["streams"]:
            for t in s["topics"]:
                pids = [pid for pid, _created in t["partitions"]]
                prepared.append(storage.prepare_partitions(s["id"], t["id"], t["settings"], pids, new_topic=True))
        meta.install(state)
    except BaseException:
        for prep in prepared:
            storage.discard(prep)
        raise
    for prep in prepared:
        storage.install(prep)


def purge(plane: ControlPlane, op: str, stream_id: int, topic_id: int | None = None) -> None:
    """Purge a stream (`stream.purge`) or a topic (`topic.purge`). A single node purges and
    writes nothing to its journal, as it always did; a cluster commits the purge as a record
    so that every node purges its copy in the same place of the metadata order."""
    record: Record = (
        {"op": op, "id": stream_id} if topic_id is None else {"op": op, "stream": stream_id, "id": topic_id}
    )
    if plane.cluster is None:
        _purge(plane, record)
    else:
        apply(plane, record)


def _effect(plane: ControlPlane, r: Record, commit: Commit) -> Record:
    op = r["op"]
    storage = plane.storage
    state = plane.meta.state
    if op in ("topic.create", "partitions.create"):
        new_topic = op == "topic.create"
        tid = r["id"] if new_topic else r["topic"]
        ids = range(r["partitions"]) if new_topic else r["ids"]
        settings = r["settings"] if new_topic else state.streams[r["stream"]].topics[tid].settings
        prepared = storage.prepare_partitions(r["stream"], tid, settings, ids, new_topic=new_topic)
        try:
            commit(r)
        except BaseException:
            storage.discard(prepared)
            raise
        storage.install(prepared)
        if not new_topic:
            plane.groups.partitions_changed(r["stream"], state.streams[r["stream"]].topics[tid])
        return r
    if op in ("user.delete", "user.generation"):
        user = copy.copy(state.users[r["id"]])  # as it was: the sessions carry its generation
        commit(r)
        plane.logout_user(user)
        return r
    commit(r)
    if op == "stream.delete":
        plane.groups.forget_stream(r["id"])
        storage.delete_stream(r["id"])
    elif op == "topic.delete":
        plane.groups.forget_topic(r["stream"], r["id"])
        storage.delete_topic(r["stream"], r["id"])
    elif op == "partitions.delete":
        storage.delete_partitions(r["stream"], r["topic"], r["ids"])
        plane.groups.partitions_changed(r["stream"], state.streams[r["stream"]].topics[r["topic"]])
    elif op == "group.delete":
        plane.groups.forget_group(r["stream"], r["topic"], r["id"])
        storage.forget_group_offsets(r["stream"], state.streams[r["stream"]].topics[r["topic"]], r["id"])
    elif op in ("stream.purge", "topic.purge"):
        _purge(plane, r)
    return r


def _purge(plane: ControlPlane, r: Record) -> None:
    if r["op"] == "stream.purge":
        stream = plane.meta.state.streams[r["id"]]
        for t in stream.topics.values():
            plane.storage.purge_topic(stream.id, t)
    else:
        plane.storage.purge_topic(r["stream"], plane.meta.state.streams[r["stream"]].topics[r["id"]])
