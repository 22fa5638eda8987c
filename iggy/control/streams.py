"""Streams: create, get, list, update, delete, purge.

Wire bodies (TCP.md 7.1, 9.2, 9.3)::

    create   WireName name, options block (no stream option keys exist: any key -> 4041)
    update   Identifier stream, WireName name, options block
    Stream   u32 id, u64 created_at, u32 topics_count, u64 size_bytes, u64 messages_count,
             WireName name, u32 options length (0)
    GetStream  Stream + topics_count x TopicHeader
    list     Stream x n (no count)
"""
from __future__ import annotations

from iggy.protocol import codes
from iggy.protocol.wire import Reader, Writer
from iggy.control import permissions as perm
from iggy.control.plane import command, now_us
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.metadata.state import lowest_free_id

MAX_STREAMS = 1_048_576


def find_stream(plane, ident):
    st = plane.meta.state
    if isinstance(ident, int):
        return st.streams.get(ident)
    return st.stream_by_name(ident)


def get_stream_or_fail(plane, ident):
    """The stream, else 1009 whether `ident` is an id or a name: upstream has no other
    not-found code for a stream (core/metadata/src/stm/result.rs, core/server/src/responses.rs)."""
    s = find_stream(plane, ident)
    if s is None:
        raise IggyError(ErrorCode.STREAM_ID_NOT_FOUND)
    return s


def refuse_options(r: Reader) -> None:
    if r.remaining() and r.tlv():
        raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY)


def encode_stream(plane, w: Writer, s) -> None:
    size, messages = plane.storage.stream_stats(s)
    w.u32(s.id).u64(s.created_at).u32(len(s.topics)).u64(size).u64(messages).name(s.name).u32(0)


def encode_stream_details(plane, s) -> bytes:
    from iggy.control.topics import encode_topic_header
    w = Writer()
    encode_stream(plane, w, s)
    for t in sorted(s.topics.values(), key=lambda t: t.id):
        encode_topic_header(plane, w, s.id, t)
    return w.getvalue()


@command(codes.GET_STREAM)
def get_stream(plane, session, r: Reader):
    ident = r.identifier()
    s = find_stream(plane, ident)
    if s is None:
        return None
    perm.require(perm.can_read_stream(plane.user_of(session), s.id))
    return encode_stream_details(plane, s)


@command(codes.GET_STREAMS)
def get_streams(plane, session, r: Reader):
    perm.require(perm.can_list_streams(plane.user_of(session)))
    w = Writer()
    for s in sorted(plane.meta.state.streams.values(), key=lambda s: s.id):
        encode_stream(plane, w, s)
    return w.getvalue()


def create_stream_record(plane, name: str):
    st = plane.meta.state
    if st.stream_by_name(name) is not None:
        raise IggyError(ErrorCode.STREAM_NAME_ALREADY_EXISTS)
    if len(st.streams) >= MAX_STREAMS:
        raise IggyError(ErrorCode.TOO_MANY_STREAMS)
    rec = plane.meta.commit({"op": "stream.create", "id": lowest_free_id(st.streams), "name": name,
                             "created_at": now_us()})
    return st.streams[rec["id"]]


@command(codes.CREATE_STREAM)
def create_stream(plane, session, r: Reader):
    name = r.name()
    refuse_options(r)
    perm.require(perm.can_create_stream(plane.user_of(session)))
    s = create_stream_record(plane, name)
    return encode_stream_details(plane, s)


@command(codes.UPDATE_STREAM)
def update_stream(plane, session, r: Reader):
    ident = r.identifier()
    name = r.name()
    refuse_options(r)
    s = get_stream_or_fail(plane, ident)
    perm.require(perm.can_manage_stream(plane.user_of(session), s.id))
    update_stream_by(plane, s, name)


def update_stream_by(plane, s, name: str) -> None:
    other = plane.meta.state.stream_by_name(name)
    if other is not None and other.id != s.id:
        raise IggyError(ErrorCode.STREAM_NAME_ALREADY_EXISTS)
    plane.meta.commit({"op": "stream.update", "id": s.id, "name": name})


def delete_stream_by(plane, s) -> None:
    plane.meta.commit({"op": "stream.delete", "id": s.id})
    plane.groups.forget_stream(s.id)
    plane.storage.delete_stream(s.id)


@command(codes.DELETE_STREAM)
def delete_stream(plane, session, r: Reader):
    ident = r.identifier()
    s = get_stream_or_fail(plane, ident)
    perm.require(perm.can_manage_stream(plane.user_of(session), s.id))
    delete_stream_by(plane, s)


@command(codes.PURGE_STREAM)
def purge_stream(plane, session, r: Reader):
    ident = r.identifier()
    s = get_stream_or_fail(plane, ident)
    perm.require(perm.can_manage_stream(plane.user_of(session), s.id))
    purge_stream_by(plane, s)


def purge_stream_by(plane, s) -> None:
    for t in s.topics.values():
        plane.storage.purge_topic(s.id, t)
