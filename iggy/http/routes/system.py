"""Ping, stats, clients, cluster metadata, option catalog, snapshot and metrics (HTTP.md 2, 5.7).

Same layout as routes/users.py: `plane`-first functions run on the main loop.
"""
from __future__ import annotations

import asyncio
from typing import Annotated

from litestar import Response, get, post
from litestar.params import FromPath, JSONBody, PathParameter

from iggy.control import permissions as perm
from iggy.control import system
from iggy.control.topics import encode_value
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.http import diagnostics, metrics, schemas, views
from iggy.http.context import Caller, Ctx
from iggy.http.errors import NotFound

ClientId = Annotated[int, PathParameter(ge=0, le=0xFFFFFFFF)]


def _stats(plane, user) -> dict:
    perm.require(perm.can_read_servers(user))
    return views.stats(system.collect_stats(plane))


def _clients(plane, user) -> list:
    perm.require(perm.can_read_servers(user))
    return [views.client(s) for s in sorted(plane.sessions.values(), key=lambda s: s.client_id)]


def _client(plane, user, client_id: int) -> dict:
    perm.require(perm.can_read_servers(user))
    session = plane.sessions.get(client_id)
    if session is None:
        raise NotFound()
    return views.client_details(session)


def _cluster(plane, user) -> dict:
    return system.cluster_metadata(plane)


def _snapshot_allowed(plane, user) -> str:
    perm.require(perm.can_read_servers(user))
    return plane.config.system.path


def _metrics(plane, user) -> dict:
    return metrics.counts(plane)


def _as_is(response):
    return response


# `after_request` here replaces the API router's iggy-view stamp (iggy.http.app): the one public
# success route must not show the view number, as upstream (core/server/src/http.rs, PING_PATH)
@get("/ping", opt={"public": True}, summary="Liveness check", media_type="text/plain", after_request=_as_is)
async def ping() -> str:
    return "pong"


@get("/stats", summary="Server statistics")
async def stats(ctx: Ctx, caller: Caller) -> dict:
    return await ctx.bridge.call_as(caller, _stats)


@get("/clients", summary="Connected clients (binary-protocol connections)")
async def clients(ctx: Ctx, caller: Caller) -> list:
    return await ctx.bridge.call_as(caller, _clients)


@get("/clients/{client_id:int}", summary="One connected client")
async def client(ctx: Ctx, caller: Caller, client_id: ClientId) -> dict:
    return await ctx.bridge.call_as(caller, _client, client_id)


@get("/cluster/metadata", summary="Cluster roster (a single node)")
async def cluster_metadata(ctx: Ctx, caller: Caller) -> dict:
    meta = await ctx.bridge.call_as(caller, _cluster, follower_ok=True)
    return views.cluster(meta, ctx.settings.host if ctx.settings.host not in ("0.0.0.0", "::") else None)


@get("/options/{options_scope:str}", summary="Option keys of a scope (topic, stream, user)")
async def options(ctx: Ctx, caller: Caller, options_scope: FromPath[str]) -> list:
    if options_scope not in ("topic", "stream", "user"):
        raise IggyError(ErrorCode.INVALID_COMMAND, "unknown options scope")
    return [views.option_spec(o, encode_value(o.kind, o.default)) for o in system.described_options(options_scope)]


@post("/snapshot", status_code=200, summary="Diagnostics snapshot (ZIP)", media_type="application/zip")
async def take_snapshot(ctx: Ctx, caller: Caller, data: JSONBody[schemas.Snapshot]) -> Response:
    if "All" in data.snapshot_types and len(data.snapshot_types) > 1:
        raise IggyError(ErrorCode.INVALID_COMMAND, "All must be the only snapshot type")
    data_dir = await ctx.bridge.call_as(caller, _snapshot_allowed)
    if not ctx.diagnostics_lock.acquire(blocking=False):
        raise IggyError(ErrorCode.SNAPSHOT_FILE_COMPLETION_FAILED, "a snapshot is already being taken")
    try:
        body, name = await asyncio.to_thread(diagnostics.build, data_dir, data.snapshot_types, data.compression)
    finally:
        ctx.diagnostics_lock.release()
    return Response(body, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def metrics_route(path: str):
    """`GET <path>` (`[http.metrics] endpoint`): Prometheus text, for any authenticated caller."""
    @get(path, summary="Prometheus metrics")
    async def get_metrics(ctx: Ctx, caller: Caller) -> Response:
        counts = await ctx.bridge.call_as(caller, _metrics)
        return Response(ctx.metrics.render(counts), media_type=ctx.metrics.content_type)
    return get_metrics


ROUTES = [ping, stats, clients, client, cluster_metadata, options, take_snapshot]
