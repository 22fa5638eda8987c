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
command with a classic decoder and/or encoder; for the poll and the offset commands, the 0.9
command with a handler that first fills in the partition of a group member that names none
(`_for_member`); the logins and the flush are operations declared here with their rules.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import struct
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Concatenate, NoReturn, ParamSpec, TypeAlias, TypeVar, cast

from iggy.control import lookup, messages, streams, users
from iggy.control import permissions as perm
from iggy.control.plane import ControlPlane, Reply, Session  # imports (registers) every 0.9 command
from iggy.control.registry import COMMANDS, Command, Decoder, Encoder, invoke, operation
from iggy.control.users import password_login, token_login
from iggy.protocol import codes
from iggy.protocol.classic_messages import batches_to_classic, classic_to_batch
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader, Writer

if TYPE_CHECKING:
    from iggy.control.groups import GroupKey
    from iggy.control.lookup import Ident
    from iggy.metadata.state import StreamMeta, TopicMeta, UserMeta

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

    def __init__(self, command: Command, decode: Decoder | None = None, encode: Encoder | None = None) -> None:
        self.command = command
        self.decode: Decoder = decode or command.decode
        self.encode: Encoder | None = encode or command.encode


_CLASSIC: dict[int, Classic] = {code: Classic(COMMANDS[code]) for code in _SAME_AS_CURRENT}

# per session, {(stream, topic, group): (polls served, partition polled last)}: which of its
# partitions a member polls next, and which one an offset request without a partition means
_group_cursors: weakref.WeakKeyDictionary[Session, dict[GroupKey, tuple[int, int | None]]] = weakref.WeakKeyDictionary()

_D = TypeVar("_D", bound=Decoder)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def classic(code: int, command: Command | None = None, encode: Encoder | None = None) -> Callable[[_D], _D]:
    """Serve classic `code` with `command` (by default the 0.9 command of the same code): the
    decorated function reads the classic body into that command's arguments."""

    def deco(decode: _D) -> _D:
        _CLASSIC[code] = Classic(command or COMMANDS[code], decode, encode)
        return decode

    return deco


# ------------------------------------------------------------------------- dispatch


def error_reply(code: int) -> bytes:
    return _REPLY_HEAD.pack(int(code), 0)


def ok_reply(payload: bytes | None = None) -> bytes:
    if not payload:
        return _EMPTY_OK
    return _REPLY_HEAD.pack(0, len(payload)) + payload


def handle(plane: ControlPlane, session: Session, code: int, body: bytes) -> Reply | Awaitable[bytes]:
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


def _success(plane: ControlPlane, entry: Classic, result: object) -> bytes | list[bytes]:
    if result is not None and entry.encode is not None:
        result = entry.encode(plane, result)
    if type(result) is list:  # already framed parts (poll)
        return result
    if type(result) is tuple:
        result = b"".join(result)
    # what the encoder made, or what an operation without one answered: the body, or None
    return ok_reply(cast("bytes | None", result))


def _failure(exc: Exception, code: int) -> bytes:
    if isinstance(exc, IggyError):
        return error_reply(exc.code)
    log.error("classic command %d failed", code, exc_info=exc)
    return error_reply(ErrorCode.ERROR)


async def _finish(plane: ControlPlane, entry: Classic, pending: Awaitable[object], code: int) -> bytes:
    try:
        reply = _success(plane, entry, await pending)
        if isinstance(reply, list):  # framed parts come from the poll alone, which never waits
            raise TypeError(f"classic command {code} answered framed parts after waiting")
        return reply
    except Exception as exc:
        return _failure(exc, code)


def _empty(plane: ControlPlane, result: object) -> bytes:
    """A reply with an empty body, whatever the 0.9 command returns (sends, logins' own)."""
    return b""


# ------------------------------------------------------------------------- users and logins


def _encode_user(w: Writer, u: UserMeta) -> None:
    w.u32(u.id).u64(u.created_at).u8(u.status).name(u.username)


def _encode_user_details(plane: ControlPlane, u: UserMeta) -> bytes:
    return users.encode_user_details(plane, u, _encode_user)


def _encode_users(plane: ControlPlane, items: list[UserMeta]) -> bytes:
    return users.encode_users(plane, items, _encode_user)


