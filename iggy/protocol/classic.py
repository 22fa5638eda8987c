"""The classic protocol: what clients before 0.9 speak (e.g. `apache-iggy==0.8.*`), translated
to the control plane that serves the 0.9 protocol, so both kinds of client share one server
and see the same streams, messages, offsets, users and consumer groups.

A connection speaks one protocol or the other; its first 8 bytes tell which
(`FrameReader.detect`: a 0.9 frame starts with 48 zero bytes, a classic one with a non-zero
length and a non-zero code). Framing, little-endian::

    request   [u32 length][u32 code][length - 4 bytes of payload]   length counts code + payload
    reply     [u32 status][u32 length][length bytes of payload]      status 0 = ok, else an Iggy
                                                                     error code and length 0

There is no result section, no eviction frame and no request checksum: every refusal is a
status. Bodies (the ones that differ from 0.9, docs/PROTOCOL.md section 11 has the rest)::

    LOGIN_USER (38)      WireName username, u8 len + password, [u32 len + version],
                         [u32 len + context]                      -> u32 user_id
    LOGIN_WITH_PAT (44)  u8 len + token                            -> u32 user_id
    CREATE_TOPIC (302)   Identifier stream, u32 partitions_count, u8 compression (1 none,
                         2 gzip), u64 message_expiry (0 = server default), u64 max_topic_size
                         (0 = server default), u8 replication_factor, WireName name -> TopicDetails
    UPDATE_TOPIC (304)   Identifier stream, Identifier topic, u8 compression, u64 message_expiry,
                         u64 max_topic_size, u8 replication_factor, WireName name
    Stream               u32 id, u64 created_at, u32 topics_count, u64 size_bytes,
                         u64 messages_count, WireName name      (no options block)
    StreamDetails        Stream + topics_count x TopicHeader
    TopicHeader          u32 id, u64 created_at, u32 partitions_count, u64 message_expiry,
                         u8 compression, u64 max_topic_size, u8 replication_factor (1),
                         u64 size_bytes, u64 messages_count, WireName name
    TopicDetails         TopicHeader + partitions_count x Partition (40 bytes, as in 0.9)
    GET_TOPICS (301)     TopicHeader x n, no count
    User                 u32 id, u64 created_at, u8 status, WireName username (no options)
    UserDetails          User + permissions (u32 0, or u8 1 + u32 length + Permissions)
    SEND_MESSAGES (101)  u32 metadata_length, Identifier stream, Identifier topic, Partitioning,
                         u32 count, count x 16-byte index, count x classic message -> empty
    POLL_MESSAGES (100)  request as in 0.9 -> u32 partition_id, u64 current_offset, u32 count,
                         classic messages
    FLUSH_UNSAVED_BUFFER (102)  Identifier stream, Identifier topic, u32 partition, u8 fsync

The classic message (64-byte header) and its conversion are in
`iggy.protocol.classic_messages`. Consumer groups: before 0.9 a group member polled without
naming a partition and the server chose one of the member's partitions in turn; a store or
get of a group offset without a partition means the partition polled last. The other
commands have the 0.9 bodies and replies.

Every command runs through the command registry (`iggy.control.registry.invoke`), as over the
0.9 protocol and HTTP, so its permission is checked there: a classic command is the 0.9
command with a classic decoder and/or encoder, or (poll and offsets of a group member that
names no partition, flush) an operation declared here with its rule.
"""

from __future__ import annotations

import inspect
import logging
import struct
import time
import weakref
from collections.abc import Callable

from iggy.control import lookup, messages, streams, users
from iggy.control import permissions as perm
from iggy.control.plane import ControlPlane  # noqa: F401 - imports (registers) every 0.9 command
from iggy.control.registry import COMMANDS, Command, invoke, operation
from iggy.control.users import password_login, token_login
from iggy.protocol import codes
from iggy.protocol.classic_messages import batches_to_classic, classic_to_batch
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader, Writer

log = logging.getLogger(__name__)

LOGIN_USER = 38
LOGIN_WITH_PERSONAL_ACCESS_TOKEN = 44

