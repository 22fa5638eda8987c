"""Topics and partitions: create, get, list, update, delete, purge; add and remove partitions.

Topic settings travel as a typed options block (TCP.md 5.7): TLV pairs `[u8 kind][u32 len]
[bytes]`, key (kind 2 string) then value. Every key the client leaves out (or sends as the
"server default" 0) is resolved at creation from `TOPIC_OPTIONS` and frozen into the topic,
so later reads always show real values.

Wire bodies (TCP.md 7.1, 9.4, 9.5)::

    create   Identifier stream, u32 partitions_count, WireName name, options block
    update   Identifier stream, Identifier topic, WireName name, options block (a patch)
    TopicHeader  u32 id, u64 created_at, u32 partitions_count, u64 message_expiry,
                 u8 compression (1 none, 2 gzip), u64 max_topic_size, u64 size_bytes,
                 u64 messages_count, WireName name, options (set by the client),
                 derived options (defaulted by the server); each options block u32-length-prefixed
    GetTopic     TopicHeader + partitions_count x (u32 id, u64 created_at, u32 segments_count,
                 u64 current_offset, u64 size_bytes, u64 messages_count)
    list         u32 count + TopicHeader x count
    partitions   Identifier stream, Identifier topic, u32 count (1..1000)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iggy.control import changes
from iggy.control import permissions as perm
from iggy.control.clock import now_us
from iggy.control.lookup import Ident
from iggy.control.registry import command, read_ident, read_stream_topic
from iggy.metadata.state import StreamMeta, TopicMeta, lowest_free_id
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader, Writer
from iggy.units import parse_duration, parse_size

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session

U64_MAX = 0xFFFFFFFFFFFFFFFF
MAX_TOPICS_PER_STREAM = 4096
MAX_PARTITIONS_PER_REQUEST = 1000
MiB = 1024 * 1024
GiB = 1024 * MiB

KIND_BOOL = 3
KIND_STRING = 2
KIND_U32 = 11
KIND_U64 = 12

OptionValue = bool | int | str  # by the option's kind: KIND_BOOL, KIND_U32/U64, KIND_STRING
# every option of a topic resolved, {key: value}: Any, as the type of a value is its key's
# (TopicMeta.settings)
Settings = dict[str, Any]
# writes one topic header of a reply: (plane, writer, stream id, topic)
TopicLayout = Callable[["ControlPlane", Writer, int, TopicMeta], None]


@dataclass(frozen=True)
class TopicOption:
    key: str
    kind: int  # header kind used when the value is written back
    default: OptionValue
    updatable: bool
    description: str
    described: bool = True  # listed by DescribeOptions (the SDK-only durability keys are not)


TOPIC_OPTIONS = {
    o.key: o
    for o in (
        TopicOption(
            "compression_algorithm",
            KIND_STRING,
            "none",
            True,
            "Compression algorithm of the topic (metadata only): none or gzip.",
        ),
        TopicOption(
            "message_expiry",
            KIND_U64,
            U64_MAX,
            True,
            "Age in microseconds after which sealed segments are deleted; u64::MAX = never.",
        ),
        TopicOption(
            "max_topic_size",
            KIND_U64,
            U64_MAX,
            True,
            "Size in bytes above which the oldest sealed segments are deleted; u64::MAX = unlimited.",
        ),
        TopicOption(
            "segment_size",
            KIND_U64,
            GiB,
            False,
            "Size in bytes at which a partition's active segment is sealed and a new one opened.",
        ),
        TopicOption(
            "enforce_fsync", KIND_BOOL, False, False, "Fsync segment and consumer offset writes before acknowledging."
        ),
        TopicOption(
            "messages_required_to_save",
            KIND_U32,
            1024,
            False,
            "Unsaved messages after which a partition is flushed to disk.",
        ),
        TopicOption(
            "size_of_messages_required_to_save",
            KIND_U64,
            MiB,
            False,
            "Unsaved bytes after which a partition is flushed to disk.",
        ),
        TopicOption(
            "preallocate_segments",
            KIND_BOOL,
            False,
            False,
            "Reserve segment_size bytes on disk when a segment is opened.",
        ),
        TopicOption(
            "durability",
            KIND_STRING,
            "replicated",
            False,
            "replicated: acknowledge once in the page cache; persisted: acknowledge after fsync.",
            described=False,
        ),
        TopicOption(
            "consumer_offset_durability",
            KIND_STRING,
            "replicated",
            False,
            "replicated or persisted, for consumer offset writes.",
            described=False,
        ),
    )
}


def _bad(key: str) -> IggyError:
    return IggyError(ErrorCode.INVALID_OPTION_VALUE, f"invalid value for option {key}", field=key)


def _as_int(key: str, kind: int, raw: bytes, text_parser: Callable[[str], int]) -> int:
    if 9 <= kind <= 13 and len(raw) in (1, 2, 4, 8, 16):
        return int.from_bytes(raw, "little")
    if kind == KIND_STRING:
        text = raw.decode("utf-8", "replace").strip()
        if text.isdigit():
            return int(text)
        lowered = text.lower()
        if lowered in ("never", "none", "unlimited"):
            return U64_MAX
        try:
            return text_parser(text)
        except ValueError:
            raise _bad(key) from None
    raise _bad(key)


def parse_option(key: str, kind: int, raw: bytes) -> OptionValue:
    """Decode one option value from its TLV kind and bytes, by the key's type."""
    opt = TOPIC_OPTIONS[key]
    if opt.kind == KIND_BOOL:
        if kind == KIND_BOOL and len(raw) == 1:
            return raw != b"\x00"
        if kind == KIND_STRING and raw.lower() in (b"true", b"false"):
            return raw.lower() == b"true"
        raise _bad(key)
    if opt.kind == KIND_STRING:
        if kind != KIND_STRING:
            raise _bad(key)
        return raw.decode("utf-8", "replace").lower()
    parser = parse_duration if key == "message_expiry" else parse_size
    return _as_int(key, kind, raw, parser)


