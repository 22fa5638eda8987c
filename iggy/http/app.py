"""The Litestar application of the REST API: routes, auth, errors, CORS, OpenAPI, /ui.

Layers, outermost first: `CountingApp` (request counter) -> Litestar's CORS middleware
(answers preflight `OPTIONS` before anything else, HTTP.md 1.7) -> routing (unknown path 404
with an empty body) -> on a cluster node with forwarding on, `ForwardToLeader`
(iggy.http.forward) -> the auth guard and the Content-Type check of the API router ->
body/path/query parsing -> handler. Everything under the API router requires a bearer unless
the handler is marked public; the OpenAPI document (`/schema`, `/schema/openapi.json`) and
`/ui` are outside it.

Every successful (2xx/3xx) answer of the API router carries `iggy-view: 0`, except `/ping`:
upstream stamps the metadata group's consensus view number on those answers
(core/server/src/http/state.rs, insert_view_header; core/server/src/http.rs, router), and a
single node never leaves view 0. Errors, `/ping`, `/ui` and CORS preflights go without it,
as upstream's layering does.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, cast

from litestar import Litestar, Response, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ControllerRouterHandler, Method

from iggy import SERVER_VERSION
from iggy.http.context import HttpContext, JsonRequest, auth_guard, provide_caller, provide_ctx, require_json
from iggy.http.errors import ERROR_RESPONSES, EXCEPTION_HANDLERS
from iggy.http.forward import ForwardToLeader
from iggy.http.routes import messages, streams, system, users
from iggy.http.settings import HttpSettings
from iggy.http.webui import ui_route

OPENAPI_PATH = "/schema"
VIEW_HEADER = "iggy-view"
SINGLE_NODE_VIEW = "0"

log = logging.getLogger("iggy.http")


def stamp_view(response: Response[Any]) -> Response[Any]:
    """after_request hook of the API router (see the module docstring)."""
    if (response.status_code or 200) < 400:
        response.headers[VIEW_HEADER] = SINGLE_NODE_VIEW
    return response


def _web_ui_notice(settings: HttpSettings) -> None:
    """`http.web_ui = true` is upstream's switch for the UI compiled into its binary; this
    server has none built in, so it says once how to serve the official build instead."""
    if settings.web_ui and not settings.web_ui_dir:
        log.warning(
            "http.web_ui = true, but no Web UI is built into this server: build the static "
            "Web UI from the Apache Iggy sources (web/, build:static -> web/build/static) and "
            "set http.web_ui_dir (IGGY_HTTP_WEB_UI_DIR) to that folder to serve it under /ui"
        )


def create_app(ctx: HttpContext) -> Litestar:
    settings = ctx.settings
    handlers = [*system.ROUTES, *users.ROUTES, *streams.ROUTES, *messages.ROUTES]
    if settings.metrics_enabled:
        handlers.append(system.metrics_route(settings.metrics_endpoint))
    for handler in handlers:  # document the error answers once, for every operation
        handler.responses = {**ERROR_RESPONSES, **(handler.responses or {})}
    api = Router(
        path="/",
        route_handlers=handlers,
        guards=[auth_guard],
        before_request=require_json,
        after_request=stamp_view,
        security=[{"bearer": []}],
        middleware=(
            [DefineMiddleware(ForwardToLeader, forwarder=ctx.forwarder, max_body=settings.max_request_size)]
            if ctx.forwarder is not None
            else []
        ),
    )
    route_handlers: list[ControllerRouterHandler] = [api]
    _web_ui_notice(settings)
    if settings.web_ui_dir:
        route_handlers.append(ui_route(settings.web_ui_dir))
    cors = settings.cors
    cors_config = None
    if cors.enabled:
        cors_config = CORSConfig(
            allow_origins=list(cors.allowed_origins),
            # method names from the config, upper-cased by HttpSettings
            allow_methods=cast("list[Method | Literal['*']]", list(cors.allowed_methods)),
            allow_headers=list(cors.allowed_headers),
            expose_headers=list(cors.exposed_headers),
            allow_credentials=cors.allow_credentials,
        )
    openapi = OpenAPIConfig(
        title="Iggy HTTP API",
        version=SERVER_VERSION,
        path=OPENAPI_PATH,
        description="REST API of the iggy server (compatible with Apache Iggy 0.9).",
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT or personal access token")
            }
        ),
    )
    return Litestar(
        route_handlers=route_handlers,
        dependencies={
            "ctx": Provide(provide_ctx, sync_to_thread=False),
            "caller": Provide(provide_caller, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=cors_config,
        openapi_config=openapi,
        request_max_body_size=settings.max_request_size,
        request_class=JsonRequest,
        state=State({"ctx": ctx}),
        debug=False,
        logging_config=None,
    )
