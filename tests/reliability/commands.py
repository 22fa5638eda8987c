"""Every command of the binary protocol and every HTTP route, with a valid request for a small
fixed "world" and the permission rule each must enforce (SEMANTICS 7.1).

The world: stream `pm-s` with topic `pm-t` (2 partitions, 3 messages in partition 0, consumer
7's offset stored at 1), consumer group `pm-g`, and the users `actor` (the one whose
permissions the matrix varies) and `victim` (the target of user management). Ids are looked
up when the world is built, so the table works on a server that already holds other things.

A rule is (global flags, stream flags, topic flags): a user passes if it holds ANY listed flag
at the listed level; "auth" = any logged-in user; "public" = no login needed;
"unavailable" = any logged-in user, answered FeatureUnavailable (5).
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field

import httpx

from iggy.control import permissions as perm
from iggy.protocol import codes
from iggy.protocol.batch import build_batch
from tests.rawclient import ident, wire_name

ACTOR, ACTOR_PASSWORD = "actor", "actor-pass"
VICTIM, VICTIM_PASSWORD = "victim", "victim-pass"
CONSUMER = 7

_G_READ_TOPIC = ("read_streams", "manage_streams", "manage_topics", "read_topics")
_S_READ_TOPIC = ("manage_stream", "read_stream", "manage_topics", "read_topics")

RULES = {
    "public": "public",
    "auth": "auth",
    "unavailable": "unavailable",
    "read_servers": (("manage_servers", "read_servers"), (), ()),
    "read_users": (("manage_users", "read_users"), (), ()),
    "manage_users": (("manage_users",), (), ()),
    "list_streams": (("manage_streams", "read_streams"), (), ()),
    "read_stream": (("manage_streams", "read_streams"), ("manage_stream", "read_stream"), ()),
    "create_stream": (("manage_streams",), (), ()),
    "manage_stream": (("manage_streams",), ("manage_stream",), ()),
    "list_topics": (_G_READ_TOPIC, _S_READ_TOPIC, ()),
    "read_topic": (_G_READ_TOPIC, _S_READ_TOPIC, ("manage_topic", "read_topic")),
    "create_topic": (("manage_streams", "manage_topics"), ("manage_stream", "manage_topics"), ()),
    "manage_topic": (("manage_streams", "manage_topics"), ("manage_stream", "manage_topics"), ("manage_topic",)),
    "poll": (
        ("poll_messages", "read_topics", "manage_topics", "read_streams", "manage_streams"),
        ("poll_messages", "manage_stream", "read_stream", "manage_topics", "read_topics"),
        ("manage_topic", "read_topic", "poll_messages"),
    ),
    "send": (
        ("send_messages", "manage_streams", "manage_topics"),
        ("send_messages", "manage_stream", "manage_topics"),
        ("manage_topic", "send_messages"),
    ),
}


@dataclass
class World:
    stream: int = 0
    topic: int = 0
    group: int = 0
    actor: int = 0
    victim: int = 0
    root_client: int = 1


@dataclass
class Command:
    name: str
    op: int  # header operation (2 = read with `code`)
    code: int  # command code (for writes: the code the op maps to)
    body: object  # World -> bytes
    rule: str
    destructive: bool = False  # success changes the world: rebuild it afterwards
    prepare: str | None = None  # run as the actor before a call that should succeed
    after: str | None = None  # "relogin": the success logged the actor out


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def _st(w: World) -> bytes:
    return ident(w.stream) + ident(w.topic)


def _consumer_target(w: World) -> bytes:
    return b"\x01" + ident(CONSUMER) + _st(w) + b"\x01" + _u32(0)


def _send_body(w: World) -> bytes:
    batch = build_batch([(1, b"matrix", b"")])
    meta = _st(w) + b"\x02\x04" + _u32(0) + _u32(1)
    return _u32(len(meta)) + meta + batch


def permissions_body(perms: dict | None) -> bytes:
    if perms is None:
        return b"\x00"
    raw = perm.encode(perms)
    return b"\x01" + _u32(len(raw)) + raw


def _w(op):
    return op, codes.OPERATION_CODES[op]


COMMANDS = [
    Command("ping", 2, codes.PING, lambda w: b"", "public"),
    Command("get_stats", 2, codes.GET_STATS, lambda w: b"", "read_servers"),
    Command("get_cluster_metadata", 2, codes.GET_CLUSTER_METADATA, lambda w: b"", "auth"),
    Command("describe_options", 2, codes.DESCRIBE_OPTIONS, lambda w: b"\x01", "auth"),
    Command("get_me", 2, codes.GET_ME, lambda w: b"", "auth"),
    Command("get_client", 2, codes.GET_CLIENT, lambda w: _u32(w.root_client), "read_servers"),
    Command("get_clients", 2, codes.GET_CLIENTS, lambda w: b"", "read_servers"),
    Command("get_user", 2, codes.GET_USER, lambda w: ident(w.victim), "read_users"),
    Command("get_users", 2, codes.GET_USERS, lambda w: b"", "read_users"),
    Command("get_personal_access_tokens", 2, codes.GET_PERSONAL_ACCESS_TOKENS, lambda w: b"", "auth"),
    Command(
        "poll_messages",
        2,
        codes.POLL_MESSAGES,
        lambda w: b"\x01" + ident(CONSUMER) + _st(w) + b"\x01" + _u32(0) + b"\x01" + _u64(0) + _u32(10) + b"\x00",
        "poll",
    ),
    Command("get_consumer_offset", 2, codes.GET_CONSUMER_OFFSET, _consumer_target, "poll"),
    Command("get_stream", 2, codes.GET_STREAM, lambda w: ident(w.stream), "read_stream"),
    Command("get_streams", 2, codes.GET_STREAMS, lambda w: b"", "list_streams"),
    Command("get_topic", 2, codes.GET_TOPIC, _st, "read_topic"),
    Command("get_topics", 2, codes.GET_TOPICS, lambda w: ident(w.stream), "list_topics"),
    Command("get_consumer_group", 2, codes.GET_CONSUMER_GROUP, lambda w: _st(w) + ident(w.group), "read_topic"),
    Command("get_consumer_groups", 2, codes.GET_CONSUMER_GROUPS, _st, "read_topic"),
    # reads only the caller's own membership (joining needs the permission): no permission
    # gate, as upstream (core/server/src/dispatch.rs, handle_sync_consumer_group)
    Command("sync_consumer_group", 2, codes.SYNC_CONSUMER_GROUP, lambda w: _st(w) + ident(w.group), "auth"),
    Command("logout_user", codes.OP_LOGOUT, codes.LOGOUT_USER, lambda w: b"", "auth", after="relogin"),
    Command("create_stream", *_w(128), lambda w: wire_name("pm-new"), "create_stream", destructive=True),
    Command(
        "update_stream",
        *_w(129),
        lambda w: ident(w.stream) + wire_name("pm-s-renamed"),
        "manage_stream",
        destructive=True,
    ),
    Command("delete_stream", *_w(130), lambda w: ident(w.stream), "manage_stream", destructive=True),
    Command("purge_stream", *_w(131), lambda w: ident(w.stream), "manage_stream", destructive=True),
    Command(
        "create_topic",
        *_w(132),
        lambda w: ident(w.stream) + _u32(1) + wire_name("pm-t-new"),
        "create_topic",
        destructive=True,
    ),
    Command("update_topic", *_w(133), lambda w: _st(w) + wire_name("pm-t-renamed"), "manage_topic", destructive=True),
    Command("delete_topic", *_w(134), _st, "manage_topic", destructive=True),
    Command("purge_topic", *_w(135), _st, "manage_topic", destructive=True),
    Command("create_partitions", *_w(136), lambda w: _st(w) + _u32(1), "manage_topic", destructive=True),
    Command("delete_partitions", *_w(137), lambda w: _st(w) + _u32(1), "manage_topic", destructive=True),
    Command("delete_segments", *_w(138), lambda w: _st(w) + _u32(0) + _u32(1), "manage_topic", destructive=True),
    Command(
        "create_consumer_group", *_w(139), lambda w: _st(w) + wire_name("pm-g-new"), "read_topic", destructive=True
    ),
    Command("delete_consumer_group", *_w(140), lambda w: _st(w) + ident(w.group), "read_topic", destructive=True),
    Command(
        "create_user",
        *_w(141),
        lambda w: wire_name("pm-created") + b"\x07secret1" + b"\x01\x00",
        "manage_users",
        destructive=True,
    ),
    Command(
        "update_user",
        *_w(142),
        lambda w: ident(w.victim) + b"\x01" + wire_name("victim-renamed") + b"\x01\x02",
        "manage_users",
        destructive=True,
    ),
    Command("delete_user", *_w(143), lambda w: ident(w.victim), "manage_users", destructive=True),
    Command(
        "change_password",
        *_w(144),
        lambda w: ident(w.victim) + b"\x0b" + VICTIM_PASSWORD.encode() + b"\x0avictim-new",
        "manage_users",
        destructive=True,
    ),
    Command(
        "update_permissions",
        *_w(145),
        lambda w: ident(w.victim) + permissions_body(None),
        "manage_users",
        destructive=True,
    ),
    Command(
        "create_personal_access_token", *_w(146), lambda w: wire_name("pm-tok") + _u64(0), "auth", destructive=True
    ),
    Command(
        "delete_personal_access_token",
        *_w(147),
        lambda w: wire_name("pm-tok"),
        "auth",
        destructive=True,
        prepare="create_token",
    ),
    Command("join_consumer_group", *_w(148), lambda w: _st(w) + ident(w.group), "read_topic", destructive=True),
    Command(
        "leave_consumer_group",
        *_w(149),
        lambda w: _st(w) + ident(w.group),
        "read_topic",
        destructive=True,
        prepare="join_group",
    ),
    Command("send_messages", *_w(160), _send_body, "send", destructive=True),
    Command("store_consumer_offset", *_w(161), lambda w: _consumer_target(w) + _u64(0), "poll", destructive=True),
    Command("delete_consumer_offset", *_w(162), _consumer_target, "poll", destructive=True),
] + [
    Command(f"unavailable_{code}", 2, code, lambda w: b"", "unavailable")
    for code in (
        codes.GET_SNAPSHOT_FILE,
        codes.ATTACH_CONSUMER_SESSION,
        codes.FLUSH_UNSAVED_BUFFER,
        codes.GET_POLL_ROUTING,
        codes.POLL_MESSAGES_ON_PRIMARY,
        codes.GET_CONSUMER_OFFSET_ROUTING,
    )
]
BY_NAME = {c.name: c for c in COMMANDS}


# --------------------------------------------------------------------------- HTTP


@dataclass
class Route:
    name: str
    method: str
    template: str  # the path, formatted with the World as `w`
    rule: str
    ok: int  # status of a success
    json: dict | None = None
    params: dict = field(default_factory=dict)
    destructive: bool | None = None  # success changes the world; by default every write does
    prepare: str | None = None
    after: str | None = None

    def __post_init__(self) -> None:
        if self.destructive is None:
            self.destructive = self.method != "GET"

    def path(self, w: World) -> str:
        return self.template.format(w=w)

    def request(self, http: httpx.Client, w: World, headers: dict) -> httpx.Response:
        return http.request(self.method, self.path(w), json=self.json, params=self.params, headers=headers)


# path templates (the world fills in the ids), then the request bodies and query parameters
_U = "/users/{w.victim}"
_S = "/streams/{w.stream}"
_T = _S + "/topics/{w.topic}"
_SNAPSHOT = {"compression": "Stored", "snapshot_types": ["Test"]}
_NEW_USER = {"username": "pm-created", "password": "secret1", "status": "active"}
_NEW_PASSWORD = {"current_password": VICTIM_PASSWORD, "new_password": "victim-new"}
_NEW_TOKEN = {"name": "pm-tok", "expiry": 0}
_NEW_TOPIC = {
    "name": "pm-t-new",
    "partitions_count": 1,
    "compression_algorithm": "none",
    "message_expiry": 0,
    "max_topic_size": 0,
}
_OFFSET_OF = {"consumer_id": CONSUMER, "partition_id": 0}
_STORE_OFFSET = {"consumer_id": str(CONSUMER), "partition_id": 0, "offset": 0}
_POLL = {**_OFFSET_OF, "kind": "offset", "value": 0, "count": 10}
_SEND = {
    "partitioning": {"kind": "partition_id", "value": base64.b64encode(_u32(0)).decode()},
    "messages": [{"payload": base64.b64encode(b"matrix").decode()}],
}

ROUTES = [
    Route("ping", "GET", "/ping", "public", 200),
    Route("stats", "GET", "/stats", "read_servers", 200),
    Route("clients", "GET", "/clients", "read_servers", 200),
    Route("client", "GET", "/clients/{w.root_client}", "read_servers", 200),
    Route("cluster_metadata", "GET", "/cluster/metadata", "auth", 200),
    Route("options", "GET", "/options/topic", "auth", 200),
    Route("metrics", "GET", "/metrics", "auth", 200),
    Route("snapshot", "POST", "/snapshot", "read_servers", 200, json=_SNAPSHOT, destructive=False),
    Route("users", "GET", "/users", "read_users", 200),
    Route("user", "GET", _U, "read_users", 200),
    Route("create_user", "POST", "/users", "manage_users", 200, json=_NEW_USER),
    Route("update_user", "PUT", _U, "manage_users", 204, json={"username": "victim-renamed"}),
    Route("delete_user", "DELETE", _U, "manage_users", 204),
    Route("change_password", "PUT", _U + "/password", "manage_users", 204, json=_NEW_PASSWORD),
    Route("update_permissions", "PUT", _U + "/permissions", "manage_users", 204, json={"permissions": None}),
    Route("tokens", "GET", "/personal-access-tokens", "auth", 200),
    Route("create_token", "POST", "/personal-access-tokens", "auth", 200, json=_NEW_TOKEN),
    Route("delete_token", "DELETE", "/personal-access-tokens/pm-tok", "auth", 204, prepare="create_token"),
    Route("streams", "GET", "/streams", "list_streams", 200),
    Route("create_stream", "POST", "/streams", "create_stream", 200, json={"name": "pm-new"}),
    Route("stream", "GET", _S, "read_stream", 200),
    Route("update_stream", "PUT", _S, "manage_stream", 204, json={"name": "pm-s-renamed"}),
    Route("delete_stream", "DELETE", _S, "manage_stream", 204),
    Route("purge_stream", "DELETE", _S + "/purge", "manage_stream", 204),
    Route("topics", "GET", _S + "/topics", "list_topics", 200),
    Route("create_topic", "POST", _S + "/topics", "create_topic", 200, json=_NEW_TOPIC),
    Route("topic", "GET", _T, "read_topic", 200),
    Route("update_topic", "PUT", _T, "manage_topic", 204, json={"name": "pm-t-renamed"}),
    Route("delete_topic", "DELETE", _T, "manage_topic", 204),
    Route("purge_topic", "DELETE", _T + "/purge", "manage_topic", 204),
    Route("create_partitions", "POST", _T + "/partitions", "manage_topic", 200, json={"partitions_count": 1}),
    Route("delete_partitions", "DELETE", _T + "/partitions", "manage_topic", 204, params={"partitions_count": 1}),
    Route("delete_segments", "DELETE", _T + "/partitions/0", "manage_topic", 204, params={"segments_count": 1}),
    Route("groups", "GET", _T + "/consumer-groups", "read_topic", 200),
    Route("create_group", "POST", _T + "/consumer-groups", "read_topic", 200, json={"name": "pm-g-new"}),
    Route("group", "GET", _T + "/consumer-groups/{w.group}", "read_topic", 200),
    Route("delete_group", "DELETE", _T + "/consumer-groups/{w.group}", "read_topic", 204),
    Route("get_offset", "GET", _T + "/consumer-offsets", "poll", 200, params=_OFFSET_OF),
    Route("store_offset", "PUT", _T + "/consumer-offsets", "poll", 204, json=_STORE_OFFSET),
    Route("delete_offset", "DELETE", _T + f"/consumer-offsets/{CONSUMER}", "poll", 204, params={"partition_id": 0}),
    Route("poll", "GET", _T + "/messages", "poll", 200, params=_POLL),
    Route("send", "POST", _T + "/messages", "send", 201, json=_SEND),
    Route("logout", "DELETE", "/users/logout", "auth", 204, destructive=False, after="relogin"),
]


# --------------------------------------------------------------------------- permission sets


def flags_dict(global_flags=(), stream=None, stream_flags=(), topic=None, topic_flags=()) -> dict | None:
    """A stored-form permissions dict with exactly these flags set."""
    g = [f in global_flags for f in perm.GLOBAL_FLAGS]
    streams = {}
    if stream is not None:
        topics = {}
        if topic is not None:
            topics[topic] = [f in topic_flags for f in perm.TOPIC_FLAGS]
        streams[stream] = {"flags": [f in stream_flags for f in perm.STREAM_FLAGS], "topics": topics}
    return {"global": g, "streams": streams}


def permission_cases(rule, w: World):
    """(label, permissions, should_pass) for a rule: none, every flag but the granting ones,
    then each granting flag alone at its level."""
    if rule in ("public", "auth", "unavailable"):
        return [("no permissions", None, True)]
    g_ok, s_ok, t_ok = RULES[rule]
    cases = [("no permissions", None, False)]
    g_rest = [f for f in perm.GLOBAL_FLAGS if f not in g_ok]
    s_rest = [f for f in perm.STREAM_FLAGS if f not in s_ok]
    t_rest = [f for f in perm.TOPIC_FLAGS if f not in t_ok]
    cases.append(("every other flag", flags_dict(g_rest, w.stream, s_rest, w.topic, t_rest), False))
    for f in g_ok:
        cases.append((f"global {f}", flags_dict((f,)), True))
    for f in s_ok:
        cases.append((f"stream {f}", flags_dict((), w.stream, (f,)), True))
    for f in t_ok:
        cases.append((f"topic {f}", flags_dict((), w.stream, (), w.topic, (f,)), True))
    return cases


def http_permissions(perms: dict | None):
    """The JSON shape of PUT /users/{id}/permissions for a stored-form dict."""
    if perms is None:
        return None
    return {
        "global": dict(zip(perm.GLOBAL_FLAGS, perms["global"], strict=True)),
        "streams": {
            str(sid): {
                **dict(zip(perm.STREAM_FLAGS, sp["flags"], strict=True)),
                "topics": {str(tid): dict(zip(perm.TOPIC_FLAGS, tf, strict=True)) for tid, tf in sp["topics"].items()},
            }
            for sid, sp in perms["streams"].items()
        },
    }
