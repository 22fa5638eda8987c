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

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from iggy.control import changes
from iggy.control import permissions as perm
from iggy.control.clock import now_us
from iggy.control.lookup import Ident
from iggy.control.registry import command, read_ident
from iggy.control.topics import TopicLayout, encode_topic_header
from iggy.metadata.state import StreamMeta, lowest_free_id
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader, Writer

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session

# writes one stream of a reply: (plane, writer, stream)
StreamLayout = Callable[["ControlPlane", Writer, StreamMeta], None]

MAX_STREAMS = 1_048_576


def refuse_options(r: Reader) -> None:
    if r.remaining() and r.tlv():
        raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY)


def encode_stream(plane: ControlPlane, w: Writer, s: StreamMeta) -> None:
    size, messages = plane.storage.stream_stats(s)
    w.u32(s.id).u64(s.created_at).u32(len(s.topics)).u64(size).u64(messages).name(s.name).u32(0)


def encode_stream_details(
    plane: ControlPlane,
    s: StreamMeta,
    stream_layout: StreamLayout = encode_stream,
    topic_layout: TopicLayout = encode_topic_header,
) -> bytes:
    """A stream and its topics in id order; the layouts write one stream / one topic (the
    classic protocol passes its own)."""
    w = Writer()
    stream_layout(plane, w, s)
    for t in sorted(s.topics.values(), key=lambda t: t.id):
        topic_layout(plane, w, s.id, t)
    return w.getvalue()


def encode_streams(
    plane: ControlPlane, streams: Iterable[StreamMeta], stream_layout: StreamLayout = encode_stream
) -> bytes:
    """The stream list; `stream_layout` writes one stream (as in encode_stream_details)."""
    w = Writer()
    for s in streams:
        stream_layout(plane, w, s)
    return w.getvalue()


def read_create(r: Reader) -> tuple[str]:
    name = r.name()
    refuse_options(r)
    return (name,)


def read_update(r: Reader) -> tuple[Ident, str]:
    ident = r.identifier()
    name = r.name()
    refuse_options(r)
    return ident, name


@command(codes.GET_STREAM, needs=perm.READ_STREAM, decode=read_ident, encode=encode_stream_details, missing=None)
def get_stream(plane: ControlPlane, session: Session, s: StreamMeta) -> StreamMeta:
    return s


@command(codes.GET_STREAMS, needs=perm.LIST_STREAMS, encode=encode_streams)
def get_streams(plane: ControlPlane, session: Session) -> list[StreamMeta]:
    return sorted(plane.meta.state.streams.values(), key=lambda s: s.id)


@command(codes.CREATE_STREAM, needs=perm.CREATE_STREAM, decode=read_create, encode=encode_stream_details)
def create_stream(plane: ControlPlane, session: Session, name: str) -> StreamMeta:
    st = plane.meta.state
    if st.stream_by_name(name) is not None:
        raise IggyError(ErrorCode.STREAM_NAME_ALREADY_EXISTS)
    if len(st.streams) >= MAX_STREAMS:
        raise IggyError(ErrorCode.TOO_MANY_STREAMS)
    rec = changes.apply(
        plane, {"op": "stream.create", "id": lowest_free_id(st.streams), "name": name, "created_at": now_us()}
    )
    return st.streams[rec["id"]]


@command(codes.UPDATE_STREAM, needs=perm.MANAGE_STREAM, decode=read_update)
def update_stream(plane: ControlPlane, session: Session, s: StreamMeta, name: str) -> None:
    other = plane.meta.state.stream_by_name(name)
    if other is not None and other.id != s.id:
        raise IggyError(ErrorCode.STREAM_NAME_ALREADY_EXISTS)
    changes.apply(plane, {"op": "stream.update", "id": s.id, "name": name})


@command(codes.DELETE_STREAM, needs=perm.MANAGE_STREAM, decode=read_ident)
def delete_stream(plane: ControlPlane, session: Session, s: StreamMeta) -> None:
    changes.apply(plane, {"op": "stream.delete", "id": s.id})


@command(codes.PURGE_STREAM, needs=perm.MANAGE_STREAM, decode=read_ident)
def purge_stream(plane: ControlPlane, session: Session, s: StreamMeta) -> None:
    changes.purge(plane, "stream.purge", s.id)
