"""Keeps the shards' C routing table (`iggy.engine.uring.router.Router`) in step with the metadata.

The io_uring shards serve send, poll and store-offset from C without the GIL; everything
they look up comes from the table kept here. Each change updates only what it touches, in
O(1) per topic or user: the metadata store calls `meta_changed(record)` after every commit
(a topic's create/update/delete, its partitions and groups -> that topic; a stream's rename
or delete -> its topics; a user's change -> that user; a stream's or topic's delete also ->
every user that had grants in that stream, since applying the delete dropped the grants
scoped to it, iggy.metadata.state), the storage calls
`topics_changed(keys)` after partitions are opened or dropped, and the group coordinator
`groups_changed(keys)` after an assignment change. They run on the thread that made the
change, so a client that was told "done" never meets the old routing afterwards. `sync()`
rebuilds everything (at start; a record of an unknown kind). Users are published by principal
(`principal(id, generation)`), so a session of a deleted user whose id was reused gets nothing
from the table. A topic whose partitions are
not all open yet is left out; the storage's call adds it. A request the table cannot serve
(unknown names, no permission, anything malformed) goes to the Python control plane, which
answers it with the right error, so the table only ever has to be right, never complete.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from iggy.control import permissions as perm
from iggy.engine.uring.router import Allow, Router, principal

if TYPE_CHECKING:
    from iggy.control.groups import GroupCoordinator
    from iggy.metadata.state import Record
    from iggy.metadata.store import MetadataStore
    from iggy.storage.partitions import Storage

# metadata records that change nothing the table holds
_IGNORED = {"stream.create", "user.password", "token.create", "token.delete", "jwt.revoke"}


class Routes:
    def __init__(self, meta: MetadataStore, storage: Storage, groups: GroupCoordinator) -> None:
        self.meta = meta
        self.storage = storage
        self.groups = groups
        self.router = Router()
        self._stream_topics: dict[int, set[int]] = {}  # topics in the table, per stream
        # users whose permissions name a stream, per stream id (and the reverse): a stream or
        # topic delete changes exactly these users' grants
        self._stream_users: dict[int, set[int]] = {}
        self._user_streams: dict[int, set[int]] = {}
        # cluster mode: users are granted polls only (sends are replicated by the control
        # plane), and the shards serve them only on the leader within its fencing deadline,
        # up to each partition's high-watermark (Router.set_cluster; iggy.cluster.replication)
        self.cluster = False
        meta.listeners.append(self.meta_changed)
        storage.listeners.append(self.topics_changed)
        groups.listeners.append(self.groups_changed)

    # ---------------------------------------------------------------- whole table

    def sync(self) -> None:
        """Make the table match the whole state (start-up, and the fallback for unknown changes)."""
        state = self.meta.state
        wanted = set()
        for s in list(state.streams.values()):
            for tid in list(s.topics):
                wanted.add((s.id, tid))
                self.topic(s.id, tid)
        for sid, tid in self.router.topic_keys() - wanted:
            self._remove(sid, tid)
        users = set()
        for uid in list(state.users):
            users.add(uid)
            self.user(uid)
        for uid in self.router.user_ids() - users:
            self.user(uid)

    def set_cluster(self) -> None:
        """Cluster mode (before any listener): every user is republished with poll grants only,
        and no poll is served by the shards until the node leads (Router.set_poll_until)."""
        self.cluster = True
        self.router.set_cluster()
        for uid in set(self.meta.state.users) | set(self.router.user_ids()):
            self.user(uid)

    def set_poll_until(self, deadline: float | None) -> None:
        """Cluster mode: the shards serve polls until `deadline` (a time.monotonic() instant, the
        leader's fencing deadline), or none (None: not leading)."""
        self.router.set_poll_until(0 if deadline is None else max(1, int(deadline * 1e9)))

    # ---------------------------------------------------------------- one entry

    def topic(self, sid: int, tid: int) -> None:
        """Publish topic (sid, tid) as the state and the storage have it, or remove it."""
        s = self.meta.state.streams.get(sid)
        t = s.topics.get(tid) if s is not None else None
        if s is None or t is None:
            self._remove(sid, tid)
            return
        parts = []
        persisted = False
        for pid in list(t.partitions):
            p = self.storage.partition(sid, tid, pid)
            if p is None:  # not open yet (or no more): served by Python meanwhile
                self._remove(sid, tid)
                return
            parts.append((pid, p.log, p.lock, p.offsets, p.served))
            persisted = p.persisted
        groups = [(g.id, g.name, self.groups.owners((sid, tid, g.id))) for g in list(t.groups.values())]
        self.router.set_topic(
            (sid, s.name, tid, t.name, persisted, self.storage.balanced_counter(sid, tid), parts, groups)
        )
        self._stream_topics.setdefault(sid, set()).add(tid)

    def _remove(self, sid: int, tid: int) -> None:
        self.router.remove_topic(sid, tid)
        topics = self._stream_topics.get(sid)
        if topics is not None:
            topics.discard(tid)
            if not topics:
                del self._stream_topics[sid]

    def user(self, uid: int) -> None:
        """Publish user `uid` as the state has it (by principal: id and generation), or remove it."""
        u = self.meta.state.users.get(uid)
        for sid in self._user_streams.pop(uid, ()):
            users = self._stream_users.get(sid)
            if users is not None:
                users.discard(uid)
                if not users:
                    del self._stream_users[sid]
        if u is None:
            self.router.remove_user(uid)
            return
        allow_all, grants = perm.data_plane_grants(u)
        if self.cluster:
            allow_all &= Allow.ALLOW_POLL
            grants = [(sid, tid, bits & Allow.ALLOW_POLL) for sid, tid, bits in grants]
        self.router.set_user(principal(u.id, u.generation), allow_all, grants)
        sids = set((u.permissions or {}).get("streams") or {})
        if sids:
            self._user_streams[uid] = sids
            for sid in sids:
                self._stream_users.setdefault(sid, set()).add(uid)

    # ---------------------------------------------------------------- listeners

    def meta_changed(self, record: Record) -> None:
        op = record.get("op", "")
        kind = op.split(".", 1)[0]
        if op in _IGNORED:
            return
        if kind == "topic":
            self.topic(record["stream"], record["id"])
            if op == "topic.delete":
                self._stream_grants_changed(record["stream"])
        elif kind in ("partitions", "group"):
            self.topic(record["stream"], record["topic"])
        elif kind == "stream":  # a rename or a delete: every topic of the stream
            sid = record["id"]
            s = self.meta.state.streams.get(sid)
            for tid in set(self._stream_topics.get(sid, ())) | set(s.topics if s is not None else ()):
                self.topic(sid, tid)
            if op == "stream.delete":
                self._stream_grants_changed(sid)
        elif kind == "user":
            self.user(record["id"])
        else:
            self.sync()

    def _stream_grants_changed(self, sid: int) -> None:
        """A stream or one of its topics was deleted: its grants are gone from the state
        (iggy.metadata.state._drop_permissions), so republish every user that had any there;
        left in the table, they would apply to the next stream or topic given the same id."""
        for uid in list(self._stream_users.get(sid, ())):
            self.user(uid)

    def topics_changed(self, keys: Iterable[tuple[int, int]]) -> None:
        for sid, tid in keys:
            self.topic(sid, tid)

    def groups_changed(self, keys: Iterable[tuple[int, int, int]]) -> None:
        for sid, tid in {(k[0], k[1]) for k in keys}:
            self.topic(sid, tid)
