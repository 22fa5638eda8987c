"""Consumer groups: the durable group list and the live membership with its assignments.

Groups (id, name) are metadata; members are connections and live only in memory. A member
is the session that joined; a session leaves every group when it logs out, disconnects or
is evicted by the heartbeat check.

Assignment is cooperative (as Apache Iggy's, SEMANTICS 6): a change moves as few partitions
as it must, and never takes a partition from a member that still has messages in flight there.

* Target: after every join, leave or partition-count change each member is due floor or ceil
  of partitions / members; the members already holding the most keep the larger shares, and
  every member keeps the partitions it has up to its share. Partitions beyond a member's share
  (the highest ids, those it has nothing in flight on first) and partitions nobody holds are
  dealt to the members below their share, fewest first.
* Joining member: it gets a partition at once when the owner has nothing in flight on it
  (never polled it, or committed everything it was served). Otherwise the partition is
  *handed over*: the owner keeps it for offset commits but may no longer poll it (SYNC leaves
  it out, a poll answers 5009), and it moves when the owner's commit reaches what it was served
  (checked at that commit, at a refused poll, and every second) or, at the latest, after
  `consumer_group.rebalancing_timeout` (30 s), when the move is forced.
* Leaving or disconnected member: its partitions go to the others at once (it cannot commit
  any more); the others keep theirs.
* Every change, including each completed hand-over, raises the group's generation.

"In flight" compares two offsets of the partition under its lock: the group's stored offset and
what the group was last served there, by which client (iggy.storage.served_offsets, recorded by
every group poll, on the C data plane too).

Fencing: a group poll must name a partition the caller owns and is not handing over, a
group offset store or delete one it owns; anything else, from a member or not, answers 5009
(ConsumerGroupPartitionNotOwned, as upstream's consumer_group_fence), which makes the SDK
re-sync. So a partition has one owner at a time, and each message goes to one member unless
the owner gave it up uncommitted (left, or the timeout forced the move).

Threads: membership changes run on the event loop. The fences are read by the io_uring shard
threads too, so the state is guarded by a lock; a shard thread that may free a partition (a
commit, a refused poll) posts the check to the loop. The routing table's owners
(iggy.engine.uring.routing) hold for each partition the member that may poll it (none while it
is handed over), so the C data plane serves only those and hands everything else to Python.

Wire bodies (TCP.md 7.3, 9.8)::

    create   Identifier stream, Identifier topic, WireName name  -> [0] + details
    others   Identifier stream, Identifier topic, Identifier group
    ConsumerGroup  u32 id, u32 partitions_count, u32 members_count, WireName name
    details        ConsumerGroup + members x (u32 member id, u32 count, count x u32 partition)
                   (a partition being handed over is listed under its current owner)
    sync           u64 generation, u32 count, count x u32 partition   (empty: not a member)
                   (the partitions the caller may poll)
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVarTuple

from iggy.control import changes, lookup
from iggy.control import permissions as perm
from iggy.control.lookup import Ident
from iggy.control.registry import command
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader, Writer
from iggy.storage.consumer_offsets import GROUP

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session
    from iggy.metadata.state import GroupMeta, StreamMeta, TopicMeta

_Ts = TypeVarTuple("_Ts")

GroupKey = tuple[int, int, int]  # (stream id, topic id, group id)
# the partitions of a group each member may poll, and those it owns: {partition id: client id}
Fences = tuple[dict[int, int], dict[int, int]]

# how often pending hand-overs are checked for a drained owner or an expired timeout
CHECK_INTERVAL = 1.0


@dataclass(eq=False)
class Member:
    id: int
    session: Session
    partitions: list[int] = field(default_factory=list)  # owned (hand-overs included), sorted


@dataclass(eq=False)
class Handover:
    """A partition on its way from `source` (still its owner) to `target`."""

    source: Member
    target: Member
    deadline: float  # time.monotonic() after which the move is forced


@dataclass
class Membership:
    generation: int = 0
    members: list[Member] = field(default_factory=list)  # in join order
    handovers: dict[int, Handover] = field(default_factory=dict)  # partition id -> Handover

    def pollable(self, member: Member) -> list[int]:
        return [pid for pid in member.partitions if pid not in self.handovers]


class GroupCoordinator:
    """Live membership of every group, keyed by (stream id, topic id, group id)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.groups: dict[GroupKey, Membership] = {}
        self.version = 0  # bumped by every assignment change
        # listener(group keys), after each (the shards' routing table follows)
        self.listeners: list[Callable[[Collection[GroupKey]], None]] = []
        config = getattr(plane, "config", None)
        # seconds (the configuration converts durations when it is loaded)
        self.rebalancing_timeout = config.consumer_group.rebalancing_timeout if config is not None else 30.0
        self._lock = threading.RLock()
        # per group, published after each change and only ever replaced, so that the data
        # path can read it under a partition's lock without taking ours:
        # ({partition: client id that may poll it}, {partition: client id that owns it})
        self._published: dict[GroupKey, Fences] = {}
        self._loop: asyncio.AbstractEventLoop | None
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside a server (unit tests): everything runs inline
            self._loop = None
        self._loop_thread = threading.get_ident()
        self._timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- reading

    def owners(self, key: GroupKey) -> dict[int, int]:
        """{partition id: client id of the member that may poll it} of one group (a partition
        being handed over has none): what the routing table holds for the C data plane."""
        published = self._published.get(key)
        return dict(published[0]) if published is not None else {}

    def may_use(self, key: GroupKey, session: Session, partition_id: int, poll: bool) -> bool:
        """The fence as last published, for the data path to check again under the partition's
        lock: a change made meanwhile (a hand-over starts, a partition moves) is published
        before the coordinator looks at the partition under that lock, so no poll is served to
        a member after it was found to have nothing in flight."""
        published = self._published.get(key)
        return published is not None and published[0 if poll else 1].get(partition_id) == session.client_id

    def membership(self, key: GroupKey) -> Membership:
        m = self.groups.get(key)
        if m is None:
            m = self.groups[key] = Membership()
        return m

    def member_of(self, key: GroupKey, session: Session) -> Member | None:
        with self._lock:
            m = self.groups.get(key)
            if m is None:
                return None
            for member in m.members:
                if member.session is session:
                    return member
            return None

    def assignment(self, key: GroupKey, session: Session) -> tuple[int, list[int]] | None:
        """(generation, partitions the session may poll) or None if it is no member (SYNC)."""
        with self._lock:
            member = self.member_of(key, session)
            if member is None:
                return None
            m = self.groups[key]
            return m.generation, m.pollable(member)

    def fence(self, key: GroupKey, session: Session, partition_id: int, poll: bool) -> bool:
        """May `session` poll (poll=True) or commit/delete the offset of (poll=False) this
        partition of the group? A poll of a partition it is handing over is refused, and checks
        whether the partition can move now."""
        with self._lock:
            member = self.member_of(key, session)
            if member is None or partition_id not in member.partitions:
                return False
            if not poll or partition_id not in self.groups[key].handovers:
                return True
        self._on_loop(self._settle, key, partition_id)
        return False

    def committed(self, key: GroupKey, session: Session, partition_id: int) -> None:
        """The session stored the group's offset of the partition: if it is handing it over,
        the partition may be free to move now."""
        with self._lock:
            m = self.groups.get(key)
            h = m.handovers.get(partition_id) if m is not None else None
            if h is None or h.source.session is not session:
                return
        self._on_loop(self._settle, key, partition_id)

    def _in_flight(self, key: GroupKey, member: Member, partition_id: int) -> bool:
        """Has `member` been served messages of the partition that the group has not committed?"""
        sid, tid, gid = key
        partition = self.plane.storage.partition(sid, tid, partition_id)
        if partition is None:
            return False
        with partition.lock:
            if partition.log.closed:
                return False
            served = partition.served.get(gid)
            if served is None or served[1] != member.session.client_id:
                return False
            stored = partition.offsets.get(GROUP, gid)
        return stored is None or stored < served[0]

    # ---------------------------------------------------------------- changing

    def _changed(self, keys: Collection[GroupKey]) -> None:
        """Publish the groups' fences, then tell the listeners (the routing table)."""
        with self._lock:
            for key in keys:
                m = self.groups.get(key)
                if m is None:
                    self._published.pop(key, None)
                    continue
                pollable: dict[int, int] = {}
                owned: dict[int, int] = {}
                for member in m.members:
                    for pid in member.partitions:
                        owned[pid] = member.session.client_id
                        if pid not in m.handovers:
                            pollable[pid] = member.session.client_id
                self._published[key] = (pollable, owned)
            self.version += 1
        for listener in self.listeners:
            listener(keys)

    def _on_loop(self, fn: Callable[[*_Ts], object], *args: *_Ts) -> None:
        """Run fn on the event loop: now if this is its thread, else posted."""
        if self._loop is None or threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            try:
                self._loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed: the server is stopping
                pass

    def _topic_partitions(self, key: GroupKey) -> list[int]:
        sid, tid, _ = key
        s = self.plane.meta.state.streams.get(sid)
        t = s.topics.get(tid) if s is not None else None
        return sorted(t.partitions) if t is not None else []

    def rebalance(self, key: GroupKey) -> None:
        """Bring the group's assignment to its target (see the module docstring): every
        partition that must change hands starts as a hand-over, published (its owner can no
        longer poll it) before `_settle` moves at once those the owner has nothing in flight on."""
        with self._lock:
            m = self.groups.get(key)
            if m is None:
                return
            self._rebalance(key, m, self._topic_partitions(key))
        self._changed((key,))
        self._settle(key)

    def _rebalance(self, key: GroupKey, m: Membership, pids: list[int]) -> None:
        members = m.members
        valid = set(pids)
        for member in members:
            member.partitions = [pid for pid in member.partitions if pid in valid]
        for pid, h in list(m.handovers.items()):
            if pid not in valid or h.source not in members or h.target not in members or pid not in h.source.partitions:
                del m.handovers[pid]
        m.generation += 1
        if not members:
            m.handovers.clear()
            return
        owner = {pid: member for member in members for pid in member.partitions}
        target = {pid: (m.handovers[pid].target if pid in m.handovers else owner.get(pid)) for pid in pids}
        base, extra = divmod(len(pids), len(members))
        count = dict.fromkeys(members, 0)
        for t in target.values():
            if t is not None:
                count[t] += 1
        order = {member: i for i, member in enumerate(members)}
        # the larger shares go to the members holding the most, so the fewest partitions move
        ranked = sorted(members, key=lambda mb: (-count[mb], order[mb]))
        quota = {member: base + (1 if rank < extra else 0) for rank, member in enumerate(ranked)}
        pool = [pid for pid in pids if target[pid] is None]
        for member in members:
            surplus = count[member] - quota[member]
            if surplus <= 0:
                continue
            # cheapest to give up first: a partition still on its way to this member (its owner
            # keeps it), then one it holds with nothing in flight (moves at once); highest ids first
            mine = [pid for pid in pids if target[pid] is member]
            mine.sort(
                key=lambda pid: (
                    owner.get(pid) is member,
                    owner.get(pid) is member and self._in_flight(key, member, pid),
                    -pid,
                )
            )
            for pid in mine[:surplus]:
                target[pid] = None
                pool.append(pid)
                count[member] -= 1
        rest = []
        for pid in sorted(pool):  # back to its owner if that one has room: nothing moves
            o = owner.get(pid)
            if o is not None and count[o] < quota[o]:
                target[pid] = o
                count[o] += 1
            else:
                rest.append(pid)
        for pid in rest:
            t = min((mb for mb in members if count[mb] < quota[mb]), key=lambda mb: (count[mb], order[mb]))
            target[pid] = t
            count[t] += 1
        now = time.monotonic()
        for pid in pids:
            t, o, moving = target[pid], owner.get(pid), m.handovers.get(pid)
            assert t is not None  # the pool was dealt out whole above
            if o is t:
                m.handovers.pop(pid, None)
            elif o is None:
                bisect.insort(t.partitions, pid)
            else:
                # a hand-over that only changes its target keeps its deadline
                deadline = moving.deadline if moving is not None else now + self.rebalancing_timeout
                m.handovers[pid] = Handover(o, t, deadline)

    def _settle(self, key: GroupKey | None = None, partition_id: int | None = None) -> None:
        """On the loop: move every hand-over (of one group / one partition, or all) whose owner
        has nothing in flight any more or whose timeout passed."""
        now = time.monotonic()
        changed = []
        with self._lock:
            for k in [key] if key is not None else list(self.groups):
                m = self.groups.get(k)
                if m is None:
                    continue
                moved = False
                for pid, h in list(m.handovers.items()):
                    if partition_id is not None and pid != partition_id:
                        continue
                    if now >= h.deadline or not self._in_flight(k, h.source, pid):
                        del m.handovers[pid]
                        h.source.partitions.remove(pid)
                        bisect.insort(h.target.partitions, pid)
                        moved = True
                if moved:
                    m.generation += 1
                    changed.append(k)
        if changed:
            self._changed(changed)
        self._arm()

    def _arm(self) -> None:
        """Keep one timer on the loop while any hand-over is pending."""
        if self._loop is None:
            return
        with self._lock:
            deadlines = [h.deadline for m in self.groups.values() for h in m.handovers.values()]
        if not deadlines:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        delay = max(0.0, min(CHECK_INTERVAL, min(deadlines) - time.monotonic()))
        if self._timer is not None:
            if self._timer.when() <= self._loop.time() + delay:
                return
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._settle()

    def join(self, key: GroupKey, session: Session) -> None:
        with self._lock:
            if self.member_of(key, session) is not None:
                return
            m = self.membership(key)
            used = {member.id for member in m.members}
            slot = 0
            while slot in used:
                slot += 1
            m.members = [*m.members, Member(slot, session)]
            session.groups.add(key)
        self.rebalance(key)

    def leave(self, key: GroupKey, session: Session) -> bool:
        with self._lock:
            m = self.groups.get(key)
            member = self.member_of(key, session)
            if m is None or member is None:
                return False
            m.members = [mb for mb in m.members if mb is not member]
            session.groups.discard(key)
        self.rebalance(key)
        return True

    def leave_all(self, session: Session) -> None:
        for key in list(session.groups):
            self.leave(key, session)

    def partitions_changed(self, stream_id: int, topic: TopicMeta) -> None:
        for key in [k for k in self.groups if k[0] == stream_id and k[1] == topic.id]:
            self.rebalance(key)

    def forget(self, predicate: Callable[[GroupKey], bool]) -> None:
        with self._lock:
            keys = [k for k in self.groups if predicate(k)]
            for key in keys:
                for member in self.groups[key].members:
                    member.session.groups.discard(key)
                del self.groups[key]
        self._changed(keys)
        self._arm()

    def forget_group(self, stream_id: int, topic_id: int, group_id: int) -> None:
        self.forget(lambda k: k == (stream_id, topic_id, group_id))

    def forget_topic(self, stream_id: int, topic_id: int) -> None:
        self.forget(lambda k: k[0] == stream_id and k[1] == topic_id)

    def forget_stream(self, stream_id: int) -> None:
        self.forget(lambda k: k[0] == stream_id)