def read_options(r: Reader) -> dict[str, OptionValue]:
    """The request options block as {key: value}; unknown keys -> 4041, bad values -> 4042."""
    entries = r.tlv() if r.remaining() else []
    if len(entries) % 2:
        raise IggyError(ErrorCode.INVALID_FORMAT)
    out: dict[str, OptionValue] = {}
    for i in range(0, len(entries), 2):
        (kkind, kraw), (vkind, vraw) = entries[i], entries[i + 1]
        if kkind != KIND_STRING or not 1 <= len(kraw) <= 255 or not 1 <= len(vraw) <= 255:
            raise IggyError(ErrorCode.INVALID_FORMAT)
        key = kraw.decode("utf-8", "replace")
        if key not in TOPIC_OPTIONS:
            raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY, f"unsupported option key {key}", field=key)
        if key in out:
            raise IggyError(ErrorCode.INVALID_FORMAT)
        out[key] = parse_option(key, vkind, vraw)
    return out


def options_from_text(pairs: Mapping[str, object]) -> dict[str, OptionValue]:
    """{key: value} from string pairs (the REST API's `options` map), parsed as read_options does."""
    out: dict[str, OptionValue] = {}
    for key, text in pairs.items():
        if key not in TOPIC_OPTIONS:
            raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY, f"unsupported option key {key}", field=key)
        out[key] = parse_option(key, KIND_STRING, str(text).encode("utf-8"))
    return out


def validate_settings(settings: Mapping[str, Any], partitions_count: int) -> None:
    """The range rules of SEMANTICS 3.2 on a fully resolved settings dict."""
    if settings["compression_algorithm"] not in ("none", "gzip"):
        raise _bad("compression_algorithm")
    for key in ("durability", "consumer_offset_durability"):
        if settings[key] not in ("replicated", "persisted"):
            raise _bad(key)
    seg = settings["segment_size"]
    if not MiB <= seg <= GiB or seg % 512:
        raise _bad("segment_size")
    if settings["max_topic_size"] != U64_MAX and settings["max_topic_size"] < seg:
        raise IggyError(ErrorCode.INVALID_TOPIC_SIZE)
    if not 1 <= settings["messages_required_to_save"] <= 16_777_216:
        raise _bad("messages_required_to_save")
    if settings["size_of_messages_required_to_save"] > GiB:
        raise _bad("size_of_messages_required_to_save")
    if settings["preallocate_segments"] and seg * partitions_count > 64 * GiB:
        raise _bad("preallocate_segments")


def resolve(options: Mapping[str, OptionValue]) -> Settings:
    """Fill defaults; 0 for message_expiry / max_topic_size means "server default"."""
    settings: Settings = {k: o.default for k, o in TOPIC_OPTIONS.items()}
    for k, v in options.items():
        if k in ("message_expiry", "max_topic_size") and v == 0:
            v = TOPIC_OPTIONS[k].default
        settings[k] = v
    return settings


