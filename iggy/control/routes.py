"""Keeps the shards' C routing table (`iggy._core.router.Router`) in step with the metadata.

The io_uring shards serve send, poll and store-offset from C without the GIL; everything
they look up comes from the table published here. `sync()` runs after every metadata
commit, every partition open/drop and every consumer-group assignment change (the
listeners of the store, the storage and the group coordinator), on the
thread that made the change, so a client that was told "done" never meets the old routing
afterwards. A topic whose partitions are not all open yet (between the metadata commit and
the storage step of a create) is left out; the next sync adds it. A request the table cannot
serve (unknown names, no permission, anything malformed) goes to the Python control plane,
which answers it with the right error, so the table only ever has to be right, never complete.
"""
from __future__ import annotations

from iggy._core.router import Router, principal
from iggy.control import permissions as perm


class Routes:
    def __init__(self, meta, storage, groups):
        self.meta = meta
        self.storage = storage
        self.groups = groups
        self.router = Router()
        self._published = None
        for source in (meta, storage, groups):
            source.listeners.append(self.sync)

    def sync(self) -> None:
        """Publish a new table if the metadata or the open partitions changed since the last."""
        version = (self.meta.version, self.storage.version, self.groups.version, id(self.meta.state))
        if version == self._published:
            return
        state = self.meta.state
        topics = []
        for s in list(state.streams.values()):
            for t in list(s.topics.values()):
                parts = []
                persisted = False
                for pid in list(t.partitions):
                    p = self.storage.partition(s.id, t.id, pid)
                    if p is None:
                        break
                    parts.append((pid, p.log, p.lock, p.offsets))
                    persisted = p.persisted
                else:
                    groups = [(g.id, g.name, self.groups.owners((s.id, t.id, g.id))) for g in list(t.groups.values())]
                    topics.append((s.id, s.name, t.id, t.name, persisted,
                                   self.storage.balanced_counter(s.id, t.id), parts, groups))
        users = []
        for u in list(state.users.values()):
            allow_all, grants = perm.snapshot(u)
            users.append((principal(u.id, u.generation), allow_all, grants))
        self.router.publish(topics, users)
        self._published = version