@operation(perm.PUBLIC)
async def _login_user(plane: ControlPlane, session: Session, username: str, password: str) -> bytes:
    user = await password_login(plane, session.address, username, password)
    plane.bind_login(session, user, 0)
    return Writer().u32(user.id).getvalue()


@classic(LOGIN_USER, _login_user)
def _read_login_user(r: Reader) -> tuple[str, str]:
    # version and context follow (u32-length strings) from newer classic clients: not needed
    username = r.name()
    return username, r.string8()


@operation(perm.PUBLIC)
def _login_with_token(plane: ControlPlane, session: Session, token: str) -> bytes:
    user = token_login(plane, session.address, token)
    plane.bind_login(session, user, 0)
    return Writer().u32(user.id).getvalue()


@classic(LOGIN_WITH_PERSONAL_ACCESS_TOKEN, _login_with_token)
def _read_token(r: Reader) -> tuple[str]:
    return (r.string8(),)


_CLASSIC[codes.GET_USER] = Classic(COMMANDS[codes.GET_USER], encode=_encode_user_details)
_CLASSIC[codes.GET_USERS] = Classic(COMMANDS[codes.GET_USERS], encode=_encode_users)


@classic(codes.CREATE_USER, encode=_encode_user_details)
def _read_create_user(r: Reader) -> tuple[str, str, int, dict[str, object] | None]:
    username = r.name()
    password = r.string8()
    status = r.u8()
    return username, password, status, perm.read_optional(r)


# ------------------------------------------------------------------------- streams and topics


def _encode_stream(plane: ControlPlane, w: Writer, s: StreamMeta) -> None:
    size, count = plane.storage.stream_stats(s)
    w.u32(s.id).u64(s.created_at).u32(len(s.topics)).u64(size).u64(count).name(s.name)


def _encode_topic_header(plane: ControlPlane, w: Writer, stream_id: int, t: TopicMeta) -> None:
    size, count = plane.storage.topic_stats(stream_id, t)
    settings = t.settings
    w.u32(t.id).u64(t.created_at).u32(len(t.partitions)).u64(settings["message_expiry"])
    w.u8(2 if settings["compression_algorithm"] == "gzip" else 1).u64(settings["max_topic_size"])
    w.u8(_REPLICATION_FACTOR).u64(size).u64(count).name(t.name)


def _stream_details(plane: ControlPlane, s: StreamMeta) -> bytes:
    return streams.encode_stream_details(plane, s, _encode_stream, _encode_topic_header)


def _streams(plane: ControlPlane, items: list[StreamMeta]) -> bytes:
    return streams.encode_streams(plane, items, _encode_stream)


def _topic_details(plane: ControlPlane, found: tuple[StreamMeta, TopicMeta]) -> bytes:
    s, t = found
    w = Writer()
    _encode_topic_header(plane, w, s.id, t)
    for p in sorted(t.partitions.values(), key=lambda p: p.id):
        segments, current, size, count = plane.storage.partition_stats(s.id, t.id, p.id)
        w.u32(p.id).u64(p.created_at).u32(segments).u64(current).u64(size).u64(count)
    return w.getvalue()


def _topics(plane: ControlPlane, found: tuple[StreamMeta, list[TopicMeta]] | tuple[()]) -> bytes:
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
def _read_create_stream(r: Reader) -> tuple[str]:
    return (r.name(),)


def _topic_settings(r: Reader) -> tuple[dict[str, str | int], str]:
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
def _read_create_topic(r: Reader) -> tuple[Ident, str, int, dict[str, str | int]]:
    sid = r.identifier()
    partitions = r.u32()
    options, name = _topic_settings(r)
    # what the client left at the server default is not an explicit setting of the topic
    explicit = {k: v for k, v in options.items() if v or k == "compression_algorithm"}
    return sid, name, partitions, explicit


@classic(codes.UPDATE_TOPIC)
def _read_update_topic(r: Reader) -> tuple[Ident, Ident, str, dict[str, str | int]]:
    sid, tid = r.identifier(), r.identifier()
    options, name = _topic_settings(r)
    return sid, tid, name, options


# ------------------------------------------------------------------------- messages and offsets


