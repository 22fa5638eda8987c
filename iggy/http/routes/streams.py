"""Streams, topics, partitions, segments and consumer groups (HTTP.md 2, 5.1, 5.2, 5.5, 7).

Same layout as routes/users.py: `plane`-first functions run on the main loop, handlers on the
HTTP thread. Path segments `{stream_id}`, `{topic_id}`, `{group_id}` take an id or a name.
"""
from __future__ import annotations

from typing import Annotated

from litestar import Response, delete, get, post, put
from litestar.params import FromPath, JSONBody, PathParameter, QueryParameter

from iggy.control import permissions as perm
from iggy.control import groups, streams, topics
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.http import schemas, views
from iggy.http.context import Caller, Ctx, check_name, ident
from iggy.http.errors import NotFound

Count = Annotated[int, QueryParameter(ge=0, le=0xFFFFFFFF)]
PartitionId = Annotated[int, PathParameter(ge=0, le=0xFFFFFFFF)]


def found_topic(plane, sid: str, tid: str):
    """(stream, topic) for a read: the generic 404 when either is missing."""
    s = streams.find_stream(plane, ident(sid))
    t = topics.find_topic(s, ident(tid)) if s is not None else None
    if t is None:
        raise NotFound()
    return s, t


def _refuse_options(options: dict | None) -> None:
    """Streams have no option keys: any key is unsupported (4041)."""
    if options:
        raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY, field=next(iter(options)))


# ------------------------------------------------------------------- streams

def _get_streams(plane, user) -> list:
    perm.require(perm.can_list_streams(user))
    return [views.stream(plane, s) for s in sorted(plane.meta.state.streams.values(), key=lambda s: s.id)]


def _get_stream(plane, user, sid: str) -> dict:
    s = streams.find_stream(plane, ident(sid))
    if s is None:
        raise NotFound()
    perm.require(perm.can_read_stream(user, s.id))
    return views.stream_details(plane, s)


def _create_stream(plane, user, name: str) -> dict:
    perm.require(perm.can_create_stream(user))
    return views.stream_details(plane, streams.create_stream_record(plane, name))


def _update_stream(plane, user, sid: str, name: str) -> None:
    s = streams.get_stream_or_fail(plane, ident(sid))
    perm.require(perm.can_manage_stream(user, s.id))
    streams.update_stream_by(plane, s, name)


def _delete_stream(plane, user, sid: str, purge: bool) -> None:
    s = streams.get_stream_or_fail(plane, ident(sid))
    perm.require(perm.can_manage_stream(user, s.id))
    if purge:
        streams.purge_stream_by(plane, s)
    else:
        streams.delete_stream_by(plane, s)


@get("/streams", summary="List streams")
async def get_streams(ctx: Ctx, caller: Caller) -> list:
    return await ctx.bridge.call_as(caller, _get_streams)


@post("/streams", status_code=200, summary="Create a stream")
async def create_stream(ctx: Ctx, caller: Caller, data: JSONBody[schemas.CreateStream]) -> dict:
    name = check_name(data.name, ErrorCode.INVALID_STREAM_NAME)
    return await ctx.bridge.call_as(caller, _create_stream, name)


@get("/streams/{stream_id:str}", summary="Get a stream with its topics")
async def get_stream(ctx: Ctx, caller: Caller, stream_id: FromPath[str]) -> dict:
    return await ctx.bridge.call_as(caller, _get_stream, stream_id)


@put("/streams/{stream_id:str}", status_code=204, summary="Rename a stream")
async def update_stream(ctx: Ctx, caller: Caller, stream_id: FromPath[str],
                        data: JSONBody[schemas.UpdateStream]) -> None:
    name = check_name(data.name, ErrorCode.INVALID_STREAM_NAME)
    _refuse_options(data.options)
    await ctx.bridge.call_as(caller, _update_stream, stream_id, name)


@delete("/streams/{stream_id:str}", status_code=204, summary="Delete a stream and everything in it")
async def delete_stream(ctx: Ctx, caller: Caller, stream_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, _delete_stream, stream_id, False)


@delete("/streams/{stream_id:str}/purge", status_code=204, summary="Delete every message of a stream")
async def purge_stream(ctx: Ctx, caller: Caller, stream_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, _delete_stream, stream_id, True)


# ------------------------------------------------------------------- topics