# a group and where it is: (stream, topic, group), and the list of a topic's groups
FoundGroup = tuple["StreamMeta", "TopicMeta", "GroupMeta"]
FoundGroups = tuple["StreamMeta", "TopicMeta", list["GroupMeta"]]


def encode_group(plane: ControlPlane, w: Writer, s: StreamMeta, t: TopicMeta, g: GroupMeta) -> None:
    m = plane.groups.groups.get((s.id, t.id, g.id))
    w.u32(g.id).u32(len(t.partitions)).u32(len(m.members) if m else 0).name(g.name)


def encode_group_details(plane: ControlPlane, s: StreamMeta, t: TopicMeta, g: GroupMeta) -> bytes:
    w = Writer()
    encode_group(plane, w, s, t, g)
    m = plane.groups.groups.get((s.id, t.id, g.id))
    for member in m.members if m else []:
        w.u32(member.id).u32(len(member.partitions))
        for pid in member.partitions:
            w.u32(pid)
    return w.getvalue()


def encode_found_group(plane: ControlPlane, found: FoundGroup) -> bytes:
    return encode_group_details(plane, *found)


def encode_groups(plane: ControlPlane, found: FoundGroups) -> bytes:
    s, t, groups = found
    w = Writer()
    for g in groups:
        encode_group(plane, w, s, t, g)
    return w.getvalue()


