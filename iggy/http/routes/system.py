"""Ping, stats, clients, cluster metadata, option catalog, snapshot and metrics (HTTP.md 2, 5.7).

Same layout as routes/users.py: commands through `ctx.bridge.call_as`, views on the main loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any

from litestar import Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, JSONBody, PathParameter

from iggy.control import permissions as perm
from iggy.control import system
from iggy.control.registry import operation
from iggy.control.topics import encode_value
from iggy.http import diagnostics, metrics, schemas, views
from iggy.http.context import Caller, Ctx, Reply
from iggy.http.errors import answered, found
from iggy.http.views import Json
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session

ClientId = Annotated[int, PathParameter(ge=0, le=0xFFFFFFFF)]


# control.system.collect_stats(): counters, byte counts and host text, by name
def _stats(plane: ControlPlane, raw: dict[str, Any]) -> Json:
    return views.stats(raw)


def _clients(plane: ControlPlane, sessions: Iterable[Session]) -> list[Json]:
    return [views.client(s) for s in sessions]


def _client_details(plane: ControlPlane, session: Session) -> Json:
    return views.client_details(session)


# the operations of the REST API that have no command of the binary protocol


@operation(perm.READ_SERVERS)
def diagnostics_dir(plane: ControlPlane, session: Session) -> str:
    """The data directory the diagnostics ZIP reads (built on the HTTP thread)."""
    path: str = plane.config.system.path  # a text key of the configuration tree
    return path


@operation(perm.LOGGED_IN)
def metrics_counts(plane: ControlPlane, session: Session) -> dict[str, int]:
    return metrics.counts(plane)


def _as_is(response: Reply) -> Reply:
    return response


# `after_request` here replaces the API router's iggy-view stamp (iggy.http.app): the one public
# success route must not show the view number, as upstream (core/server/src/http.rs, PING_PATH)
@get("/ping", opt={"public": True}, summary="Liveness check", media_type="text/plain", after_request=_as_is)
async def ping() -> str:
    return "pong"


@get("/stats", summary="Server statistics")
async def stats(ctx: Ctx, caller: Caller) -> Json:
    return answered(await ctx.bridge.call_as(caller, codes.GET_STATS, view=_stats))


@get("/clients", summary="Connected clients (binary-protocol connections)")
async def clients(ctx: Ctx, caller: Caller) -> list[Json]:
    return answered(await ctx.bridge.call_as(caller, codes.GET_CLIENTS, view=_clients))


@get("/clients/{client_id:int}", summary="One connected client")
async def client(ctx: Ctx, caller: Caller, client_id: ClientId) -> Json:
    return found(await ctx.bridge.call_as(caller, codes.GET_CLIENT, client_id, view=_client_details))


@get("/cluster/metadata", summary="Cluster roster (a single node)")
async def cluster_metadata(ctx: Ctx, caller: Caller) -> Json:
    meta = await ctx.bridge.call_as(caller, codes.GET_CLUSTER_METADATA, follower_ok=True)
    return views.cluster(meta, ctx.settings.host if ctx.settings.host not in ("0.0.0.0", "::") else None)


@get("/options/{options_scope:str}", summary="Option keys of a scope (topic, stream, user)")
async def options(ctx: Ctx, caller: Caller, options_scope: FromPath[str]) -> list[Json]:
    if options_scope not in ("topic", "stream", "user"):
        raise IggyError(ErrorCode.INVALID_COMMAND, "unknown options scope")
    return [views.option_spec(o, encode_value(o.kind, o.default)) for o in system.described_options(options_scope)]


@post("/snapshot", status_code=200, summary="Diagnostics snapshot (ZIP)", media_type="application/zip")
async def take_snapshot(ctx: Ctx, caller: Caller, data: JSONBody[schemas.Snapshot]) -> Reply:
    if "All" in data.snapshot_types and len(data.snapshot_types) > 1:
        raise IggyError(ErrorCode.INVALID_COMMAND, "All must be the only snapshot type")
    data_dir = await ctx.bridge.call_as(caller, diagnostics_dir)
    if not ctx.diagnostics_lock.acquire(blocking=False):
        raise IggyError(ErrorCode.SNAPSHOT_FILE_COMPLETION_FAILED, "a snapshot is already being taken")
    try:
        body, name = await asyncio.to_thread(diagnostics.build, data_dir, data.snapshot_types, data.compression)
    finally:
        ctx.diagnostics_lock.release()
    return Response(
        body, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


def metrics_route(path: str) -> HTTPRouteHandler:
    """`GET <path>` (`[http.metrics] endpoint`): Prometheus text, for any authenticated caller.
    A cluster follower answers it too: a scrape describes the node scraped (as upstream)."""

    @get(path, summary="Prometheus metrics")
    async def get_metrics(ctx: Ctx, caller: Caller) -> Reply:
        counts = await ctx.bridge.call_as(caller, metrics_counts, follower_ok=True)
        return Response(ctx.metrics.render(counts), media_type=ctx.metrics.content_type)

    return get_metrics


ROUTES = [ping, stats, clients, client, cluster_metadata, options, take_snapshot]
