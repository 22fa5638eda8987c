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

from typing import TYPE_CHECKING, TypeVar

from iggy.metadata.state import GroupMeta, StreamMeta, TopicMeta, UserMeta, find_by_ident
from iggy.protocol.errors import ErrorCode, IggyError

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane

Ident = int | str  # an Identifier as read from a request: numeric id or name

_Entity = TypeVar("_Entity", StreamMeta, TopicMeta, GroupMeta, UserMeta)


def required(entity: _Entity | None, missing: ErrorCode) -> _Entity:
    """`entity`, or IggyError(`missing`) when the lookup found nothing: every get_* below."""
    if entity is None:
        raise IggyError(missing)
    return entity


def find_stream(plane: ControlPlane, ident: Ident) -> StreamMeta | None:
    return find_by_ident(plane.meta.state.streams, ident)


def get_stream(plane: ControlPlane, ident: Ident) -> StreamMeta:
    return required(find_stream(plane, ident), ErrorCode.STREAM_ID_NOT_FOUND)


def find_topic(stream: StreamMeta, ident: Ident) -> TopicMeta | None:
    return find_by_ident(stream.topics, ident)


def get_topic(stream: StreamMeta, ident: Ident) -> TopicMeta:
    return required(find_topic(stream, ident), ErrorCode.TOPIC_ID_NOT_FOUND)


def find_group(topic: TopicMeta, ident: Ident) -> GroupMeta | None:
    return find_by_ident(topic.groups, ident)


def get_group(topic: TopicMeta, ident: Ident) -> GroupMeta:
    return required(find_group(topic, ident), ErrorCode.CONSUMER_GROUP_ID_NOT_FOUND)


def find_user(plane: ControlPlane, ident: Ident) -> UserMeta | None:
    st = plane.meta.state
    if isinstance(ident, int):
        return st.users.get(ident)
    return st.user_by_name(ident)


def get_user(plane: ControlPlane, ident: Ident) -> UserMeta:
    return required(find_user(plane, ident), ErrorCode.RESOURCE_NOT_FOUND)