def read_stream_topic(r: Reader) -> tuple[Ident, Ident]:
    return r.identifier(), r.identifier()


def read_group(r: Reader) -> tuple[Ident, Ident, Ident]:
    return r.identifier(), r.identifier(), r.identifier()


def read_create(r: Reader) -> tuple[Ident, Ident, str]:
    sid, tid = r.identifier(), r.identifier()
    return sid, tid, r.name()


# the group commands need the read_topic permission; a missing stream or topic is 1009/2010
# and the group is looked up after the check (upstream core/server/src/responses.rs:
# ensure_topic_exists)


@command(codes.GET_CONSUMER_GROUP, needs=perm.READ_TOPIC, decode=read_group, encode=encode_found_group)
def get_consumer_group(
    plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, gid: Ident
) -> FoundGroup | None:
    g = lookup.find_group(t, gid)
    if g is None:
        return None  # an empty body
    return s, t, g


@command(codes.GET_CONSUMER_GROUPS, needs=perm.READ_TOPIC, decode=read_stream_topic, encode=encode_groups)
def get_consumer_groups(plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta) -> FoundGroups:
    return s, t, sorted(t.groups.values(), key=lambda g: g.id)


@command(codes.CREATE_CONSUMER_GROUP, needs=perm.READ_TOPIC, decode=read_create, encode=encode_found_group)
def create_consumer_group(plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, name: str) -> FoundGroup:
    if any(g.name == name for g in t.groups.values()):
        raise IggyError(ErrorCode.CONSUMER_GROUP_NAME_ALREADY_EXISTS)
    rec = changes.apply(
        plane, {"op": "group.create", "stream": s.id, "topic": t.id, "id": t.next_group_id, "name": name}
    )
    return s, t, t.groups[rec["id"]]


