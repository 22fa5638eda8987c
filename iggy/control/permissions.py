"""User permissions: their wire layout, their stored form, and the checks of every command.

Wire layout (TCP.md 5.9)::

    10 x u8  global: manage_servers, read_servers, manage_users, read_users, manage_streams,
             read_streams, manage_topics, read_topics, poll_messages, send_messages
    u8       has_streams
    stream entry (repeated while has_next_stream):
        u32 stream_id, 6 x u8 (manage_stream, read_stream, manage_topics, read_topics,
        poll_messages, send_messages), u8 has_topics,
        topic entries (u32 topic_id, 4 x u8 (manage_topic, read_topic, poll_messages,
        send_messages), u8 has_next_topic) if has_topics,
        u8 has_next_stream

Stored form (msgpack-friendly)::

    {"global": [10 bools], "streams": {stream_id: {"flags": [6 bools], "topics": {topic_id: [4 bools]}}}}

A user passes a check if ANY of the listed flags is set at the listed level (SEMANTICS 7.1);
root (user 0) passes every check.

What each command needs is declared once, as one of the `Rule`s at the end of this module,
where the command is registered (`iggy.control.registry.command(code, needs=...)`); the
registry checks it before the command runs, for the binary protocol and the HTTP API alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from iggy.engine.uring.router import Allow
from iggy.metadata.state import Permissions, UserMeta
from iggy.protocol.wire import Reader, Writer

ROOT_USER_ID = 0

GLOBAL_FLAGS = (
    "manage_servers",
    "read_servers",
    "manage_users",
    "read_users",
    "manage_streams",
    "read_streams",
    "manage_topics",
    "read_topics",
    "poll_messages",
    "send_messages",
)
STREAM_FLAGS = ("manage_stream", "read_stream", "manage_topics", "read_topics", "poll_messages", "send_messages")
TOPIC_FLAGS = ("manage_topic", "read_topic", "poll_messages", "send_messages")

_G = {name: i for i, name in enumerate(GLOBAL_FLAGS)}
_S = {name: i for i, name in enumerate(STREAM_FLAGS)}
_T = {name: i for i, name in enumerate(TOPIC_FLAGS)}


_Entry = TypeVar("_Entry")

# one stream's entry of the stored form: {"flags": [6 bools], "topics": {topic_id: [4 bools]}}
# (Any: Permissions is the msgpack-friendly dict of iggy.metadata.state)
StreamPermissions = dict[str, Any]


def all_permissions() -> Permissions:
    return {"global": [True] * 10, "streams": {}}


def decode(r: Reader) -> Permissions:
    """Read a Permissions structure."""
    glob = _read_flags(r, 10)
    return {"global": glob, "streams": _read_entries(r, _read_stream)}


def _read_stream(r: Reader) -> StreamPermissions:
    flags = _read_flags(r, 6)
    return {"flags": flags, "topics": _read_entries(r, _read_topic)}


def _read_topic(r: Reader) -> list[bool]:
    return _read_flags(r, 4)


def _read_flags(r: Reader, count: int) -> list[bool]:
    return [r.bool() for _ in range(count)]


def _read_entries(r: Reader, read_entry: Callable[[Reader], _Entry]) -> dict[int, _Entry]:
    """The streams of a Permissions structure, or the topics of one stream: `u8 has_entries`,
    then each entry as `u32 id`, its fields and `u8 has_next`."""
    entries = {}
    more = r.bool()
    while more:
        entry_id = r.u32()
        entries[entry_id] = read_entry(r)
        more = r.bool()
    return entries


def encode(perms: Permissions) -> bytes:
    w = Writer()
    _write_flags(w, perms["global"])
    _write_entries(w, perms["streams"], _write_stream)
    return w.getvalue()


def _write_stream(w: Writer, sp: StreamPermissions) -> None:
    _write_flags(w, sp["flags"])
    _write_entries(w, sp["topics"], _write_flags)


def _write_flags(w: Writer, flags: Iterable[bool]) -> None:
    for v in flags:
        w.bool(v)


def _write_entries(w: Writer, entries: Mapping[int, _Entry], write_entry: Callable[[Writer, _Entry], None]) -> None:
    """What _read_entries reads."""
    items = list(entries.items())
    w.bool(bool(items))
    for i, (entry_id, entry) in enumerate(items):
        w.u32(entry_id)
        write_entry(w, entry)
        w.bool(i + 1 < len(items))


def read_optional(r: Reader) -> Permissions | None:
    """`[u8 has_permissions][u32 length][Permissions]` as in create_user / update_permissions."""
    if not r.bool():
        return None
    length = r.u32()
    inner = Reader(r.take(length))
    perms = decode(inner)
    inner.end_of_block()
    return perms


def allowed(
    user: UserMeta | None,
    global_flags: Iterable[str] = (),
    stream_id: int | None = None,
    stream_flags: Iterable[str] = (),
    topic_id: int | None = None,
    topic_flags: Iterable[str] = (),
) -> bool:
    """True if `user` holds any of the flags at the given levels (root always)."""
    if user is None:
        return False
    if user.id == ROOT_USER_ID:
        return True
    perms = user.permissions
    if not perms:
        return False
    g = perms["global"]
    if any(g[_G[f]] for f in global_flags):
        return True
    if stream_id is None:
        return False
    sp = perms["streams"].get(stream_id)
    if sp is None:
        return False
    if any(sp["flags"][_S[f]] for f in stream_flags):
        return True
    if topic_id is None:
        return False
    tp = sp["topics"].get(topic_id)
    return tp is not None and any(tp[_T[f]] for f in topic_flags)


# The rules of SEMANTICS 7.1, one function per kind of operation.


def can_read_servers(user: UserMeta | None) -> bool:
    return allowed(user, ("manage_servers", "read_servers"))


def can_read_users(user: UserMeta | None) -> bool:
    return allowed(user, ("manage_users", "read_users"))


def can_manage_users(user: UserMeta | None) -> bool:
    return allowed(user, ("manage_users",))


def can_list_streams(user: UserMeta | None) -> bool:
    return allowed(user, ("manage_streams", "read_streams"))


def can_read_stream(user: UserMeta | None, stream_id: int) -> bool:
    return allowed(user, ("manage_streams", "read_streams"), stream_id, ("manage_stream", "read_stream"))


def can_create_stream(user: UserMeta | None) -> bool:
    return allowed(user, ("manage_streams",))


def can_manage_stream(user: UserMeta | None, stream_id: int) -> bool:
    return allowed(user, ("manage_streams",), stream_id, ("manage_stream",))


def can_read_topic(user: UserMeta | None, stream_id: int, topic_id: int | None = None) -> bool:
    return allowed(
        user,
        ("read_streams", "manage_streams", "manage_topics", "read_topics"),
        stream_id,
        ("manage_stream", "read_stream", "manage_topics", "read_topics"),
        topic_id,
        ("manage_topic", "read_topic"),
    )


def can_create_topic(user: UserMeta | None, stream_id: int) -> bool:
    return allowed(user, ("manage_streams", "manage_topics"), stream_id, ("manage_stream", "manage_topics"))


def can_manage_topic(user: UserMeta | None, stream_id: int, topic_id: int) -> bool:
    return allowed(
        user,
        ("manage_streams", "manage_topics"),
        stream_id,
        ("manage_stream", "manage_topics"),
        topic_id,
        ("manage_topic",),
    )


# The data-plane rules as (global flags, stream flags, topic flags): used by the checks below
# and by `data_plane_grants`, which hands them to the shards' C routing table.
POLL_RULE = (
    ("poll_messages", "read_topics", "manage_topics", "read_streams", "manage_streams"),
    ("poll_messages", "manage_stream", "read_stream", "manage_topics", "read_topics"),
    ("manage_topic", "read_topic", "poll_messages"),
)
SEND_RULE = (
    ("send_messages", "manage_streams", "manage_topics"),
    ("send_messages", "manage_stream", "manage_topics"),
    ("manage_topic", "send_messages"),
)


def can_poll(user: UserMeta | None, stream_id: int, topic_id: int) -> bool:
    return allowed(user, POLL_RULE[0], stream_id, POLL_RULE[1], topic_id, POLL_RULE[2])


def can_send(user: UserMeta | None, stream_id: int, topic_id: int) -> bool:
    return allowed(user, SEND_RULE[0], stream_id, SEND_RULE[1], topic_id, SEND_RULE[2])


def data_plane_grants(user: UserMeta) -> tuple[int, list[tuple[int, int | None, int]]]:
    """The send/poll grants of `user` for the C routing table (iggy.engine.uring.router).

    Returns (allow_all, grants): ALLOW_* bits granted on every topic (root, global flags) and
    [(stream_id, topic_id or None for the whole stream, ALLOW_* bits)]. Computed with
    `allowed`, so the shards apply exactly the rules of can_send/can_poll.
    """
    rules = ((Allow.ALLOW_SEND, SEND_RULE), (Allow.ALLOW_POLL, POLL_RULE))
    allow_all = sum(bit for bit, rule in rules if allowed(user, rule[0]))
    grants: list[tuple[int, int | None, int]] = []
    for sid, sp in ((user.permissions or {}).get("streams") or {}).items():
        bits = sum(bit for bit, rule in rules if allowed(user, (), sid, rule[1]))
        if bits & ~allow_all:
            grants.append((sid, None, bits))
        for tid in sp["topics"]:
            tbits = sum(bit for bit, rule in rules if allowed(user, (), sid, (), tid, rule[2]))
            if tbits & ~(allow_all | bits):
                grants.append((sid, tid, tbits))
    return allow_all, grants


# ------------------------------------------------------------------- what a command needs

SCOPE_NONE = "none"  # the rule looks at the user only
SCOPE_STREAM = "stream"  # the command's first argument names a stream
SCOPE_TOPIC = "topic"  # its first two name a stream and one of its topics
SCOPE_USER = "user"  # its first argument names a user


@dataclass(frozen=True)
class Rule:
    """The permission a command needs, checked by the registry before the command runs.

    `allows(user, *ids)` is called with the ids of the scope's entities (none; the stream
    id; the stream and topic ids) once they have been looked up; a SCOPE_USER rule passes
    without a check when the user named is the caller (`allows(user)` otherwise).
    `allows=None` lets any logged-in user through; `login=False` anybody at all.
    """

    name: str
    scope: str = SCOPE_NONE
    allows: Callable[..., bool] | None = None
    login: bool = True


PUBLIC = Rule("public", login=False)
LOGGED_IN = Rule("auth")
READ_SERVERS = Rule("read_servers", allows=can_read_servers)
READ_USERS = Rule("read_users", allows=can_read_users)
MANAGE_USERS = Rule("manage_users", allows=can_manage_users)
SELF_OR_READ_USERS = Rule("self_or_read_users", SCOPE_USER, can_read_users)
SELF_OR_MANAGE_USERS = Rule("self_or_manage_users", SCOPE_USER, can_manage_users)
LIST_STREAMS = Rule("list_streams", allows=can_list_streams)
CREATE_STREAM = Rule("create_stream", allows=can_create_stream)
READ_STREAM = Rule("read_stream", SCOPE_STREAM, can_read_stream)
MANAGE_STREAM = Rule("manage_stream", SCOPE_STREAM, can_manage_stream)
LIST_TOPICS = Rule("list_topics", SCOPE_STREAM, can_read_topic)
CREATE_TOPIC = Rule("create_topic", SCOPE_STREAM, can_create_topic)
READ_TOPIC = Rule("read_topic", SCOPE_TOPIC, can_read_topic)
MANAGE_TOPIC = Rule("manage_topic", SCOPE_TOPIC, can_manage_topic)
POLL = Rule("poll", SCOPE_TOPIC, can_poll)
SEND = Rule("send", SCOPE_TOPIC, can_send)