_REPLY_HEAD = struct.Struct("<II")
_POLL_HEAD = struct.Struct("<IIIQI")  # status, length, partition_id, current_offset, count
_EMPTY_OK = _REPLY_HEAD.pack(0, 0)
_COMPRESSION = {1: "none", 2: "gzip"}
_REPLICATION_FACTOR = 1  # a single node

# the commands before 0.9 whose request and reply bodies are those of 0.9
_SAME_AS_CURRENT = (
    codes.PING,
    codes.GET_STATS,
    codes.GET_SNAPSHOT_FILE,
    codes.GET_CLUSTER_METADATA,
    codes.GET_ME,
    codes.GET_CLIENT,
    codes.GET_CLIENTS,
    codes.DELETE_USER,
    codes.UPDATE_USER,
    codes.UPDATE_PERMISSIONS,
    codes.CHANGE_PASSWORD,
    codes.LOGOUT_USER,
    codes.GET_PERSONAL_ACCESS_TOKENS,
    codes.CREATE_PERSONAL_ACCESS_TOKEN,
    codes.DELETE_PERSONAL_ACCESS_TOKEN,
    codes.DELETE_STREAM,
    codes.UPDATE_STREAM,
    codes.PURGE_STREAM,
    codes.DELETE_TOPIC,
    codes.PURGE_TOPIC,
    codes.CREATE_PARTITIONS,
    codes.DELETE_PARTITIONS,
    codes.DELETE_SEGMENTS,
    codes.GET_CONSUMER_GROUP,
    codes.GET_CONSUMER_GROUPS,
    codes.CREATE_CONSUMER_GROUP,
    codes.DELETE_CONSUMER_GROUP,
    codes.JOIN_CONSUMER_GROUP,
    codes.LEAVE_CONSUMER_GROUP,
)


class Classic:
    """How one classic code runs: a registered command (or an operation declared here), the
    decoder of its classic body and the encoder of its classic reply (None: the 0.9 ones)."""

    __slots__ = ("command", "decode", "encode")

    def __init__(self, command: Command, decode: Callable | None = None, encode: Callable | None = None):
        self.command = command
        self.decode = decode or command.decode
        self.encode = encode or command.encode


_CLASSIC: dict[int, Classic] = {code: Classic(COMMANDS[code]) for code in _SAME_AS_CURRENT}

# per session, {(stream, topic, group): (polls served, partition polled last)}: which of its
# partitions a member polls next, and which one an offset request without a partition means
_group_cursors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def classic(code: int, command: Command | None = None, encode: Callable | None = None):
    """Serve classic `code` with `command` (by default the 0.9 command of the same code): the
    decorated function reads the classic body into that command's arguments."""

    def deco(decode):
        _CLASSIC[code] = Classic(command or COMMANDS[code], decode, encode)
        return decode

    return deco


# ------------------------------------------------------------------------- dispatch


def error_reply(code: int) -> bytes:
    return _REPLY_HEAD.pack(int(code), 0)


def ok_reply(payload=None) -> bytes:
    if not payload:
        return _EMPTY_OK
    return _REPLY_HEAD.pack(0, len(payload)) + payload


def handle(plane, session, code: int, body: bytes):
    """The reply to one classic request: bytes, a list of buffers to write in order, or an
    awaitable of bytes (logins hash passwords off the loop; persisted sends wait for fsync)."""
    session.last_seen = time.monotonic()
    entry = _CLASSIC.get(code)
    if entry is None:
        return error_reply(ErrorCode.INVALID_COMMAND)
    if entry.command.needs.login and (session.user_id is None or plane.user_of(session) is None):
        # not logged in, or the user was deleted meanwhile (as ControlPlane.handle)
        return error_reply(ErrorCode.UNAUTHENTICATED)
    try:
        result = invoke(plane, session, entry.command, entry.decode(Reader(body)))
        if inspect.isawaitable(result):
            return _finish(plane, entry, result, code)
        return _success(plane, entry, result)
    except Exception as exc:
        return _failure(exc, code)