def topic_options(compression, message_expiry, max_topic_size, options: dict | None) -> dict:
    """The option values of a create/update body: the `options` map plus the fixed fields.

    `message_expiry` / `max_topic_size` of 0 mean "server default" and are left out, so the
    topic records them as not set by the client (explicit = false).
    """
    out = topics.options_from_text(options or {})
    if compression is not None:
        out["compression_algorithm"] = compression.lower()
    if message_expiry:
        out["message_expiry"] = message_expiry
    if max_topic_size:
        out["max_topic_size"] = max_topic_size
    return out


def _get_topics(plane, user, sid: str) -> list:
    s = streams.find_stream(plane, ident(sid))
    if s is None:
        return []       # a missing stream lists as empty, as over TCP (control.topics.get_topics)
    perm.require(perm.can_read_topic(user, s.id))
    return [views.topic(plane, s.id, t) for t in sorted(s.topics.values(), key=lambda t: t.id)]


def _get_topic(plane, user, sid: str, tid: str) -> dict:
    s, t = found_topic(plane, sid, tid)
    perm.require(perm.can_read_topic(user, s.id, t.id))
    return views.topic_details(plane, s.id, t)


def _create_topic(plane, user, sid: str, name: str, partitions: int, options: dict) -> dict:
    s = streams.get_stream_or_fail(plane, ident(sid))
    perm.require(perm.can_create_topic(user, s.id))
    t = topics.create_topic_record(plane, s, name, partitions, options)
    return views.topic_details(plane, s.id, t)


def _manage_topic(plane, user, sid: str, tid: str):
    s, t = topics.resolve_topic(plane, ident(sid), ident(tid))
    perm.require(perm.can_manage_topic(user, s.id, t.id))
    return s, t


def _update_topic(plane, user, sid: str, tid: str, name: str, options: dict) -> None:
    s, t = _manage_topic(plane, user, sid, tid)
    topics.update_topic_by(plane, s, t, name, options)


def _delete_topic(plane, user, sid: str, tid: str, purge: bool) -> None:
    s, t = _manage_topic(plane, user, sid, tid)
    if purge:
        topics.purge_topic_by(plane, s, t)
    else:
        topics.delete_topic_by(plane, s, t)


def _create_partitions(plane, user, sid: str, tid: str, count: int) -> None:
    s, t = _manage_topic(plane, user, sid, tid)
    topics.create_partitions_by(plane, s, t, count)


def _delete_partitions(plane, user, sid: str, tid: str, count: int) -> None:
    s, t = _manage_topic(plane, user, sid, tid)
    topics.delete_partitions_by(plane, s, t, count)


def _delete_segments(plane, user, sid: str, tid: str, partition_id: int, count: int) -> None:
    s, t = _manage_topic(plane, user, sid, tid)
    topics.delete_segments_by(plane, s, t, partition_id, count)


@get("/streams/{stream_id:str}/topics", summary="List the topics of a stream")
async def get_topics(ctx: Ctx, caller: Caller, stream_id: FromPath[str]) -> list:
    return await ctx.bridge.call_as(caller, _get_topics, stream_id)


@post("/streams/{stream_id:str}/topics", status_code=200, summary="Create a topic")
async def create_topic(ctx: Ctx, caller: Caller, stream_id: FromPath[str],
                       data: JSONBody[schemas.CreateTopic]) -> dict:
    name = check_name(data.name, ErrorCode.INVALID_TOPIC_NAME)
    options = topic_options(data.compression_algorithm, data.message_expiry, data.max_topic_size, data.options)
    return await ctx.bridge.call_as(caller, _create_topic, stream_id, name, data.partitions_count, options)


@get("/streams/{stream_id:str}/topics/{topic_id:str}", summary="Get a topic with its partitions")
async def get_topic(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str]) -> dict:
    return await ctx.bridge.call_as(caller, _get_topic, stream_id, topic_id)


@put("/streams/{stream_id:str}/topics/{topic_id:str}", status_code=204, summary="Update a topic (a patch)")
async def update_topic(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                       data: JSONBody[schemas.UpdateTopic]) -> None:
    name = check_name(data.name, ErrorCode.INVALID_TOPIC_NAME)
    options = topic_options(data.compression_algorithm, data.message_expiry, data.max_topic_size, data.options)
    if data.message_expiry == 0:      # an update to 0 stores the "server default" sentinel
        options["message_expiry"] = 0
    if data.max_topic_size == 0:
        options["max_topic_size"] = 0
    await ctx.bridge.call_as(caller, _update_topic, stream_id, topic_id, name, options)


@delete("/streams/{stream_id:str}/topics/{topic_id:str}", status_code=204, summary="Delete a topic")
async def delete_topic(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, _delete_topic, stream_id, topic_id, False)


