"""Consumer groups: the durable group list and the live membership with its assignments.

Groups (id, name) are metadata; members are connections and live only in memory. A member
is the session that joined; a session leaves every group when it logs out, disconnects or
is evicted by the heartbeat check.

Assignment: after every membership or partition-count change the group is rebalanced in
full: partitions in id order are dealt round-robin over members in join order, and the
group's generation goes up. The SDK learns its partitions with SYNC (606) and polls only
those; a group poll or offset store for a partition the caller does not own is refused with
5009, which makes the SDK re-sync. So every partition has exactly one owner at a time and
each message of a partition goes to one member.

Wire bodies (TCP.md 7.3, 9.8)::

    create   Identifier stream, Identifier topic, WireName name  -> [0] + details
    others   Identifier stream, Identifier topic, Identifier group
    ConsumerGroup  u32 id, u32 partitions_count, u32 members_count, WireName name
    details        ConsumerGroup + members x (u32 member id, u32 count, count x u32 partition)
    sync           u64 generation, u32 count, count x u32 partition   (empty: not a member)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from iggy.protocol import codes
from iggy.protocol.wire import Reader, Writer
from iggy.control import permissions as perm
from iggy.control.plane import command
from iggy.control.topics import resolve_topic
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.metadata.state import find_by_ident


@dataclass
class Member:
    id: int
    session: object
    partitions: list = field(default_factory=list)


@dataclass
class Membership:
    generation: int = 0
    members: list = field(default_factory=list)   # in join order


class GroupCoordinator:
    """Live membership of every group, keyed by (stream id, topic id, group id)."""

    def __init__(self, plane):
        self.plane = plane
        self.groups: dict[tuple[int, int, int], Membership] = {}
        self.version = 0          # bumped by every assignment change
        self.listeners: list = []  # listener(group keys), after each (the shards' routing table follows)

    def _changed(self, keys) -> None:
        self.version += 1
        for listener in self.listeners:
            listener(keys)

    def owners(self, key) -> dict:
        """{partition id: client id of the member that owns it} of one group."""
        m = self.groups.get(key)
        if m is None:
            return {}
        return {pid: member.session.client_id for member in m.members for pid in member.partitions}

    def membership(self, key) -> Membership:
        m = self.groups.get(key)
        if m is None:
            m = self.groups[key] = Membership()
        return m

    def member_of(self, key, session) -> Member | None:
        m = self.groups.get(key)
        if m is None:
            return None
        for member in m.members:
            if member.session is session:
                return member
        return None

    def rebalance(self, key) -> None:
        m = self.groups.get(key)
        if m is None:
            return
        sid, tid, _ = key
        topic = self.plane.meta.state.streams[sid].topics[tid]
        for member in m.members:
            member.partitions = []
        if m.members:
            for i, pid in enumerate(sorted(topic.partitions)):
                m.members[i % len(m.members)].partitions.append(pid)
        m.generation += 1
        self._changed((key,))

    def join(self, key, session) -> None:
        if self.member_of(key, session) is not None:
            return
        m = self.membership(key)
        used = {member.id for member in m.members}
        slot = 0
        while slot in used:
            slot += 1
        m.members.append(Member(slot, session))
        session.groups.add(key)
        self.rebalance(key)

    def leave(self, key, session) -> bool:
        m = self.groups.get(key)
        member = self.member_of(key, session)
        if member is None:
            return False
        m.members.remove(member)
        session.groups.discard(key)
        self.rebalance(key)
        return True

    def leave_all(self, session) -> None:
        for key in list(session.groups):
            self.leave(key, session)

    def owns(self, key, session, partition_id: int) -> bool:
        member = self.member_of(key, session)
        return member is not None and partition_id in member.partitions

    def partitions_changed(self, stream_id: int, topic) -> None:
        for key in [k for k in self.groups if k[0] == stream_id and k[1] == topic.id]:
            self.rebalance(key)

    def forget(self, predicate) -> None:
        keys = [k for k in self.groups if predicate(k)]
        for key in keys:
            for member in self.groups[key].members:
                member.session.groups.discard(key)
            del self.groups[key]
        self._changed(keys)

    def forget_group(self, stream_id, topic_id, group_id) -> None:
        self.forget(lambda k: k == (stream_id, topic_id, group_id))

    def forget_topic(self, stream_id, topic_id) -> None:
        self.forget(lambda k: k[0] == stream_id and k[1] == topic_id)

    def forget_stream(self, stream_id) -> None:
        self.forget(lambda k: k[0] == stream_id)


def find_group(topic, ident):
    return find_by_ident(topic.groups, ident)


def get_group_or_fail(topic, ident):
    """The group, else 5000 for an id or a name alike (see streams.get_stream_or_fail)."""
    g = find_group(topic, ident)
    if g is None:
        raise IggyError(ErrorCode.CONSUMER_GROUP_ID_NOT_FOUND)
    return g


def _resolve(plane, session, r: Reader, with_group: bool = True):
    sid, tid = r.identifier(), r.identifier()
    gid = r.identifier() if with_group else None
    s, t = resolve_topic(plane, sid, tid)
    perm.require(perm.can_read_topic(plane.user_of(session), s.id, t.id))
    g = get_group_or_fail(t, gid) if with_group else None
    return s, t, g


def encode_group(plane, w: Writer, s, t, g) -> None:
    m = plane.groups.groups.get((s.id, t.id, g.id))
    w.u32(g.id).u32(len(t.partitions)).u32(len(m.members) if m else 0).name(g.name)


def encode_group_details(plane, s, t, g) -> bytes:
    w = Writer()
    encode_group(plane, w, s, t, g)
    m = plane.groups.groups.get((s.id, t.id, g.id))
    for member in (m.members if m else []):
        w.u32(member.id).u32(len(member.partitions))
        for pid in member.partitions:
            w.u32(pid)
    return w.getvalue()


def create_group_by(plane, s, t, name: str):
    if any(g.name == name for g in t.groups.values()):
        raise IggyError(ErrorCode.CONSUMER_GROUP_NAME_ALREADY_EXISTS)
    rec = plane.meta.commit({"op": "group.create", "stream": s.id, "topic": t.id, "id": t.next_group_id,
                             "name": name})
    return t.groups[rec["id"]]


def delete_group_by(plane, s, t, g) -> None:
    plane.meta.commit({"op": "group.delete", "stream": s.id, "topic": t.id, "id": g.id})
    plane.groups.forget_group(s.id, t.id, g.id)
    plane.storage.forget_group_offsets(s.id, t, g.id)


@command(codes.GET_CONSUMER_GROUP)
def get_consumer_group(plane, session, r: Reader):
    # a missing stream or topic is 1009/2010, a missing group an empty body, after the
    # permission check (upstream core/server/src/responses.rs: ensure_topic_exists)
    sid, tid, gid = r.identifier(), r.identifier(), r.identifier()
    s, t = resolve_topic(plane, sid, tid)
    perm.require(perm.can_read_topic(plane.user_of(session), s.id, t.id))
    g = find_group(t, gid)
    if g is None:
        return None
    return encode_group_details(plane, s, t, g)


@command(codes.GET_CONSUMER_GROUPS)
def get_consumer_groups(plane, session, r: Reader):
    s, t, _ = _resolve(plane, session, r, with_group=False)
    w = Writer()
    for g in sorted(t.groups.values(), key=lambda g: g.id):
        encode_group(plane, w, s, t, g)
    return w.getvalue()


@command(codes.CREATE_CONSUMER_GROUP)
def create_consumer_group(plane, session, r: Reader):
    sid, tid = r.identifier(), r.identifier()
    name = r.name()
    s, t = resolve_topic(plane, sid, tid)
    perm.require(perm.can_read_topic(plane.user_of(session), s.id, t.id))
    g = create_group_by(plane, s, t, name)
    return encode_group_details(plane, s, t, g)


@command(codes.DELETE_CONSUMER_GROUP)
def delete_consumer_group(plane, session, r: Reader):
    s, t, g = _resolve(plane, session, r)
    delete_group_by(plane, s, t, g)


@command(codes.JOIN_CONSUMER_GROUP)
def join_consumer_group(plane, session, r: Reader):
    s, t, g = _resolve(plane, session, r)
    plane.groups.join((s.id, t.id, g.id), session)


@command(codes.LEAVE_CONSUMER_GROUP)
def leave_consumer_group(plane, session, r: Reader):
    s, t, g = _resolve(plane, session, r)
    if not plane.groups.leave((s.id, t.id, g.id), session):
        raise IggyError(ErrorCode.CONSUMER_GROUP_MEMBER_NOT_FOUND)


@command(codes.SYNC_CONSUMER_GROUP)
def sync_consumer_group(plane, session, r: Reader):
    # only the caller's own membership is read: a missing stream, topic or group, like a group
    # the session is not in, answers an empty body (upstream core/server/src/dispatch.rs,
    # handle_sync_consumer_group)
    sid, tid, gid = r.identifier(), r.identifier(), r.identifier()
    from iggy.control.streams import find_stream
    from iggy.control.topics import find_topic
    s = find_stream(plane, sid)
    t = find_topic(s, tid) if s is not None else None
    g = find_group(t, gid) if t is not None else None
    if g is None:
        return None
    key = (s.id, t.id, g.id)
    member = plane.groups.member_of(key, session)
    if member is None:
        return None
    w = Writer().u64(plane.groups.groups[key].generation).u32(len(member.partitions))
    for pid in member.partitions:
        w.u32(pid)
    return w.getvalue()
