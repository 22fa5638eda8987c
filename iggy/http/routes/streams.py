"""Streams, topics, partitions, segments and consumer groups (HTTP.md 2, 5.1, 5.2, 5.5, 7).

Every handler parses the path and body on the HTTP thread, then runs the command of the
binary protocol through `ctx.bridge.call_as` (the registry checks its permission) and
shapes the result with a view on the main loop. Path segments `{stream_id}`, `{topic_id}`,
`{group_id}` take an id or a name. Reads of an entity that does not exist answer the generic
404; a missing stream or topic under a consumer-group read is the typed 404 (1009/2010), as
upstream checks the parent first (core/server/src/responses.rs, ensure_topic_exists).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated

from litestar import Response, delete, get, post, put
from litestar.params import FromPath, JSONBody, PathParameter, QueryParameter

from iggy.control import topics
from iggy.http import schemas, views
from iggy.http.context import Caller, Ctx, Reply, check_name, ident
from iggy.http.errors import answered, found
from iggy.http.views import Json
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane
    from iggy.metadata.state import GroupMeta, StreamMeta, TopicMeta

Count = Annotated[int, QueryParameter(ge=0, le=0xFFFFFFFF)]
PartitionId = Annotated[int, PathParameter(ge=0, le=0xFFFFFFFF)]


def _refuse_options(options: dict[str, str] | None) -> None:
    """Streams have no option keys: any key is unsupported (4041)."""
    if options:
        raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY, field=next(iter(options)))


# ------------------------------------------------------------------- views (run on the main loop)


def _streams(plane: ControlPlane, streams: Iterable[StreamMeta]) -> list[Json]:
    return [views.stream(plane, s) for s in streams]


def _topics(plane: ControlPlane, result: tuple[StreamMeta, list[TopicMeta]] | tuple[()]) -> list[Json]:
    if not result:
        return []  # a missing stream lists as empty, as over TCP (control.topics.get_topics)
    s, ts = result
    return [views.topic(plane, s.id, t) for t in ts]


def _topic_details(plane: ControlPlane, result: tuple[StreamMeta, TopicMeta]) -> Json:
    s, t = result
    return views.topic_details(plane, s.id, t)


def _groups(plane: ControlPlane, result: tuple[StreamMeta, TopicMeta, list[GroupMeta]]) -> list[Json]:
    s, t, gs = result
    return [views.group(plane, s, t, g) for g in gs]


def _group_details(plane: ControlPlane, result: tuple[StreamMeta, TopicMeta, GroupMeta]) -> Json:
    return views.group_details(plane, *result)


# ------------------------------------------------------------------- streams


@get("/streams", summary="List streams")
async def get_streams(ctx: Ctx, caller: Caller) -> list[Json]:
    return answered(await ctx.bridge.call_as(caller, codes.GET_STREAMS, view=_streams))


@post("/streams", status_code=200, summary="Create a stream")
async def create_stream(ctx: Ctx, caller: Caller, data: JSONBody[schemas.CreateStream]) -> Json:
    name = check_name(data.name, ErrorCode.INVALID_STREAM_NAME)
    return answered(await ctx.bridge.call_as(caller, codes.CREATE_STREAM, name, view=views.stream_details))


@get("/streams/{stream_id:str}", summary="Get a stream with its topics")
async def get_stream(ctx: Ctx, caller: Caller, stream_id: FromPath[str]) -> Json:
    return found(await ctx.bridge.call_as(caller, codes.GET_STREAM, ident(stream_id), view=views.stream_details))


@put("/streams/{stream_id:str}", status_code=204, summary="Rename a stream")
async def update_stream(
    ctx: Ctx, caller: Caller, stream_id: FromPath[str], data: JSONBody[schemas.UpdateStream]
) -> None:
    name = check_name(data.name, ErrorCode.INVALID_STREAM_NAME)
    _refuse_options(data.options)
    await ctx.bridge.call_as(caller, codes.UPDATE_STREAM, ident(stream_id), name)


@delete("/streams/{stream_id:str}", status_code=204, summary="Delete a stream and everything in it")
async def delete_stream(ctx: Ctx, caller: Caller, stream_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, codes.DELETE_STREAM, ident(stream_id))


@delete("/streams/{stream_id:str}/purge", status_code=204, summary="Delete every message of a stream")
async def purge_stream(ctx: Ctx, caller: Caller, stream_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, codes.PURGE_STREAM, ident(stream_id))


# ------------------------------------------------------------------- topics


def topic_options(
    compression: str | None, message_expiry: int | None, max_topic_size: int | None, options: dict[str, str] | None
) -> dict[str, topics.OptionValue]:
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


@get("/streams/{stream_id:str}/topics", summary="List the topics of a stream")
async def get_topics(ctx: Ctx, caller: Caller, stream_id: FromPath[str]) -> list[Json]:
    return answered(await ctx.bridge.call_as(caller, codes.GET_TOPICS, ident(stream_id), view=_topics))


@post("/streams/{stream_id:str}/topics", status_code=200, summary="Create a topic")
async def create_topic(ctx: Ctx, caller: Caller, stream_id: FromPath[str], data: JSONBody[schemas.CreateTopic]) -> Json:
    name = check_name(data.name, ErrorCode.INVALID_TOPIC_NAME)
    options = topic_options(data.compression_algorithm, data.message_expiry, data.max_topic_size, data.options)
    return answered(
        await ctx.bridge.call_as(
            caller, codes.CREATE_TOPIC, ident(stream_id), name, data.partitions_count, options, view=_topic_details
        )
    )


@get("/streams/{stream_id:str}/topics/{topic_id:str}", summary="Get a topic with its partitions")
async def get_topic(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str]) -> Json:
    return found(
        await ctx.bridge.call_as(caller, codes.GET_TOPIC, ident(stream_id), ident(topic_id), view=_topic_details)
    )


@put("/streams/{stream_id:str}/topics/{topic_id:str}", status_code=204, summary="Update a topic (a patch)")
async def update_topic(
    ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str], data: JSONBody[schemas.UpdateTopic]
) -> None:
    name = check_name(data.name, ErrorCode.INVALID_TOPIC_NAME)
    options = topic_options(data.compression_algorithm, data.message_expiry, data.max_topic_size, data.options)
    if data.message_expiry == 0:  # an update to 0 stores the "server default" sentinel
        options["message_expiry"] = 0
    if data.max_topic_size == 0:
        options["max_topic_size"] = 0
    await ctx.bridge.call_as(caller, codes.UPDATE_TOPIC, ident(stream_id), ident(topic_id), name, options)


@delete("/streams/{stream_id:str}/topics/{topic_id:str}", status_code=204, summary="Delete a topic")
async def delete_topic(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, codes.DELETE_TOPIC, ident(stream_id), ident(topic_id))


@delete(
    "/streams/{stream_id:str}/topics/{topic_id:str}/purge", status_code=204, summary="Delete every message of a topic"
)
async def purge_topic(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, codes.PURGE_TOPIC, ident(stream_id), ident(topic_id))


@post("/streams/{stream_id:str}/topics/{topic_id:str}/partitions", status_code=200, summary="Add partitions to a topic")
async def create_partitions(
    ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str], data: JSONBody[schemas.PartitionsCount]
) -> Reply:
    await ctx.bridge.call_as(caller, codes.CREATE_PARTITIONS, ident(stream_id), ident(topic_id), data.partitions_count)
    # 200 with an empty body (upstream's handler returns a bare StatusCode::OK), not JSON `null`
    return Response(b"", status_code=200)


@delete(
    "/streams/{stream_id:str}/topics/{topic_id:str}/partitions",
    status_code=204,
    summary="Delete the last partitions of a topic",
)
async def delete_partitions(
    ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str], partitions_count: Count
) -> None:
    await ctx.bridge.call_as(caller, codes.DELETE_PARTITIONS, ident(stream_id), ident(topic_id), partitions_count)


@delete(
    "/streams/{stream_id:str}/topics/{topic_id:str}/partitions/{partition_id:int}",
    status_code=204,
    summary="Delete the oldest sealed segments of a partition",
)
async def delete_segments(
    ctx: Ctx,
    caller: Caller,
    stream_id: FromPath[str],
    topic_id: FromPath[str],
    partition_id: PartitionId,
    segments_count: Count,
) -> None:
    await ctx.bridge.call_as(
        caller, codes.DELETE_SEGMENTS, ident(stream_id), ident(topic_id), partition_id, segments_count
    )


# ------------------------------------------------------------------- consumer groups


@get("/streams/{stream_id:str}/topics/{topic_id:str}/consumer-groups", summary="List consumer groups")
async def get_groups(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str]) -> list[Json]:
    return answered(
        await ctx.bridge.call_as(caller, codes.GET_CONSUMER_GROUPS, ident(stream_id), ident(topic_id), view=_groups)
    )


@post(
    "/streams/{stream_id:str}/topics/{topic_id:str}/consumer-groups", status_code=200, summary="Create a consumer group"
)
async def create_group(
    ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str], data: JSONBody[schemas.CreateGroup]
) -> Json:
    name = check_name(data.name, ErrorCode.INVALID_CONSUMER_GROUP_NAME)
    return answered(
        await ctx.bridge.call_as(
            caller, codes.CREATE_CONSUMER_GROUP, ident(stream_id), ident(topic_id), name, view=_group_details
        )
    )


@get(
    "/streams/{stream_id:str}/topics/{topic_id:str}/consumer-groups/{group_id:str}",
    summary="Get a consumer group with its members",
)
async def get_group(
    ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str], group_id: FromPath[str]
) -> Json:
    return found(
        await ctx.bridge.call_as(
            caller, codes.GET_CONSUMER_GROUP, ident(stream_id), ident(topic_id), ident(group_id), view=_group_details
        )
    )


@delete(
    "/streams/{stream_id:str}/topics/{topic_id:str}/consumer-groups/{group_id:str}",
    status_code=204,
    summary="Delete a consumer group",
)
async def delete_group(
    ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str], group_id: FromPath[str]
) -> None:
    await ctx.bridge.call_as(caller, codes.DELETE_CONSUMER_GROUP, ident(stream_id), ident(topic_id), ident(group_id))


ROUTES = [
    get_streams,
    create_stream,
    get_stream,
    update_stream,
    delete_stream,
    purge_stream,
    get_topics,
    create_topic,
    get_topic,
    update_topic,
    delete_topic,
    purge_topic,
    create_partitions,
    delete_partitions,
    delete_segments,
    get_groups,
    create_group,
    get_group,
    delete_group,
]
