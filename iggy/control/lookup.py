"""Finding streams, topics, consumer groups and users by Identifier, with their not-found codes.

An Identifier (TCP.md 5.2) is either a numeric id or a name; `find_*` answer the entity or
None, `get_*` the entity or the IggyError of whatever is missing. Every command module and
the registry look entities up here, so the command modules do not import one another for it.

Not-found codes (as upstream, core/metadata/src/stm/result.rs): a stream is 1009, a topic
2010, a consumer group 5000 whether it was named by id or by name; a user is 20
(ResourceNotFound). Lookups iterate over snapshots of the dictionaries (find_by_ident):
shard threads read while the event loop writes.
"""

from __future__ import annotations

from typing import Any

from iggy.metadata.state import GroupMeta, State, StreamMeta, TopicMeta, UserMeta, find_by_ident
from iggy.protocol.errors import ErrorCode, IggyError


def find_stream(plane: Any, ident: int | str) -> StreamMeta | None:
    st: State = plane.meta.state
    if isinstance(ident, int):
        return st.streams.get(ident)
    return st.stream_by_name(ident)


def get_stream(plane: Any, ident: int | str) -> StreamMeta:
    s = find_stream(plane, ident)
    if s is None:
        raise IggyError(ErrorCode.STREAM_ID_NOT_FOUND)
    return s


def find_topic(stream: StreamMeta, ident: int | str) -> TopicMeta | None:
    topic: TopicMeta | None = find_by_ident(stream.topics, ident)
    return topic


def get_topic(stream: StreamMeta, ident: int | str) -> TopicMeta:
    t = find_topic(stream, ident)
    if t is None:
        raise IggyError(ErrorCode.TOPIC_ID_NOT_FOUND)
    return t


def get_stream_topic(plane: Any, stream_ident: int | str, topic_ident: int | str) -> tuple[StreamMeta, TopicMeta]:
    """(stream, topic), or IggyError with the not-found code of whichever is missing."""
    s = get_stream(plane, stream_ident)
    return s, get_topic(s, topic_ident)


def find_group(topic: TopicMeta, ident: int | str) -> GroupMeta | None:
    group: GroupMeta | None = find_by_ident(topic.groups, ident)
    return group


def get_group(topic: TopicMeta, ident: int | str) -> GroupMeta:
    g = find_group(topic, ident)
    if g is None:
        raise IggyError(ErrorCode.CONSUMER_GROUP_ID_NOT_FOUND)
    return g


def find_user(plane: Any, ident: int | str) -> UserMeta | None:
    st: State = plane.meta.state
    if isinstance(ident, int):
        return st.users.get(ident)
    return st.user_by_name(ident)


def get_user(plane: Any, ident: int | str) -> UserMeta:
    user = find_user(plane, ident)
    if user is None:
        raise IggyError(ErrorCode.RESOURCE_NOT_FOUND)
    return user