@command(codes.DELETE_CONSUMER_GROUP, needs=perm.READ_TOPIC, decode=read_group)
def delete_consumer_group(plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, gid: Ident) -> None:
    g = lookup.get_group(t, gid)
    changes.apply(plane, {"op": "group.delete", "stream": s.id, "topic": t.id, "id": g.id})


@command(codes.JOIN_CONSUMER_GROUP, needs=perm.READ_TOPIC, decode=read_group)
def join_consumer_group(plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, gid: Ident) -> None:
    g = lookup.get_group(t, gid)
    plane.groups.join((s.id, t.id, g.id), session)


@command(codes.LEAVE_CONSUMER_GROUP, needs=perm.READ_TOPIC, decode=read_group)
def leave_consumer_group(plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, gid: Ident) -> None:
    g = lookup.get_group(t, gid)
    if not plane.groups.leave((s.id, t.id, g.id), session):
        raise IggyError(ErrorCode.CONSUMER_GROUP_MEMBER_NOT_FOUND)


@command(codes.SYNC_CONSUMER_GROUP, needs=perm.LOGGED_IN, decode=read_group)
def sync_consumer_group(plane: ControlPlane, session: Session, sid: Ident, tid: Ident, gid: Ident) -> bytes | None:
    # only the caller's own membership is read: a missing stream, topic or group, like a group
    # the session is not in, answers an empty body (upstream core/server/src/dispatch.rs,
    # handle_sync_consumer_group)
    s = lookup.find_stream(plane, sid)
    t = lookup.find_topic(s, tid) if s is not None else None
    g = lookup.find_group(t, gid) if t is not None else None
    if s is None or t is None or g is None:
        return None
    assignment = plane.groups.assignment((s.id, t.id, g.id), session)
    if assignment is None:
        return None
    generation, partitions = assignment
    w = Writer().u64(generation).u32(len(partitions))
    for pid in partitions:
        w.u32(pid)
    return w.getvalue()
