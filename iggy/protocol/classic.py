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
commands have the 0.9 bodies and replies and run the 0.9 handlers unchanged.
"""

from __future__ import annotations

import inspect
import logging
import struct
import time
import weakref

from iggy.control import messages
from iggy.control import permissions as perm
from iggy.control.plane import COMMANDS
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

# code -> (handler(plane, session, reader), needs login); the 0.9 handlers for the commands
# whose bodies did not change (added at the first request), the functions below for those
# that did
_HANDLERS: dict = {}
_unchanged_registered = False

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

# per session, {(stream, topic, group): (polls served, partition polled last)}: which of its
# partitions a member polls next, and which one an offset request without a partition means
_group_cursors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def classic(code: int, auth: bool = True):
    def deco(fn):
        _HANDLERS[code] = (fn, auth)
        return fn

    return deco


def _register_unchanged() -> None:
    global _unchanged_registered
    from iggy.control import load_commands

    load_commands()
    for code in _SAME_AS_CURRENT:
        cmd = COMMANDS[code]
        _HANDLERS[code] = (cmd.handler, cmd.auth)
    _unchanged_registered = True


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
    if not _unchanged_registered:
        _register_unchanged()
    session.last_seen = time.monotonic()
    entry = _HANDLERS.get(code)
    if entry is None:
        return error_reply(ErrorCode.INVALID_COMMAND)
    fn, auth = entry
    if auth and (session.user_id is None or plane.user_of(session) is None):
        # not logged in, or the user was deleted meanwhile (as ControlPlane.handle)
        return error_reply(ErrorCode.UNAUTHENTICATED)
    try:
        result = fn(plane, session, Reader(body))
    except Exception as exc:
        return _failure(exc, code)
    if inspect.isawaitable(result):
        return _finish(result, code)
    return _success(result)


def _success(result):
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


async def _finish(pending, code: int):
    try:
        return _success(await pending)
    except Exception as exc:
        return _failure(exc, code)


# ------------------------------------------------------------------------- users and logins


def _encode_user(w: Writer, u) -> None:
    w.u32(u.id).u64(u.created_at).u8(u.status).name(u.username)


def _encode_user_details(u) -> bytes:
    w = Writer()
    _encode_user(w, u)
    if u.permissions is None:
        w.u32(0)
    else:
        raw = perm.encode(u.permissions)
        w.u8(1).u32(len(raw)).raw(raw)
    return w.getvalue()


@classic(LOGIN_USER, auth=False)
async def login_user(plane, session, r: Reader):
    from iggy.control.users import password_login

    username = r.name()
    password = r.string8()
    # version and context follow (u32-length strings) from newer classic clients: not needed
    user = await password_login(plane, session.address, username, password)
    plane.bind_login(session, user, 0)
    return Writer().u32(user.id).getvalue()


@classic(LOGIN_WITH_PERSONAL_ACCESS_TOKEN, auth=False)
def login_with_token(plane, session, r: Reader):
    from iggy.control.users import token_login

    token = r.string8()
    user = token_login(plane, session.address, token)
    plane.bind_login(session, user, 0)
    return Writer().u32(user.id).getvalue()


@classic(codes.GET_USER)
def get_user(plane, session, r: Reader):
    from iggy.control.users import find_user

    user = find_user(plane, r.identifier())
    if user is None:
        return None
    if user.id != session.user_id:
        perm.require(perm.can_read_users(plane.user_of(session)))
    return _encode_user_details(user)


@classic(codes.GET_USERS)
def get_users(plane, session, r: Reader):
    perm.require(perm.can_read_users(plane.user_of(session)))
    w = Writer()
    for u in sorted(plane.meta.state.users.values(), key=lambda u: u.id):
        _encode_user(w, u)
    return w.getvalue()


@classic(codes.CREATE_USER)
async def create_user(plane, session, r: Reader):
    from iggy.control.users import create_user_by

    perm.require(perm.can_manage_users(plane.user_of(session)))
    username = r.name()
    password = r.string8()
    status = r.u8()
    permissions = perm.read_optional(r)
    return _encode_user_details(await create_user_by(plane, username, password, status, permissions))


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
    w = Writer()
    _encode_stream(plane, w, s)
    for t in sorted(s.topics.values(), key=lambda t: t.id):
        _encode_topic_header(plane, w, s.id, t)
    return w.getvalue()


def _topic_details(plane, stream_id: int, t) -> bytes:
    w = Writer()
    _encode_topic_header(plane, w, stream_id, t)
    for p in sorted(t.partitions.values(), key=lambda p: p.id):
        segments, current, size, count = plane.storage.partition_stats(stream_id, t.id, p.id)
        w.u32(p.id).u64(p.created_at).u32(segments).u64(current).u64(size).u64(count)
    return w.getvalue()


@classic(codes.GET_STREAM)
def get_stream(plane, session, r: Reader):
    from iggy.control.streams import find_stream

    s = find_stream(plane, r.identifier())
    if s is None:
        return None
    perm.require(perm.can_read_stream(plane.user_of(session), s.id))
    return _stream_details(plane, s)


@classic(codes.GET_STREAMS)
def get_streams(plane, session, r: Reader):
    perm.require(perm.can_list_streams(plane.user_of(session)))
    w = Writer()
    for s in sorted(plane.meta.state.streams.values(), key=lambda s: s.id):
        _encode_stream(plane, w, s)
    return w.getvalue()


@classic(codes.CREATE_STREAM)
def create_stream(plane, session, r: Reader):
    from iggy.control.streams import create_stream_record

    name = r.name()
    perm.require(perm.can_create_stream(plane.user_of(session)))
    return _stream_details(plane, create_stream_record(plane, name))


@classic(codes.GET_TOPIC)
def get_topic(plane, session, r: Reader):
    from iggy.control.streams import find_stream
    from iggy.control.topics import find_topic

    sid, tid = r.identifier(), r.identifier()
    s = find_stream(plane, sid)
    t = find_topic(s, tid) if s is not None else None
    if t is None:
        return None
    perm.require(perm.can_read_topic(plane.user_of(session), s.id, t.id))
    return _topic_details(plane, s.id, t)


@classic(codes.GET_TOPICS)
def get_topics(plane, session, r: Reader):
    from iggy.control.streams import find_stream

    s = find_stream(plane, r.identifier())
    if s is None:
        return None  # a missing stream lists as empty, as on the 0.9 path
    perm.require(perm.can_read_topic(plane.user_of(session), s.id))
    w = Writer()
    for t in sorted(s.topics.values(), key=lambda t: t.id):
        _encode_topic_header(plane, w, s.id, t)
    return w.getvalue()


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


@classic(codes.CREATE_TOPIC)
def create_topic(plane, session, r: Reader):
    from iggy.control.streams import get_stream_or_fail
    from iggy.control.topics import create_topic_record

    sid = r.identifier()
    partitions = r.u32()
    options, name = _topic_settings(r)
    s = get_stream_or_fail(plane, sid)
    perm.require(perm.can_create_topic(plane.user_of(session), s.id))
    # what the client left at the server default is not an explicit setting of the topic
    explicit = {k: v for k, v in options.items() if v or k == "compression_algorithm"}
    t = create_topic_record(plane, s, name, partitions, explicit)
    return _topic_details(plane, s.id, t)


@classic(codes.UPDATE_TOPIC)
def update_topic(plane, session, r: Reader):
    from iggy.control.topics import resolve_topic, update_topic_by

    sid, tid = r.identifier(), r.identifier()
    options, name = _topic_settings(r)
    s, t = resolve_topic(plane, sid, tid)
    perm.require(perm.can_manage_topic(plane.user_of(session), s.id, t.id))
    update_topic_by(plane, s, t, name, options)


# ------------------------------------------------------------------------- messages and offsets


@classic(codes.SEND_MESSAGES)
def send_messages(plane, session, r: Reader):
    metadata_length = r.u32()
    sid, tid = r.identifier(), r.identifier()
    kind = r.u8()
    value = r.take(r.u8())
    count = r.u32()
    if r.position != 4 + metadata_length:
        raise IggyError(ErrorCode.INVALID_COMMAND)
    batch = classic_to_batch(r.data, r.position, count)
    _s, _t, _pid, _base, synced = messages.send(plane, session, sid, tid, kind, value, batch, 0, len(batch), count)
    return synced  # None, or a future done after fsync; the reply is empty either way


def _group_partition(plane, session, consumer_id, sid, tid, advance: bool):
    """The partition a group member means when it names none: the next of the partitions it
    may poll in turn when polling (`advance`), else the one it polled last (a partition it is
    handing over to a member that joined is still its to commit, iggy.control.groups); None
    when it has none."""
    from iggy.control.groups import get_group_or_fail
    from iggy.control.topics import resolve_topic

    s, t = resolve_topic(plane, sid, tid)
    perm.require(perm.can_poll(plane.user_of(session), s.id, t.id))
    g = get_group_or_fail(t, consumer_id)
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


@classic(codes.POLL_MESSAGES)
def poll_messages(plane, session, r: Reader):
    kind = r.u8()
    if kind not in (messages.CONSUMER_SINGLE, messages.CONSUMER_GROUP):
        raise IggyError(ErrorCode.INVALID_COMMAND)
    consumer_id = r.identifier()
    sid, tid = r.identifier(), r.identifier()
    has_partition = r.bool()
    partition_id = r.u32()
    strategy = r.u8()
    value = r.u64()
    count = r.u32()
    auto_commit = r.bool()
    if kind == messages.CONSUMER_GROUP and not has_partition:
        chosen = _group_partition(plane, session, consumer_id, sid, tid, advance=True)
        if chosen is None:
            return _empty_poll()  # a member without partitions gets nothing
        has_partition, partition_id = True, chosen
    try:
        pid, current, n, data = messages.poll(
            plane,
            session,
            kind,
            consumer_id,
            sid,
            tid,
            has_partition,
            partition_id,
            strategy,
            value,
            count,
            auto_commit,
        )
    except IggyError as exc:
        if exc.code == ErrorCode.CONSUMER_GROUP_PARTITION_NOT_OWNED:
            return _empty_poll()  # before 0.9: nothing to read there, not an error
        raise
    body, served = batches_to_classic(data) if n else (b"", 0)
    return [_POLL_HEAD.pack(0, 16 + len(body), pid, current, served), body]


def _with_group_partition(plane, session, r: Reader):
    """A Reader over the offset request with the partition filled in for a group member that
    named none (see _group_partition); the request unchanged otherwise."""
    body = r.data
    kind = r.u8()
    consumer_id = r.identifier()
    sid, tid = r.identifier(), r.identifier()
    at = r.position
    has_partition = r.bool()
    r.u32()
    if kind != messages.CONSUMER_GROUP or has_partition:
        return Reader(body)
    chosen = _group_partition(plane, session, consumer_id, sid, tid, advance=False)
    if chosen is None:
        raise IggyError(ErrorCode.INVALID_IDENTIFIER)
    return Reader(body[:at] + b"\x01" + struct.pack("<I", chosen) + body[at + 5 :])


@classic(codes.GET_CONSUMER_OFFSET)
def get_consumer_offset(plane, session, r: Reader):
    try:
        fixed = _with_group_partition(plane, session, r)
    except IggyError as exc:
        if exc.code == ErrorCode.INVALID_IDENTIFIER:
            return None
        raise
    return COMMANDS[codes.GET_CONSUMER_OFFSET].handler(plane, session, fixed)


@classic(codes.STORE_CONSUMER_OFFSET)
def store_consumer_offset(plane, session, r: Reader):
    return COMMANDS[codes.STORE_CONSUMER_OFFSET].handler(plane, session, _with_group_partition(plane, session, r))


@classic(codes.DELETE_CONSUMER_OFFSET)
def delete_consumer_offset(plane, session, r: Reader):
    return COMMANDS[codes.DELETE_CONSUMER_OFFSET].handler(plane, session, _with_group_partition(plane, session, r))


@classic(codes.FLUSH_UNSAVED_BUFFER)
def flush_unsaved_buffer(plane, session, r: Reader):
    """Nothing is ever unsaved here (an acknowledged batch is in the segment file); with
    fsync the partition's segment is synced to disk."""
    from iggy.control.topics import resolve_topic

    sid, tid = r.identifier(), r.identifier()
    partition_id = r.u32()
    fsync = r.bool()
    s, t = resolve_topic(plane, sid, tid)
    perm.require(perm.can_send(plane.user_of(session), s.id, t.id))
    if partition_id not in t.partitions:
        raise IggyError(ErrorCode.PARTITION_NOT_FOUND)
    if fsync:
        partition = messages.open_partition(plane, s, t, partition_id)
        with partition.lock:
            if partition.log.closed:
                raise messages.vanished(plane, s, t)
            partition.log.fsync()