def _success(plane, entry: Classic, result):
    if result is not None and entry.encode is not None:
        result = entry.encode(plane, result)
    if type(result) is list:  # already framed parts (poll)
        return result
    if type(result) is tuple:
        result = b"".join(result)
    return ok_reply(result)


def _failure(exc: Exception, code: int) -> bytes:
    if isinstance(exc, IggyError):
        return error_reply(exc.code)
    log.error("classic command %d failed", code, exc_info=exc)
    return error_reply(ErrorCode.ERROR)


async def _finish(plane, entry: Classic, pending, code: int):
    try:
        return _success(plane, entry, await pending)
    except Exception as exc:
        return _failure(exc, code)


def _empty(plane, result) -> bytes:
    """A reply with an empty body, whatever the 0.9 command returns (sends, logins' own)."""
    return b""


# ------------------------------------------------------------------------- users and logins


def _encode_user(w: Writer, u) -> None:
    w.u32(u.id).u64(u.created_at).u8(u.status).name(u.username)


def _encode_user_details(plane, u) -> bytes:
    return users.encode_user_details(plane, u, _encode_user)


def _encode_users(plane, items) -> bytes:
    return users.encode_users(plane, items, _encode_user)


@operation(perm.PUBLIC)
async def _login_user(plane, session, username: str, password: str) -> bytes:
    user = await password_login(plane, session.address, username, password)
    plane.bind_login(session, user, 0)
    return Writer().u32(user.id).getvalue()


@classic(LOGIN_USER, _login_user)
def _read_login_user(r: Reader) -> tuple:
    # version and context follow (u32-length strings) from newer classic clients: not needed
    username = r.name()
    return username, r.string8()


@operation(perm.PUBLIC)
def _login_with_token(plane, session, token: str) -> bytes:
    user = token_login(plane, session.address, token)
    plane.bind_login(session, user, 0)
    return Writer().u32(user.id).getvalue()


@classic(LOGIN_WITH_PERSONAL_ACCESS_TOKEN, _login_with_token)
def _read_token(r: Reader) -> tuple:
    return (r.string8(),)


_CLASSIC[codes.GET_USER] = Classic(COMMANDS[codes.GET_USER], encode=_encode_user_details)
_CLASSIC[codes.GET_USERS] = Classic(COMMANDS[codes.GET_USERS], encode=_encode_users)


@classic(codes.CREATE_USER, encode=_encode_user_details)
def _read_create_user(r: Reader) -> tuple:
    username = r.name()
    password = r.string8()
    status = r.u8()
    return username, password, status, perm.read_optional(r)


# ------------------------------------------------------------------------- streams and topics


def _encode_stream(plane, w: Writer, s) -> None:
    size, count = plane.storage.stream_stats(s)
    w.u32(s.id).u64(s.created_at).u32(len(s.topics)).u64(size).u64(count).name(s.name)


def _encode_topic_header(plane, w: Writer, stream_id: int, t) -> None:
    size, count = plane.storage.topic_stats(stream_id, t)
    settings = t.settings
    w.u32(t.id).u64(t.created_at).u32(len(t.partitions)).u64(settings["message_expiry"])
    w.u8(2 if settings["compression_algorithm"] == "gzip" else 1).u64(settings["max_topic_size"])
    w.u8(_REPLICATION_FACTOR).u64(size).u64(count).name(t.name)


def _stream_details(plane, s) -> bytes:
    return streams.encode_stream_details(plane, s, _encode_stream, _encode_topic_header)


def _streams(plane, items) -> bytes:
    return streams.encode_streams(plane, items, _encode_stream)


def _topic_details(plane, found) -> bytes:
    s, t = found
    w = Writer()
    _encode_topic_header(plane, w, s.id, t)
    for p in sorted(t.partitions.values(), key=lambda p: p.id):
        segments, current, size, count = plane.storage.partition_stats(s.id, t.id, p.id)
        w.u32(p.id).u64(p.created_at).u32(segments).u64(current).u64(size).u64(count)
    return w.getvalue()


