"""Send and poll messages, and consumer offsets (HTTP.md 6, 7).

The HTTP thread turns a JSON send body into one batch (`iggy.protocol.batch.build_batch`
computes the checksums) and hands the bytes to the same SendMessages command the binary
protocol runs (iggy.control.messages); a poll comes back as batch bytes from the PollMessages
command and is decoded into JSON on the HTTP thread (`iter_messages`), so the main loop only
routes, appends and reads.

Over HTTP the consumer kind is never carried: every poll and offset operation acts as a plain
consumer (`consumer_id`, default 1), and an omitted partition means partition 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from litestar import Response, delete, get, post, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from iggy.control import messages
from iggy.http import schemas
from iggy.http.context import Caller, Ctx, Reply, ident
from iggy.http.errors import NotFound, found
from iggy.http.messages_json import batch_input, partitioning, poll_caps, polled_json
from iggy.http.views import Json
from iggy.protocol import codes
from iggy.protocol.batch import build_batch, iter_messages

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane

U32 = Annotated[int, QueryParameter(ge=0, le=0xFFFFFFFF)]
U64 = Annotated[int, QueryParameter(ge=0)]  # upper bound checked in the handler (msgspec stops at int64)
STRATEGIES = {
    "offset": messages.STRATEGY_OFFSET,
    "timestamp": messages.STRATEGY_TIMESTAMP,
    "first": messages.STRATEGY_FIRST,
    "last": messages.STRATEGY_LAST,
    "next": messages.STRATEGY_NEXT,
}
STRATEGIES.update({name[0]: code for name, code in list(STRATEGIES.items())})
PollKind = Literal["offset", "timestamp", "first", "last", "next", "o", "t", "f", "l", "n"]
SINGLE = messages.CONSUMER_SINGLE
# (stream, topic, consumer kind, consumer, has_partition, partition): the arguments a poll and
# every consumer-offset command start with
ConsumerTarget = tuple[int | str, int | str, messages.Consumer]


def consumer_target(stream_id: str, topic_id: str, consumer: int | str, partition_id: int) -> ConsumerTarget:
    """What a poll or offset route acts on: over HTTP always a plain consumer (the kind is never
    carried) and always a partition (an omitted one is 0)."""
    return ident(stream_id), ident(topic_id), messages.Consumer(SINGLE, consumer, True, partition_id)


def _confirmation(plane: ControlPlane, sent: tuple[int, int, int, int]) -> Json:
    stream_id, topic_id, partition_id, base_offset = sent
    return {"stream_id": stream_id, "topic_id": topic_id, "partition_id": partition_id, "base_offset": base_offset}


def _offset(plane: ControlPlane, result: tuple[int, int, int]) -> Json:
    partition_id, current, stored = result
    return {"partition_id": partition_id, "current_offset": current, "stored_offset": stored}


# ------------------------------------------------------------------- send / poll


@post("/streams/{stream_id:str}/topics/{topic_id:str}/messages", status_code=201, summary="Send messages")
async def send_messages(
    ctx: Ctx,
    caller: Caller,
    stream_id: FromPath[str],
    topic_id: FromPath[str],
    data: JSONBody[schemas.SendMessages],
    ack: FromQuery[str | None] = None,
) -> Reply:
    kind, value = partitioning(data)
    entries = batch_input(data)
    batch = build_batch(entries)
    sid, tid = ident(stream_id), ident(topic_id)
    confirmation = await ctx.bridge.call_as(
        caller, codes.SEND_MESSAGES, sid, tid, kind, value, batch, 0, len(batch), len(entries), view=_confirmation
    )
    if ack == "none":
        return Response(b"", status_code=202, headers={"iggy-durability": "none"})
    return Response(
        {"confirmations": [confirmation]}, status_code=201, headers={"iggy-durability": "replicated-memory"}
    )


@get("/streams/{stream_id:str}/topics/{topic_id:str}/messages", summary="Poll messages")
async def poll_messages(
    ctx: Ctx,
    caller: Caller,
    stream_id: FromPath[str],
    topic_id: FromPath[str],
    consumer_id: FromQuery[str] = "1",
    partition_id: U32 = 0,
    kind: FromQuery[PollKind] = "offset",
    value: U64 = 0,
    count: U32 = 10,
    auto_commit: FromQuery[bool] = False,
) -> Json:
    if value > schemas.U64_MAX:
        raise HTTPException(status_code=400, detail="Failed to deserialize query string: value: number too large")
    target = consumer_target(stream_id, topic_id, ident(consumer_id), partition_id)
    max_bytes = None
    if count:
        # the JSON reply is capped as a TCP reply is, at about the largest frame (messages_json);
        # a count of 0 reads nothing, but the target must exist and be readable
        count, max_bytes = poll_caps(ctx.max_poll_bytes, count)
    # a missing stream or topic is the generic 404 of a read here, not 1009/2010
    pid, current, _n, data = await ctx.bridge.call_as(
        caller,
        codes.POLL_MESSAGES,
        *target,
        STRATEGIES[kind],
        value,
        count,
        auto_commit,
        max_bytes,
        missing=NotFound,
    )
    return polled_json(pid, current, iter_messages(data) if data else [])


# ------------------------------------------------------------------- consumer offsets


def consumer_ident(value: int | str) -> int | str:
    """consumer_id from a body or query: a number, or a name (digits count as a number)."""
    return value if isinstance(value, int) else ident(value)


@get("/streams/{stream_id:str}/topics/{topic_id:str}/consumer-offsets", summary="Get a stored consumer offset")
async def get_offset(
    ctx: Ctx,
    caller: Caller,
    stream_id: FromPath[str],
    topic_id: FromPath[str],
    consumer_id: FromQuery[str],
    partition_id: U32 = 0,
) -> Json:
    return found(
        await ctx.bridge.call_as(
            caller,
            codes.GET_CONSUMER_OFFSET,
            *consumer_target(stream_id, topic_id, ident(consumer_id), partition_id),
            view=_offset,
        )
    )


@put(
    "/streams/{stream_id:str}/topics/{topic_id:str}/consumer-offsets",
    status_code=204,
    summary="Store a consumer offset",
)
async def store_offset(
    ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str], data: JSONBody[schemas.StoreOffset]
) -> None:
    await ctx.bridge.call_as(
        caller,
        codes.STORE_CONSUMER_OFFSET,
        *consumer_target(stream_id, topic_id, consumer_ident(data.consumer_id), data.partition_id or 0),
        data.offset,
    )


@delete(
    "/streams/{stream_id:str}/topics/{topic_id:str}/consumer-offsets/{consumer_id:str}",
    status_code=204,
    summary="Delete a stored consumer offset",
)
async def delete_offset(
    ctx: Ctx,
    caller: Caller,
    stream_id: FromPath[str],
    topic_id: FromPath[str],
    consumer_id: FromPath[str],
    partition_id: U32 = 0,
) -> None:
    await ctx.bridge.call_as(
        caller, codes.DELETE_CONSUMER_OFFSET, *consumer_target(stream_id, topic_id, ident(consumer_id), partition_id)
    )


ROUTES = [send_messages, poll_messages, get_offset, store_offset, delete_offset]
