"""JSON shapes of the REST API's responses (HTTP.md 5), built from the metadata registry.

Every function here reads control-plane state, so it runs on the main loop (see bridge.py)
and returns plain dicts that the HTTP thread serialises. Encodings shared by all responses
(HTTP.md 1.4): timestamps and durations are integer microseconds; byte sizes are strings
such as "1.5 KiB" (the Web UI shows them verbatim); map keys of permissions are ids as
strings; `options` maps are ``{key: {"value": <string>, "explicit": <bool>}}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iggy.control import permissions as perm
from iggy.control.topics import TOPIC_OPTIONS, TopicOption
from iggy.control.users import STATUS_ACTIVE
from iggy.metadata.state import GroupMeta, Permissions, StreamMeta, TopicMeta, UserMeta

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session

# A JSON object of a response: its values are of every JSON type (numbers, text, nested
# objects and lists), as the reference server's structs serialise, so they are typed Any.
Json = dict[str, Any]

_UNITS = [
    (name, base**power)
    for power, names in (
        (6, ("EiB", "EB")),
        (5, ("PiB", "PB")),
        (4, ("TiB", "TB")),
        (3, ("GiB", "GB")),
        (2, ("MiB", "MB")),
        (1, ("KiB", "KB")),
    )
    for name, base in zip(names, (1024, 1000), strict=True)
]

TRANSPORTS = {1: "TCP", 2: "QUIC", 3: "HTTP", 4: "WebSocket"}


def size_text(n: int) -> str:
    """Bytes as the reference server prints them: the largest unit (binary before decimal at
    each magnitude) in which the value is exact to 3 decimals, else "<n> B".

    >>> [size_text(v) for v in (0, 999, 1000, 1024, 1536, 52904123)]
    ['0 B', '999 B', '1 KB', '1 KiB', '1.5 KiB', '52904.123 KB']
    """
    for name, unit in _UNITS:
        if n >= unit and (n * 1000) % unit == 0:
            whole, frac = divmod(n * 1000 // unit, 1000)
            digits = f"{frac:03d}".rstrip("0")
            return f"{whole}.{digits} {name}" if digits else f"{whole} {name}"
    return f"{n} B"


# ------------------------------------------------------------------- streams and topics


def stream(plane: ControlPlane, s: StreamMeta) -> dict[str, Any]:
    size, messages = plane.storage.stream_stats(s)
    return {
        "id": s.id,
        "created_at": s.created_at,
        "name": s.name,
        "size": size_text(size),
        "messages_count": messages,
        "topics_count": len(s.topics),
        "options": {},
    }


def stream_details(plane: ControlPlane, s: StreamMeta) -> dict[str, Any]:
    out = stream(plane, s)
    out["topics"] = [topic(plane, s.id, t) for t in sorted(s.topics.values(), key=lambda t: t.id)]
    return out


def option_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def topic(plane: ControlPlane, stream_id: int, t: TopicMeta) -> dict[str, Any]:
    size, messages = plane.storage.topic_stats(stream_id, t)
    s = t.settings
    explicit = set(t.explicit)
    return {
        "id": t.id,
        "created_at": t.created_at,
        "name": t.name,
        "size": size_text(size),
        "message_expiry": s["message_expiry"],
        "compression_algorithm": s["compression_algorithm"],
        "max_topic_size": s["max_topic_size"],
        "messages_count": messages,
        "partitions_count": len(t.partitions),
        "options": {
            key: {"value": option_text(s[key]), "explicit": key in explicit} for key in TOPIC_OPTIONS if key in s
        },
    }


def topic_details(plane: ControlPlane, stream_id: int, t: TopicMeta) -> dict[str, Any]:
    out = topic(plane, stream_id, t)
    out["partitions"] = []
    for p in sorted(t.partitions.values(), key=lambda p: p.id):
        segments, current, size, messages = plane.storage.partition_stats(stream_id, t.id, p.id)
        out["partitions"].append(
            {
                "id": p.id,
                "created_at": p.created_at,
                "segments_count": segments,
                "current_offset": current,
                "size": size_text(size),
                "messages_count": messages,
            }
        )
    return out


# ------------------------------------------------------------------- consumer groups


def group(plane: ControlPlane, s: StreamMeta, t: TopicMeta, g: GroupMeta) -> dict[str, Any]:
    m = plane.groups.groups.get((s.id, t.id, g.id))
    return {
        "id": g.id,
        "name": g.name,
        "partitions_count": len(t.partitions),
        "members_count": len(m.members) if m else 0,
    }


def group_details(plane: ControlPlane, s: StreamMeta, t: TopicMeta, g: GroupMeta) -> dict[str, Any]:
    out = group(plane, s, t, g)
    m = plane.groups.groups.get((s.id, t.id, g.id))
    out["members"] = [
        {"id": member.id, "partitions_count": len(member.partitions), "partitions": list(member.partitions)}
        for member in (m.members if m else [])
    ]
    return out


# ------------------------------------------------------------------- users and permissions


def permissions_json(stored: Permissions | None) -> dict[str, Any] | None:
    """Stored permissions (see control.permissions) as the reference server's JSON."""
    if stored is None:
        return None
    streams = {}
    for sid, sp in sorted(stored["streams"].items()):
        topics = {
            str(tid): dict(zip(perm.TOPIC_FLAGS, flags, strict=True)) for tid, flags in sorted(sp["topics"].items())
        }
        entry = dict(zip(perm.STREAM_FLAGS, sp["flags"], strict=True))
        entry["topics"] = topics or None
        streams[str(sid)] = entry
    return {"global": dict(zip(perm.GLOBAL_FLAGS, stored["global"], strict=True)), "streams": streams or None}


