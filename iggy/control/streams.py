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

from iggy.control import permissions as perm
from iggy.control.clock import now_us
from iggy.control.registry import command
from iggy.control.topics import encode_topic_header
from iggy.metadata.state import lowest_free_id
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader, Writer

MAX_STREAMS = 1_048_576


def refuse_options(r: Reader) -> None:
    if r.remaining() and r.tlv():
        raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY)


def encode_stream(plane, w: Writer, s) -> None:
    size, messages = plane.storage.stream_stats(s)
    w.u32(s.id).u64(s.created_at).u32(len(s.topics)).u64(size).u64(messages).name(s.name).u32(0)


def encode_stream_details(plane, s, stream_layout=encode_stream, topic_layout=encode_topic_header) -> bytes:
    """A stream and its topics in id order; the layouts write one stream / one topic (the
    classic protocol passes its own)."""
    w = Writer()
    stream_layout(plane, w, s)
    for t in sorted(s.topics.values(), key=lambda t: t.id):
        topic_layout(plane, w, s.id, t)
    return w.getvalue()


def encode_streams(plane, streams, stream_layout=encode_stream) -> bytes:
    """The stream list; `stream_layout` writes one stream (as in encode_stream_details)."""
    w = Writer()
    for s in streams:
        stream_layout(plane, w, s)
    return w.getvalue()


def read_stream_ident(r: Reader) -> tuple:
    return (r.identifier(),)


def read_create(r: Reader) -> tuple:
    name = r.name()
    refuse_options(r)
    return (name,)


def read_update(r: Reader) -> tuple:
    ident = r.identifier()
    name = r.name()
    refuse_options(r)
    return ident, name


@command(codes.GET_STREAM, needs=perm.READ_STREAM, decode=read_stream_ident, encode=encode_stream_details, missing=None)
def get_stream(plane, session, s):
    return s


@command(codes.GET_STREAMS, needs=perm.LIST_STREAMS, encode=encode_streams)
def get_streams(plane, session):
    return sorted(plane.meta.state.streams.values(), key=lambda s: s.id)


@command(codes.CREATE_STREAM, needs=perm.CREATE_STREAM, decode=read_create, encode=encode_stream_details)
def create_stream(plane, session, name: str):
    st = plane.meta.state
    if st.stream_by_name(name) is not None:
        raise IggyError(ErrorCode.STREAM_NAME_ALREADY_EXISTS)
    if len(st.streams) >= MAX_STREAMS:
        raise IggyError(ErrorCode.TOO_MANY_STREAMS)
    rec = plane.meta.commit(
        {"op": "stream.create", "id": lowest_free_id(st.streams), "name": name, "created_at": now_us()}
    )
    return st.streams[rec["id"]]


@command(codes.UPDATE_STREAM, needs=perm.MANAGE_STREAM, decode=read_update)
def update_stream(plane, session, s, name: str) -> None:
    other = plane.meta.state.stream_by_name(name)
    if other is not None and other.id != s.id:
        raise IggyError(ErrorCode.STREAM_NAME_ALREADY_EXISTS)
    plane.meta.commit({"op": "stream.update", "id": s.id, "name": name})


@command(codes.DELETE_STREAM, needs=perm.MANAGE_STREAM, decode=read_stream_ident)
def delete_stream(plane, session, s) -> None:
    plane.meta.commit({"op": "stream.delete", "id": s.id})
    plane.groups.forget_stream(s.id)
    plane.storage.delete_stream(s.id)


@command(codes.PURGE_STREAM, needs=perm.MANAGE_STREAM, decode=read_stream_ident)
def purge_stream(plane, session, s) -> None:
    for t in s.topics.values():
        plane.storage.purge_topic(s.id, t)