def _topics(plane, found) -> bytes:
    """TopicHeader x n, no count; a missing stream lists as empty (as on the 0.9 path)."""
    if not found:
        return b""
    s, topics = found
    w = Writer()
    for t in topics:
        _encode_topic_header(plane, w, s.id, t)
    return w.getvalue()


_CLASSIC[codes.GET_STREAM] = Classic(COMMANDS[codes.GET_STREAM], encode=_stream_details)
_CLASSIC[codes.GET_STREAMS] = Classic(COMMANDS[codes.GET_STREAMS], encode=_streams)
_CLASSIC[codes.GET_TOPIC] = Classic(COMMANDS[codes.GET_TOPIC], encode=_topic_details)
_CLASSIC[codes.GET_TOPICS] = Classic(COMMANDS[codes.GET_TOPICS], encode=_topics)


@classic(codes.CREATE_STREAM, encode=_stream_details)
def _read_create_stream(r: Reader) -> tuple:
    return (r.name(),)


def _topic_settings(r: Reader) -> tuple[dict, str]:
    """The classic topic fields after the identifiers, as 0.9 topic options, and the name.

    0 for message_expiry or max_topic_size means the server default, as in 0.9; a
    compression code other than 1 (none) or 2 (gzip) is 4042, like a bad option value.
    """
    compression = r.u8()
    expiry = r.u64()
    max_size = r.u64()
    r.u8()  # replication factor: a single node keeps one copy
    name = r.name()
    if compression not in _COMPRESSION:
        raise IggyError(ErrorCode.INVALID_OPTION_VALUE, "invalid compression algorithm", field="compression_algorithm")
    return {
        "compression_algorithm": _COMPRESSION[compression],
        "message_expiry": expiry,
        "max_topic_size": max_size,
    }, name


@classic(codes.CREATE_TOPIC, encode=_topic_details)
def _read_create_topic(r: Reader) -> tuple:
    sid = r.identifier()
    partitions = r.u32()
    options, name = _topic_settings(r)
    # what the client left at the server default is not an explicit setting of the topic
    explicit = {k: v for k, v in options.items() if v or k == "compression_algorithm"}
    return sid, name, partitions, explicit


@classic(codes.UPDATE_TOPIC)
def _read_update_topic(r: Reader) -> tuple:
    sid, tid = r.identifier(), r.identifier()
    options, name = _topic_settings(r)
    return sid, tid, name, options


# ------------------------------------------------------------------------- messages and offsets


@classic(codes.SEND_MESSAGES, encode=_empty)
def _read_send(r: Reader) -> tuple:
    metadata_length = r.u32()
    sid, tid = r.identifier(), r.identifier()
    kind = r.u8()
    value = r.take(r.u8())
    count = r.u32()
    if r.position != 4 + metadata_length:
        raise IggyError(ErrorCode.INVALID_COMMAND)
    batch = classic_to_batch(r.data, r.position, count)
    return sid, tid, kind, value, batch, 0, len(batch), count


def _group_partition(plane, session, s, t, consumer_id, advance: bool):
    """The partition a group member means when it names none: the next of the partitions it
    may poll in turn when polling (`advance`), else the one it polled last (a partition it is
    handing over to a member that joined is still its to commit, iggy.control.groups); None
    when it has none."""
    g = lookup.get_group(t, consumer_id)
    key = (s.id, t.id, g.id)
    assignment = plane.groups.assignment(key, session)
    if assignment is None:
        raise IggyError(ErrorCode.CONSUMER_GROUP_MEMBER_NOT_FOUND)
    pollable = assignment[1]
    cursors = _group_cursors.setdefault(session, {})
    turn, last = cursors.get(key, (0, None))
    if not advance:
        return last if last is not None else (pollable[0] if pollable else None)
    if not pollable:
        return None
    chosen = pollable[turn % len(pollable)]
    cursors[key] = (turn + 1, chosen)
    return chosen


def _empty_poll() -> list:
    return [_POLL_HEAD.pack(0, 16, 0, 0, 0)]