def user(u: UserMeta) -> dict[str, Any]:
    return {
        "id": u.id,
        "created_at": u.created_at,
        "status": "active" if u.status == STATUS_ACTIVE else "inactive",
        "username": u.username,
        "options": {},
    }


def user_details(u: UserMeta) -> dict[str, Any]:
    out = user(u)
    out["permissions"] = permissions_json(u.permissions)
    return out


# ------------------------------------------------------------------- system

SIZE_STATS = (
    "memory_usage",
    "total_memory",
    "available_memory",
    "read_bytes",
    "written_bytes",
    "messages_size_bytes",
    "free_disk_space",
    "total_disk_space",
)


def stats(raw: dict[str, Any]) -> dict[str, Any]:
    """control.system.collect_stats() with byte counts as size strings."""
    out = dict(raw)
    for key in SIZE_STATS:
        out[key] = size_text(int(raw[key]))
    out["cache_metrics"] = {}
    return out


def client(session: Session) -> dict[str, Any]:
    return {
        "client_id": session.client_id,
        "user_id": session.user_id,
        "address": session.address,
        "transport": TRANSPORTS.get(session.transport, "TCP"),
        "consumer_groups_count": len(session.groups),
    }


def client_details(session: Session) -> dict[str, Any]:
    out = client(session)
    out["consumer_groups"] = [{"stream_id": s, "topic_id": t, "group_id": g} for s, t, g in sorted(session.groups)]
    return out


def cluster(meta: dict[str, Any], http_host: str | None) -> dict[str, Any]:
    """control.system.cluster_metadata() in the REST shape (ports grouped under `endpoints`)."""
    nodes = []
    for n in meta["nodes"]:
        nodes.append(
            {
                "name": n["name"],
                "ip": http_host or n["ip"],
                "endpoints": {
                    "tcp": n["tcp_port"],
                    "quic": n["quic_port"],
                    "http": n["http_port"],
                    "websocket": n["websocket_port"],
                },
                "role": n["role"],
                "status": n["status"],
            }
        )
    return {"name": meta["name"], "nodes": nodes}


KIND_NAMES = {
    1: "raw",
    2: "string",
    3: "bool",
    4: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "int128",
    9: "uint8",
    10: "uint16",
    11: "uint32",
    12: "uint64",
    13: "uint128",
    14: "float32",
    15: "float64",
}


def option_spec(opt: TopicOption, default_bytes: bytes) -> dict[str, Any]:
    return {
        "key": opt.key,
        "kind": KIND_NAMES.get(opt.kind, "raw"),
        "default_value": list(default_bytes),
        "description": opt.description,
    }
