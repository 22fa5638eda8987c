"""Send and poll messages, and consumer offsets (HTTP.md 6, 7).

The HTTP thread turns a JSON send body into one batch (`iggy.protocol.batch.build_batch`
computes the checksums) and hands the bytes to the same `messages.send` the TCP handler
uses; a poll comes back as batch bytes from `messages.poll` and is decoded into JSON on the
HTTP thread (`iter_messages`), so the main loop only routes, appends and reads.

Over HTTP the consumer kind is never carried: every poll and offset operation acts as a plain
consumer (`consumer_id`, default 1), and an omitted partition means partition 0.
"""
from __future__ import annotations

from typing import Annotated, Literal

from litestar import Response, delete, get, post, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from iggy.control import messages, streams, topics
from iggy.control.plane import TRANSPORT_HTTP, Session
from iggy.http import schemas
from iggy.http.context import Caller, Ctx, ident
from iggy.http.errors import NotFound
from iggy.http.messages_json import batch_input, partitioning, poll_caps, polled_json

U32 = Annotated[int, QueryParameter(ge=0, le=0xFFFFFFFF)]
U64 = Annotated[int, QueryParameter(ge=0)]   # upper bound checked in the handler (msgspec stops at int64)
STRATEGIES = {"offset": messages.STRATEGY_OFFSET, "timestamp": messages.STRATEGY_TIMESTAMP,
              "first": messages.STRATEGY_FIRST, "last": messages.STRATEGY_LAST, "next": messages.STRATEGY_NEXT}
STRATEGIES.update({name[0]: code for name, code in list(STRATEGIES.items())})
PollKind = Literal["offset", "timestamp", "first", "last", "next", "o", "t", "f", "l", "n"]


def http_session(user) -> Session:
    """A session standing for one HTTP request; never registered, so never listed as a client."""
    return Session(client_id=0, address="", transport=TRANSPORT_HTTP, user_id=user.id, user_generation=user.generation)


def _require_topic(plane, sid, tid) -> None:
    """Reads of a missing stream or topic answer the generic 404."""
    s = streams.find_stream(plane, sid)
    if s is None or topics.find_topic(s, tid) is None:
        raise NotFound()


# ------------------------------------------------------------------- send / poll

async def _send(plane, user, sid: str, tid: str, kind: int, value: bytes, batch: bytes, count: int) -> dict:
    s, t, pid, base_offset, synced = messages.send(plane, http_session(user), ident(sid), ident(tid), kind, value,
                                                   batch, 0, len(batch), count)
    if synced is not None:
        await synced
    return {"stream_id": s.id, "topic_id": t.id, "partition_id": pid, "base_offset": base_offset}


def _poll(plane, user, sid: str, tid: str, consumer, partition_id: int, strategy: int, value: int, count: int,
          auto_commit: bool):
    sid, tid = ident(sid), ident(tid)
    _require_topic(plane, sid, tid)
    session = http_session(user)
    if count == 0:   # nothing to read, but the target must exist and be readable
        _, _, partition, _, _ = messages.resolve_target(plane, session, messages.CONSUMER_SINGLE, consumer, sid,
                                                        tid, True, partition_id, fence=None)
        with partition.lock:   # shard threads append concurrently
            return partition.id, partition.log.current_offset, 0, b""
    # the JSON reply is capped as a TCP reply is, at about the largest frame (messages_json)
    count, max_bytes = poll_caps(plane.max_poll_bytes, count)
    return messages.poll(plane, session, messages.CONSUMER_SINGLE, consumer, sid, tid, True, partition_id,
                         strategy, value, count, auto_commit, max_bytes=max_bytes)


@post("/streams/{stream_id:str}/topics/{topic_id:str}/messages", status_code=201, summary="Send messages")
async def send_messages(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                        data: JSONBody[schemas.SendMessages], ack: FromQuery[str | None] = None) -> Response:
    from iggy.protocol.batch import build_batch
    kind, value = partitioning(data)
    entries = batch_input(data)
    batch = build_batch(entries)
    confirmation = await ctx.bridge.call_as(caller, _send, stream_id, topic_id, kind, value, batch, len(entries))
    if ack == "none":
        return Response(b"", status_code=202, headers={"iggy-durability": "none"})
    return Response({"confirmations": [confirmation]}, status_code=201,
                    headers={"iggy-durability": "replicated-memory"})