@classic(codes.SEND_MESSAGES, encode=_empty)
def _read_send(r: Reader) -> tuple[Ident, Ident, int, bytes, bytes, int, int, int]:
    sid, tid, kind, value, count = messages.read_send_metadata(r)
    batch = classic_to_batch(r.data, r.position, count)
    return sid, tid, kind, value, batch, 0, len(batch), count


def _group_partition(
    plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, consumer_id: Ident, advance: bool
) -> int | None:
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


def _empty_poll() -> list[bytes]:
    return [_POLL_HEAD.pack(0, 16, 0, 0, 0)]


def _classic_polled(
    run: Callable[_P, tuple[int, int, int, bytes]],
) -> Callable[_P, list[bytes]]:
    """The 0.9 poll `run`, answering with the classic reply as framed parts (partition id,
    current offset, count, classic messages)."""

    def polled(*args: _P.args, **kwargs: _P.kwargs) -> list[bytes]:
        try:
            pid, current, n, data = run(*args, **kwargs)
        except IggyError as exc:
            if exc.code == ErrorCode.CONSUMER_GROUP_PARTITION_NOT_OWNED:
                return _empty_poll()  # before 0.9: nothing to read there, not an error
            raise
        body, served = batches_to_classic(data) if n else (b"", 0)
        return [_POLL_HEAD.pack(0, 16 + len(body), pid, current, served), body]

    return polled


# the function of a 0.9 command that acts for a consumer: (plane, session, stream, topic,
# consumer, *its own arguments) -> its result
_ConsumerCommand: TypeAlias = (
    "Callable[Concatenate[ControlPlane, Session, StreamMeta, TopicMeta, messages.Consumer, _P], _R]"
)


def _no_partition_owned() -> NoReturn:
    raise IggyError(ErrorCode.INVALID_IDENTIFIER)


def _for_member(
    code: int,
    run: _ConsumerCommand[_P, _R],
    owns_none: Callable[[], _R] = _no_partition_owned,
    polling: bool = False,
) -> Classic:
    """The 0.9 command `code` (its rule and request body) running `run`, with the partition
    filled in for a consumer-group member that named none (see _group_partition): when
    `polling`, the next of its partitions in turn, else the one it polled last. When it has
    none, `owns_none()` answers (by default IggyError 6, InvalidIdentifier). A poll's `run`
    frames its reply itself; the others' replies are written by the 0.9 encoder."""

    def handler(
        plane: ControlPlane,
        session: Session,
        s: StreamMeta,
        t: TopicMeta,
        consumer: messages.Consumer,
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _R:
        if consumer.kind == messages.CONSUMER_GROUP and not consumer.has_partition:
            chosen = _group_partition(plane, session, s, t, consumer.id, advance=polling)
            if chosen is None:
                return owns_none()
            consumer = consumer._replace(has_partition=True, partition_id=chosen)
        return run(plane, session, s, t, consumer, *args, **kwargs)

    current = COMMANDS[code]
    encode = None if polling else current.encode
    return Classic(dataclasses.replace(current, code=0, name=f"classic {current.name}", handler=handler, encode=encode))


# a member without partitions polls nothing; one without an offset has none to get
_CLASSIC[codes.POLL_MESSAGES] = _for_member(
    codes.POLL_MESSAGES, _classic_polled(messages.poll_messages), owns_none=_empty_poll, polling=True
)
_CLASSIC[codes.GET_CONSUMER_OFFSET] = _for_member(
    codes.GET_CONSUMER_OFFSET, messages.get_consumer_offset, owns_none=lambda: None
)
_CLASSIC[codes.STORE_CONSUMER_OFFSET] = _for_member(codes.STORE_CONSUMER_OFFSET, messages.store_consumer_offset)
_CLASSIC[codes.DELETE_CONSUMER_OFFSET] = _for_member(codes.DELETE_CONSUMER_OFFSET, messages.delete_consumer_offset)


@operation(perm.SEND)
def _flush_unsaved_buffer(
    plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, partition_id: int, fsync: bool
) -> None:
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
def _read_flush(r: Reader) -> tuple[Ident, Ident, int, bool]:
    sid, tid = r.identifier(), r.identifier()
    partition_id = r.u32()
    return sid, tid, partition_id, r.bool()
