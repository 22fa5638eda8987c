"""The metadata registry: streams, topics, partitions, consumer groups, users and tokens.

This is the single source of truth of the control plane. It changes only through `apply()`,
which takes a record (a plain dict with an `op` and every value the change needs, ids and
timestamps included) so that replaying the journal after a restart rebuilds exactly the same
state. Validation happens before a record is built (in `iggy.control`); `apply()` never fails
on a record that was valid when it was written.

Ids follow the reference server: streams, topics and users take the lowest free id (0-based,
reused after delete); partitions continue after the highest id; consumer-group ids increase
per topic and are never reused.

Because ids are reused, nothing that outlives an entity may refer to it by id alone:

* every user also has a `generation`, a number no other user of this data directory ever had
  (`next_user_generation` counts up, journaled with each `user.create`). Sessions, JWTs and
  the shards' permission table carry (id, generation), so a token or a connection of a
  deleted user never acts as the next user that gets the same id. In cluster mode a
  `user.generation` record gives a user a new one (the next of the counter), which ends
  every token and session of theirs at once;
* deleting a stream or a topic removes every user's permissions scoped to it (in `apply`,
  so replaying the journal does the same), so grants on a deleted stream never apply to the
  next stream that gets its id.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

# a journal record: {"op": ..., and every value the change needs}
Record = dict[str, Any]
# a user's permissions: {"global": [10 bools], "streams": {...}} (see control.permissions)
Permissions = dict[str, Any]

U64_MAX = 0xFFFFFFFFFFFFFFFF
# cluster mode: logged-out JWTs of one user (not expired yet) kept as `jwt.revoke` entries; the
# leader ends all of that user's tokens with one `user.generation` record beyond that
# (iggy.http.routes.users.revoke_jwt)
REVOCATIONS_PER_USER = 100


@dataclass
class PartitionMeta:
    id: int
    created_at: int


@dataclass
class GroupMeta:
    id: int
    name: str


@dataclass
class TopicMeta:
    id: int
    name: str
    created_at: int
    settings: dict[str, Any]  # resolved option values, see control.topics.TOPIC_OPTIONS
    explicit: list[str]  # option keys the client set
    partitions: dict[int, PartitionMeta] = field(default_factory=dict)
    groups: dict[int, GroupMeta] = field(default_factory=dict)
    next_group_id: int = 0


@dataclass
class StreamMeta:
    id: int
    name: str
    created_at: int
    topics: dict[int, TopicMeta] = field(default_factory=dict)


@dataclass
class UserMeta:
    id: int
    username: str
    password_hash: str
    status: int  # 1 active, 2 inactive
    permissions: Permissions | None  # see control.permissions
    created_at: int
    generation: int = 0  # unique per user ever created here (see the module docstring)


@dataclass
class TokenMeta:
    user_id: int
    name: str
    token_hash: str
    expiry_at: int  # microseconds, 0 = never


_Named = TypeVar("_Named", StreamMeta, TopicMeta, GroupMeta)


def find_by_ident(entities: Mapping[int, _Named], ident: int | str) -> _Named | None:
    """The entity with that numeric id, or the one with that name (streams, topics, groups).

    Iterates over a snapshot: shard threads read while the event loop writes."""
    if isinstance(ident, int):
        return entities.get(ident)
    for e in list(entities.values()):
        if e.name == ident:
            return e
    return None


def lowest_free_id(used: Container[int]) -> int:
    i = 0
    while i in used:
        i += 1
    return i


class State:
    def __init__(self) -> None:
        self.streams: dict[int, StreamMeta] = {}
        self.users: dict[int, UserMeta] = {}
        self.tokens: dict[str, TokenMeta] = {}  # token_hash -> token
        # JWTs logged out in a cluster whose nodes share the JWT key: jti -> exp (Unix seconds),
        # kept until the token would have expired anyway (iggy.http.routes.users.revoke_jwt)
        self.revoked_jwts: dict[str, int] = {}
        # who logged each of them out (records that name the user): jti -> user id, and per
        # user the jtis, so the leader caps them per user and `user.generation` drops them
        self.jwt_owner: dict[str, int] = {}
        self.jwts_of: dict[int, set[str]] = {}
        self.next_user_generation = 1  # generation of the next user created
        # cluster mode: index of the last `meta/<index>` record of the cluster applied here
        # (records carry it; 0 on a single node and before the first)
        self.cluster_index = 0

    # ---------------------------------------------------------------- lookups

    def stream_by_name(self, name: str) -> StreamMeta | None:
        return find_by_ident(self.streams, name)

    def user_by_name(self, name: str) -> UserMeta | None:
        for u in self.users.values():
            if u.username == name:
                return u
        return None

    def tokens_of(self, user_id: int) -> list[TokenMeta]:
        return [t for t in self.tokens.values() if t.user_id == user_id]

    def revocations_of(self, user_id: int, now: int) -> int:
        """How many JWTs the user logged out that have not expired by `now` (Unix seconds)."""
        return sum(1 for jti in self.jwts_of.get(user_id, ()) if self.revoked_jwts[jti] >= now)

    # ---------------------------------------------------------------- apply

    def apply(self, rec: Record) -> None:
        getattr(self, "_apply_" + rec["op"].replace(".", "_"))(rec)
        index = rec.get("index")
        if index is not None:
            self.cluster_index = index

    def _apply_stream_create(self, r: Record) -> None:
        self.streams[r["id"]] = StreamMeta(r["id"], r["name"], r["created_at"])

    def _apply_stream_update(self, r: Record) -> None:
        self.streams[r["id"]].name = r["name"]

    def _apply_stream_delete(self, r: Record) -> None:
        del self.streams[r["id"]]
        self._drop_permissions(r["id"])

    def _apply_topic_create(self, r: Record) -> None:
        s = self.streams[r["stream"]]
        t = TopicMeta(r["id"], r["name"], r["created_at"], dict(r["settings"]), list(r["explicit"]))
        for pid in range(r["partitions"]):
            t.partitions[pid] = PartitionMeta(pid, r["created_at"])
        s.topics[t.id] = t

    def _apply_topic_update(self, r: Record) -> None:
        t = self.streams[r["stream"]].topics[r["id"]]
        t.name = r["name"]
        t.settings.update(r["settings"])
        t.explicit = sorted(set(t.explicit) | set(r["settings"]))

    def _apply_stream_purge(self, r: Record) -> None:
        """Cluster mode only: a purge travels as a record so every node purges (no metadata changes)."""

    def _apply_topic_purge(self, r: Record) -> None:
        """As stream.purge."""

    def _apply_topic_delete(self, r: Record) -> None:
        del self.streams[r["stream"]].topics[r["id"]]
        self._drop_permissions(r["stream"], r["id"])

    def _drop_permissions(self, stream_id: int, topic_id: int | None = None) -> None:
        """Remove the grants scoped to a deleted stream (topic_id None) or topic from every user.

        The permissions dict is replaced, never changed in place: it may be the very dict of a
        journal record or of a snapshot being read by another thread."""
        for u in self.users.values():
            streams = (u.permissions or {}).get("streams") or {}
            sp = streams.get(stream_id)
            if sp is None or (topic_id is not None and topic_id not in sp["topics"]):
                continue
            streams = dict(streams)
            if topic_id is None:
                del streams[stream_id]
            else:
                streams[stream_id] = {
                    "flags": sp["flags"],
                    "topics": {tid: f for tid, f in sp["topics"].items() if tid != topic_id},
                }
            u.permissions = {**(u.permissions or {}), "streams": streams}

    def _apply_partitions_create(self, r: Record) -> None:
        t = self.streams[r["stream"]].topics[r["topic"]]
        for pid in r["ids"]:
            t.partitions[pid] = PartitionMeta(pid, r["created_at"])

    def _apply_partitions_delete(self, r: Record) -> None:
        t = self.streams[r["stream"]].topics[r["topic"]]
        for pid in r["ids"]:
            t.partitions.pop(pid, None)

    def _apply_group_create(self, r: Record) -> None:
        t = self.streams[r["stream"]].topics[r["topic"]]
        t.groups[r["id"]] = GroupMeta(r["id"], r["name"])
        t.next_group_id = max(t.next_group_id, r["id"] + 1)

    def _apply_group_delete(self, r: Record) -> None:
        del self.streams[r["stream"]].topics[r["topic"]].groups[r["id"]]

    def _apply_user_create(self, r: Record) -> None:
        # records written before generations existed get the next one, in replay order (so
        # every replay assigns the same numbers)
        generation = r.get("generation") or self.next_user_generation
        self.next_user_generation = max(self.next_user_generation, generation + 1)
        self.users[r["id"]] = UserMeta(
            r["id"], r["username"], r["password_hash"], r["status"], r["permissions"], r["created_at"], generation
        )

    def _apply_user_update(self, r: Record) -> None:
        u = self.users[r["id"]]
        if r.get("username") is not None:
            u.username = r["username"]
        if r.get("status") is not None:
            u.status = r["status"]

    def _apply_user_permissions(self, r: Record) -> None:
        self.users[r["id"]].permissions = r["permissions"]

    def _apply_user_password(self, r: Record) -> None:
        self.users[r["id"]].password_hash = r["password_hash"]

    def _apply_user_delete(self, r: Record) -> None:
        del self.users[r["id"]]
        for h in [h for h, t in self.tokens.items() if t.user_id == r["id"]]:
            del self.tokens[h]
        self._forget_revocations_of(r["id"])

    def _apply_user_generation(self, r: Record) -> None:
        """Cluster mode: every session and JWT of the user ends (they carry the old generation);
        its logged-out JWTs need no entry any more (iggy.http.routes.users.revoke_jwt)."""
        generation = r["generation"]
        self.users[r["id"]].generation = generation
        self.next_user_generation = max(self.next_user_generation, generation + 1)
        self._forget_revocations_of(r["id"])

    def _forget_revocations_of(self, user_id: int) -> None:
        for jti in self.jwts_of.pop(user_id, ()):
            self.revoked_jwts.pop(jti, None)
            self.jwt_owner.pop(jti, None)

    def _apply_token_create(self, r: Record) -> None:
        self.tokens[r["token_hash"]] = TokenMeta(r["user_id"], r["name"], r["token_hash"], r["expiry_at"])

    def _apply_token_delete(self, r: Record) -> None:
        self.tokens.pop(r["token_hash"], None)

    def _apply_jwt_revoke(self, r: Record) -> None:
        # `at` is the leader's clock when it revoked: every node forgets the same tokens
        at = r["at"]
        for jti in [j for j, exp in self.revoked_jwts.items() if exp < at]:
            del self.revoked_jwts[jti]
            owner = self.jwt_owner.pop(jti, None)
            if owner is not None:
                self._unown(owner, jti)
        if r["expiry"] >= at:
            self._revoke(r["jti"], r["expiry"], r.get("user"))

    def _revoke(self, jti: str, expiry: int, owner: int | None) -> None:
        self.revoked_jwts[jti] = expiry
        if owner is not None:
            self.jwt_owner[jti] = owner
            self.jwts_of.setdefault(owner, set()).add(jti)

    def _unown(self, owner: int, jti: str) -> None:
        jtis = self.jwts_of[owner]
        jtis.discard(jti)
        if not jtis:
            del self.jwts_of[owner]

    # ---------------------------------------------------------------- snapshot

    def to_dict(self) -> dict[str, Any]:
        d = {
            "streams": [
                {
                    "id": s.id,
                    "name": s.name,
                    "created_at": s.created_at,
                    "topics": [
                        {
                            "id": t.id,
                            "name": t.name,
                            "created_at": t.created_at,
                            "settings": t.settings,
                            "explicit": t.explicit,
                            "partitions": [[p.id, p.created_at] for p in t.partitions.values()],
                            "groups": [[g.id, g.name] for g in t.groups.values()],
                            "next_group_id": t.next_group_id,
                        }
                        for t in s.topics.values()
                    ],
                }
                for s in self.streams.values()
            ],
            "users": [
                [u.id, u.username, u.password_hash, u.status, u.permissions, u.created_at, u.generation]
                for u in self.users.values()
            ],
            "next_user_generation": self.next_user_generation,
            "tokens": [[t.user_id, t.name, t.token_hash, t.expiry_at] for t in self.tokens.values()],
        }
        if self.cluster_index:  # only in cluster mode: a single node's snapshot stays as it was
            d["cluster_index"] = self.cluster_index
        if self.revoked_jwts:  # only in cluster mode, as above
            d["revoked_jwts"] = [
                [jti, exp] if jti not in self.jwt_owner else [jti, exp, self.jwt_owner[jti]]
                for jti, exp in self.revoked_jwts.items()
            ]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> State:
        st = cls()
        for sd in d["streams"]:
            s = StreamMeta(sd["id"], sd["name"], sd["created_at"])
            for td in sd["topics"]:
                t = TopicMeta(
                    td["id"],
                    td["name"],
                    td["created_at"],
                    td["settings"],
                    td["explicit"],
                    next_group_id=td["next_group_id"],
                )
                t.partitions = {pid: PartitionMeta(pid, c) for pid, c in td["partitions"]}
                t.groups = {gid: GroupMeta(gid, n) for gid, n in td["groups"]}
                s.topics[t.id] = t
            st.streams[s.id] = s
        for row in d["users"]:
            uid, name, ph, status, perms, created = row[:6]
            # snapshots written before generations existed: number the users in order
            generation = row[6] if len(row) > 6 else st.next_user_generation
            st.next_user_generation = max(st.next_user_generation, generation + 1)
            st.users[uid] = UserMeta(uid, name, ph, status, perms, created, generation)
        st.next_user_generation = max(st.next_user_generation, d.get("next_user_generation", 1))
        for uid, name, th, exp in d["tokens"]:
            st.tokens[th] = TokenMeta(uid, name, th, exp)
        st.cluster_index = d.get("cluster_index", 0)
        for row in d.get("revoked_jwts", []):
            st._revoke(row[0], row[1], row[2] if len(row) > 2 else None)
        return st
