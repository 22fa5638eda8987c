"""The Litestar application of the REST API: routes, auth, errors, CORS, OpenAPI, /ui.

Layers, outermost first: `CountingApp` (request counter) -> Litestar's CORS middleware
(answers preflight `OPTIONS` before anything else, HTTP.md 1.7) -> routing (unknown path 404
with an empty body) -> the auth guard and the Content-Type check of the API router ->
body/path/query parsing -> handler. Everything under the API router requires a bearer unless
the handler is marked public; the OpenAPI document (`/schema`, `/schema/openapi.json`) and
`/ui` are outside it.
"""
from __future__ import annotations

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from iggy import SERVER_VERSION
from iggy.http.context import HttpContext, JsonRequest, auth_guard, provide_caller, provide_ctx, require_json
from iggy.http.errors import ERROR_RESPONSES, EXCEPTION_HANDLERS
from iggy.http.routes import messages, streams, system, users
from iggy.http.webui import ui_route

OPENAPI_PATH = "/schema"


def create_app(ctx: HttpContext) -> Litestar:
    settings = ctx.settings
    handlers = [*system.ROUTES, *users.ROUTES, *streams.ROUTES, *messages.ROUTES]
    if settings.metrics_enabled:
        handlers.append(system.metrics_route(settings.metrics_endpoint))
    for handler in handlers:   # document the error answers once, for every operation
        handler.responses = {**ERROR_RESPONSES, **(handler.responses or {})}
    api = Router(path="/", route_handlers=handlers, guards=[auth_guard], before_request=require_json,
                 security=[{"bearer": []}])
    route_handlers = [api]
    if settings.web_ui_dir:
        route_handlers.append(ui_route(settings.web_ui_dir))
    cors = settings.cors
    cors_config = None
    if cors.enabled:
        cors_config = CORSConfig(allow_origins=list(cors.allowed_origins), allow_methods=list(cors.allowed_methods),
                                 allow_headers=list(cors.allowed_headers), expose_headers=list(cors.exposed_headers),
                                 allow_credentials=cors.allow_credentials)
    openapi = OpenAPIConfig(
        title="Iggy HTTP API", version=SERVER_VERSION, path=OPENAPI_PATH,
        description="REST API of the iggy server (compatible with Apache Iggy 0.9).",
        components=Components(security_schemes={
            "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT or personal access token")}),
    )
    return Litestar(
        route_handlers=route_handlers,
        dependencies={"ctx": Provide(provide_ctx, sync_to_thread=False),
                      "caller": Provide(provide_caller, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=cors_config,
        openapi_config=openapi,
        request_max_body_size=settings.max_request_size,
        request_class=JsonRequest,
        state=State({"ctx": ctx}),
        debug=False,
        logging_config=None,
    )