def encode_value(kind: int, value: OptionValue) -> bytes:
    if kind == KIND_BOOL:
        return b"\x01" if value else b"\x00"
    if kind == KIND_STRING:
        return str(value).encode("utf-8")
    if kind == KIND_U32:
        return int(value).to_bytes(4, "little")
    return int(value).to_bytes(8, "little")


def _options_entries(topic: TopicMeta, keys: Iterable[str]) -> list[tuple[int, bytes]]:
    entries = []
    for key in sorted(keys):
        opt = TOPIC_OPTIONS[key]
        entries.append((KIND_STRING, key.encode("utf-8")))
        entries.append((opt.kind, encode_value(opt.kind, topic.settings[key])))
    return entries


def encode_topic_header(plane: ControlPlane, w: Writer, stream_id: int, t: TopicMeta) -> None:
    size, messages = plane.storage.topic_stats(stream_id, t)
    s = t.settings
    explicit = set(t.explicit)
    w.u32(t.id).u64(t.created_at).u32(len(t.partitions)).u64(s["message_expiry"])
    w.u8(2 if s["compression_algorithm"] == "gzip" else 1).u64(s["max_topic_size"])
    w.u64(size).u64(messages).name(t.name)
    w.options(_options_entries(t, explicit))
    w.options(_options_entries(t, set(TOPIC_OPTIONS) - explicit))


def encode_topic_details(plane: ControlPlane, stream_id: int, t: TopicMeta) -> bytes:
    w = Writer()
    encode_topic_header(plane, w, stream_id, t)
    for p in sorted(t.partitions.values(), key=lambda p: p.id):
        segments, current, size, messages = plane.storage.partition_stats(stream_id, t.id, p.id)
        w.u32(p.id).u64(p.created_at).u32(segments).u64(current).u64(size).u64(messages)
    return w.getvalue()


# a topic and its stream; a stream and its topics (or () when the stream does not exist)
FoundTopic = tuple[StreamMeta, TopicMeta]
FoundTopics = tuple[StreamMeta, list[TopicMeta]] | tuple[()]


def encode_topics(plane: ControlPlane, found: FoundTopics) -> bytes:
    """GetTopics: u32 count + TopicHeader x count; `found` is (stream, topics) or () for a
    stream that does not exist."""
    if not found:
        return Writer().u32(0).getvalue()
    s, topics = found
    w = Writer().u32(len(topics))
    for t in topics:
        encode_topic_header(plane, w, s.id, t)
    return w.getvalue()


def encode_found_topic(plane: ControlPlane, found: FoundTopic) -> bytes:
    s, t = found
    return encode_topic_details(plane, s.id, t)


# ------------------------------------------------------------------- request bodies


def read_create(r: Reader) -> tuple[Ident, str, int, dict[str, OptionValue]]:
    sid = r.identifier()
    partitions = r.u32()
    name = r.name()
    return sid, name, partitions, read_options(r)


def read_update(r: Reader) -> tuple[Ident, Ident, str, dict[str, OptionValue]]:
    sid, tid = r.identifier(), r.identifier()
    name = r.name()
    return sid, tid, name, read_options(r)


def read_partitions(r: Reader) -> tuple[Ident, Ident, int]:
    sid, tid = r.identifier(), r.identifier()
    return sid, tid, r.u32()


def read_delete_segments(r: Reader) -> tuple[Ident, Ident, int, int]:
    sid, tid = r.identifier(), r.identifier()
    partition_id = r.u32()
    return sid, tid, partition_id, r.u32()


# ------------------------------------------------------------------- commands


@command(codes.GET_TOPIC, needs=perm.READ_TOPIC, decode=read_stream_topic, encode=encode_found_topic, missing=None)
def get_topic(plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta) -> FoundTopic:
    return s, t


# a missing stream lists as empty, not 1009 (upstream's "legacy parity" in
# core/server/src/responses.rs, build_get_topics_response); nothing to permit
@command(codes.GET_TOPICS, needs=perm.LIST_TOPICS, decode=read_ident, encode=encode_topics, missing=())
def get_topics(plane: ControlPlane, session: Session, s: StreamMeta) -> FoundTopics:
    return s, sorted(s.topics.values(), key=lambda t: t.id)