@delete("/streams/{stream_id:str}/topics/{topic_id:str}/purge", status_code=204,
        summary="Delete every message of a topic")
async def purge_topic(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, _delete_topic, stream_id, topic_id, True)


@post("/streams/{stream_id:str}/topics/{topic_id:str}/partitions", status_code=200,
      summary="Add partitions to a topic")
async def create_partitions(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                            data: JSONBody[schemas.PartitionsCount]) -> Response:
    await ctx.bridge.call_as(caller, _create_partitions, stream_id, topic_id, data.partitions_count)
    # 200 with an empty body (upstream's handler returns a bare StatusCode::OK), not JSON `null`
    return Response(b"", status_code=200)


@delete("/streams/{stream_id:str}/topics/{topic_id:str}/partitions", status_code=204,
        summary="Delete the last partitions of a topic")
async def delete_partitions(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                            partitions_count: Count) -> None:
    await ctx.bridge.call_as(caller, _delete_partitions, stream_id, topic_id, partitions_count)


@delete("/streams/{stream_id:str}/topics/{topic_id:str}/partitions/{partition_id:int}", status_code=204,
        summary="Delete the oldest sealed segments of a partition")
async def delete_segments(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                          partition_id: PartitionId, segments_count: Count) -> None:
    await ctx.bridge.call_as(caller, _delete_segments, stream_id, topic_id, partition_id, segments_count)


# ------------------------------------------------------------------- consumer groups

def _get_groups(plane, user, sid: str, tid: str) -> list:
    # a missing stream or topic is the typed 404 (1009/2010), not the generic one: upstream's
    # group reads check the parent first (core/server/src/responses.rs, ensure_topic_exists)
    s, t = topics.resolve_topic(plane, ident(sid), ident(tid))
    perm.require(perm.can_read_topic(user, s.id, t.id))
    return [views.group(plane, s, t, g) for g in sorted(t.groups.values(), key=lambda g: g.id)]


def _get_group(plane, user, sid: str, tid: str, gid: str) -> dict:
    s, t = topics.resolve_topic(plane, ident(sid), ident(tid))    # typed 404, as _get_groups
    perm.require(perm.can_read_topic(user, s.id, t.id))
    g = groups.find_group(t, ident(gid))
    if g is None:
        raise NotFound()
    return views.group_details(plane, s, t, g)


def _create_group(plane, user, sid: str, tid: str, name: str) -> dict:
    s, t = topics.resolve_topic(plane, ident(sid), ident(tid))
    perm.require(perm.can_read_topic(user, s.id, t.id))
    return views.group_details(plane, s, t, groups.create_group_by(plane, s, t, name))


def _delete_group(plane, user, sid: str, tid: str, gid: str) -> None:
    s, t = topics.resolve_topic(plane, ident(sid), ident(tid))
    g = groups.get_group_or_fail(t, ident(gid))
    perm.require(perm.can_read_topic(user, s.id, t.id))
    groups.delete_group_by(plane, s, t, g)


@get("/streams/{stream_id:str}/topics/{topic_id:str}/consumer-groups", summary="List consumer groups")
async def get_groups(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str]) -> list:
    return await ctx.bridge.call_as(caller, _get_groups, stream_id, topic_id)


@post("/streams/{stream_id:str}/topics/{topic_id:str}/consumer-groups", status_code=200,
      summary="Create a consumer group")
async def create_group(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                       data: JSONBody[schemas.CreateGroup]) -> dict:
    name = check_name(data.name, ErrorCode.INVALID_CONSUMER_GROUP_NAME)
    return await ctx.bridge.call_as(caller, _create_group, stream_id, topic_id, name)


@get("/streams/{stream_id:str}/topics/{topic_id:str}/consumer-groups/{group_id:str}",
     summary="Get a consumer group with its members")
async def get_group(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                    group_id: FromPath[str]) -> dict:
    return await ctx.bridge.call_as(caller, _get_group, stream_id, topic_id, group_id)


@delete("/streams/{stream_id:str}/topics/{topic_id:str}/consumer-groups/{group_id:str}", status_code=204,
        summary="Delete a consumer group")
async def delete_group(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                       group_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, _delete_group, stream_id, topic_id, group_id)


ROUTES = [get_streams, create_stream, get_stream, update_stream, delete_stream, purge_stream, get_topics,
          create_topic, get_topic, update_topic, delete_topic, purge_topic, create_partitions, delete_partitions,
          delete_segments, get_groups, create_group, get_group, delete_group]