@get("/streams/{stream_id:str}/topics/{topic_id:str}/messages", summary="Poll messages")
async def poll_messages(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                        consumer_id: FromQuery[str] = "1", partition_id: U32 = 0, kind: FromQuery[PollKind] = "offset",
                        value: U64 = 0, count: U32 = 10, auto_commit: FromQuery[bool] = False) -> dict:
    from iggy.protocol.batch import iter_messages
    if value > schemas.U64_MAX:
        raise HTTPException(status_code=400, detail="Failed to deserialize query string: value: number too large")
    pid, current, _n, data = await ctx.bridge.call_as(caller, _poll, stream_id, topic_id, ident(consumer_id),
                                                      partition_id, STRATEGIES[kind], value, count, auto_commit)
    return polled_json(pid, current, iter_messages(data) if data else [])


# ------------------------------------------------------------------- consumer offsets

def _offset_target(plane, user, sid: str, tid: str, consumer, partition_id: int):
    sid, tid = ident(sid), ident(tid)
    _, _, partition, kind, key = messages.resolve_target(plane, http_session(user), messages.CONSUMER_SINGLE,
                                                         consumer, sid, tid, True, partition_id, fence=None)
    return partition, kind, key


def _get_offset(plane, user, sid: str, tid: str, consumer, partition_id: int) -> dict:
    _require_topic(plane, ident(sid), ident(tid))
    partition, kind, key = _offset_target(plane, user, sid, tid, consumer, partition_id)
    with partition.lock:
        stored = partition.offsets.get(kind, key)
        current = partition.log.current_offset
    if stored is None:
        raise NotFound()
    return {"partition_id": partition.id, "current_offset": current, "stored_offset": stored}


def _store_offset(plane, user, sid: str, tid: str, consumer, partition_id: int, offset: int) -> None:
    partition, kind, key = _offset_target(plane, user, sid, tid, consumer, partition_id)
    messages.store_offset(partition, kind, key, offset)


def _delete_offset(plane, user, sid: str, tid: str, consumer, partition_id: int) -> None:
    partition, kind, key = _offset_target(plane, user, sid, tid, consumer, partition_id)
    messages.delete_offset(partition, kind, key)


def consumer_ident(value):
    """consumer_id from a body or query: a number, or a name (digits count as a number)."""
    return value if isinstance(value, int) else ident(value)


@get("/streams/{stream_id:str}/topics/{topic_id:str}/consumer-offsets", summary="Get a stored consumer offset")
async def get_offset(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                     consumer_id: FromQuery[str], partition_id: U32 = 0) -> dict:
    return await ctx.bridge.call_as(caller, _get_offset, stream_id, topic_id, ident(consumer_id), partition_id)


@put("/streams/{stream_id:str}/topics/{topic_id:str}/consumer-offsets", status_code=204,
     summary="Store a consumer offset")
async def store_offset(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                       data: JSONBody[schemas.StoreOffset]) -> None:
    await ctx.bridge.call_as(caller, _store_offset, stream_id, topic_id, consumer_ident(data.consumer_id),
                             data.partition_id or 0, data.offset)


@delete("/streams/{stream_id:str}/topics/{topic_id:str}/consumer-offsets/{consumer_id:str}", status_code=204,
        summary="Delete a stored consumer offset")
async def delete_offset(ctx: Ctx, caller: Caller, stream_id: FromPath[str], topic_id: FromPath[str],
                        consumer_id: FromPath[str], partition_id: U32 = 0) -> None:
    await ctx.bridge.call_as(caller, _delete_offset, stream_id, topic_id, ident(consumer_id), partition_id)


ROUTES = [send_messages, poll_messages, get_offset, store_offset, delete_offset]