@command(codes.CREATE_TOPIC, needs=perm.CREATE_TOPIC, decode=read_create, encode=encode_found_topic)
def create_topic(
    plane: ControlPlane, session: Session, s: StreamMeta, name: str, partitions: int, options: Mapping[str, OptionValue]
) -> FoundTopic:
    if partitions > MAX_PARTITIONS_PER_REQUEST:
        raise IggyError(ErrorCode.TOO_MANY_PARTITIONS)
    settings = resolve(options)
    validate_settings(settings, partitions)
    if any(t.name == name for t in s.topics.values()):
        raise IggyError(ErrorCode.TOPIC_NAME_ALREADY_EXISTS)
    if len(s.topics) >= MAX_TOPICS_PER_STREAM:
        raise IggyError(ErrorCode.TOO_MANY_TOPICS)
    # the partitions' files are prepared before the commit (iggy.control.changes)
    rec = changes.apply(
        plane,
        {
            "op": "topic.create",
            "stream": s.id,
            "id": lowest_free_id(s.topics),
            "name": name,
            "created_at": now_us(),
            "partitions": partitions,
            "settings": settings,
            "explicit": sorted(options),
        },
    )
    return s, s.topics[rec["id"]]


@command(codes.UPDATE_TOPIC, needs=perm.MANAGE_TOPIC, decode=read_update)
def update_topic(
    plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, name: str, options: Mapping[str, OptionValue]
) -> None:
    for key in options:
        if not TOPIC_OPTIONS[key].updatable:
            raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY, f"option {key} can't be changed", field=key)
    if any(o.name == name and o.id != t.id for o in s.topics.values()):
        raise IggyError(ErrorCode.TOPIC_NAME_ALREADY_EXISTS)
    patch: dict[str, OptionValue] = {}
    for k, v in options.items():
        patch[k] = TOPIC_OPTIONS[k].default if k in ("message_expiry", "max_topic_size") and v == 0 else v
    merged = dict(t.settings, **patch)
    validate_settings(merged, len(t.partitions))
    changes.apply(plane, {"op": "topic.update", "stream": s.id, "id": t.id, "name": name, "settings": patch})


@command(codes.DELETE_TOPIC, needs=perm.MANAGE_TOPIC, decode=read_stream_topic)
def delete_topic(plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta) -> None:
    changes.apply(plane, {"op": "topic.delete", "stream": s.id, "id": t.id})


@command(codes.PURGE_TOPIC, needs=perm.MANAGE_TOPIC, decode=read_stream_topic)
def purge_topic(plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta) -> None:
    changes.purge(plane, "topic.purge", s.id, t.id)


@command(codes.CREATE_PARTITIONS, needs=perm.MANAGE_TOPIC, decode=read_partitions)
def create_partitions(plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, count: int) -> None:
    if not 1 <= count <= MAX_PARTITIONS_PER_REQUEST:
        raise IggyError(ErrorCode.INVALID_PARTITIONS_COUNT)
    first = max(t.partitions) + 1 if t.partitions else 0
    ids = list(range(first, first + count))
    changes.apply(plane, {"op": "partitions.create", "stream": s.id, "topic": t.id, "ids": ids, "created_at": now_us()})


@command(codes.DELETE_PARTITIONS, needs=perm.MANAGE_TOPIC, decode=read_partitions)
def delete_partitions(plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, count: int) -> None:
    if not 1 <= count <= MAX_PARTITIONS_PER_REQUEST or count > len(t.partitions):
        raise IggyError(ErrorCode.INVALID_PARTITIONS_COUNT)
    ids = sorted(t.partitions)[-count:]
    changes.apply(plane, {"op": "partitions.delete", "stream": s.id, "topic": t.id, "ids": ids})


@command(codes.DELETE_SEGMENTS, needs=perm.MANAGE_TOPIC, decode=read_delete_segments)
def delete_segments(
    plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, partition_id: int, count: int
) -> None:
    """Delete the oldest `count` sealed segments of one partition.

    The active segment is never deleted, and deletion stops at the consumer barrier (a
    segment holding offsets above the lowest stored consumer offset stays), as retention
    does (SEMANTICS 3.4, 8.6).
    """
    if partition_id not in t.partitions:
        raise IggyError(ErrorCode.PARTITION_NOT_FOUND)
    if count == 0:
        raise IggyError(ErrorCode.INVALID_SEGMENTS_COUNT)
    p = plane.storage.partition(s.id, t.id, partition_id)
    if p is None:
        raise IggyError(ErrorCode.PARTITION_NOT_FOUND)
    deleted = 0
    with p.lock:
        barrier = p.offsets.lowest()
        for base, last, _size, _max_ts, active in p.log.segments():
            if deleted >= count or active or (barrier is not None and last > barrier):
                break
            p.log.delete_segment(base)
            deleted += 1
    if deleted and plane.cluster is not None:  # the followers remove the same (RETAIN)
        plane.cluster.replication.retained((s.id, t.id, partition_id), p)