@operation(perm.POLL)
def _poll(plane, session, s, t, kind, consumer_id, has_partition, partition_id, strategy, value, count, auto_commit):
    if kind == messages.CONSUMER_GROUP and not has_partition:
        chosen = _group_partition(plane, session, s, t, consumer_id, advance=True)
        if chosen is None:
            return _empty_poll()  # a member without partitions gets nothing
        has_partition, partition_id = True, chosen
    try:
        pid, current, n, data = messages.poll_messages(
            plane, session, s, t, kind, consumer_id, has_partition, partition_id, strategy, value, count, auto_commit
        )
    except IggyError as exc:
        if exc.code == ErrorCode.CONSUMER_GROUP_PARTITION_NOT_OWNED:
            return _empty_poll()  # before 0.9: nothing to read there, not an error
        raise
    body, served = batches_to_classic(data) if n else (b"", 0)
    return [_POLL_HEAD.pack(0, 16 + len(body), pid, current, served), body]


_CLASSIC[codes.POLL_MESSAGES] = Classic(_poll, messages.read_poll)


def _offset_partition(plane, session, s, t, kind, consumer_id, has_partition, partition_id) -> tuple[bool, int]:
    """(has_partition, partition) of an offset request, filled in for a group member that named
    none (see _group_partition); IggyError 3 (InvalidIdentifier) when it owns none."""
    if kind != messages.CONSUMER_GROUP or has_partition:
        return has_partition, partition_id
    chosen = _group_partition(plane, session, s, t, consumer_id, advance=False)
    if chosen is None:
        raise IggyError(ErrorCode.INVALID_IDENTIFIER)
    return True, chosen


@operation(perm.POLL, missing=None)
def _get_offset(plane, session, s, t, kind, consumer_id, has_partition, partition_id):
    try:
        has_partition, partition_id = _offset_partition(
            plane, session, s, t, kind, consumer_id, has_partition, partition_id
        )
    except IggyError as exc:
        if exc.code == ErrorCode.INVALID_IDENTIFIER:
            return None
        raise
    return messages.get_consumer_offset(plane, session, s, t, kind, consumer_id, has_partition, partition_id)


@operation(perm.POLL)
def _store_offset(plane, session, s, t, kind, consumer_id, has_partition, partition_id, offset):
    has_partition, partition_id = _offset_partition(
        plane, session, s, t, kind, consumer_id, has_partition, partition_id
    )
    messages.store_consumer_offset(plane, session, s, t, kind, consumer_id, has_partition, partition_id, offset)


@operation(perm.POLL)
def _delete_offset(plane, session, s, t, kind, consumer_id, has_partition, partition_id):
    has_partition, partition_id = _offset_partition(
        plane, session, s, t, kind, consumer_id, has_partition, partition_id
    )
    messages.delete_consumer_offset(plane, session, s, t, kind, consumer_id, has_partition, partition_id)


_CLASSIC[codes.GET_CONSUMER_OFFSET] = Classic(_get_offset, messages.read_offset_target, messages.encode_offset)
_CLASSIC[codes.STORE_CONSUMER_OFFSET] = Classic(_store_offset, messages.read_store_offset)
_CLASSIC[codes.DELETE_CONSUMER_OFFSET] = Classic(_delete_offset, messages.read_delete_offset)


@operation(perm.SEND)
def _flush_unsaved_buffer(plane, session, s, t, partition_id: int, fsync: bool) -> None:
    """Nothing is ever unsaved here (an acknowledged batch is in the segment file); with
    fsync the partition's segment is synced to disk."""
    if partition_id not in t.partitions:
        raise IggyError(ErrorCode.PARTITION_NOT_FOUND)
    if fsync:
        partition = messages.open_partition(plane, s, t, partition_id)
        with partition.lock:
            if partition.log.closed:
                raise messages.vanished(plane, s, t)
            partition.log.fsync()


@classic(codes.FLUSH_UNSAVED_BUFFER, _flush_unsaved_buffer)
def _read_flush(r: Reader) -> tuple:
    sid, tid = r.identifier(), r.identifier()
    partition_id = r.u32()
    return sid, tid, partition_id, r.bool()
