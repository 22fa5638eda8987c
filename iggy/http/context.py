"""What every route handler shares: the bridge to the control plane, the JWT issuer, the
settings and the metrics; plus the authentication guard and the small parsers of path values.

Authentication runs as a Litestar guard, which Litestar calls before it parses the path,
query and body, so a bad credential answers 401 even when the body is malformed, as in the
reference server (HTTP.md 1.2). The credential is a JWT issued by this server or a raw
personal access token; a JWT is checked here on the HTTP thread, a PAT is looked up on the
main loop. The guard stores the caller (an `auth.Principal`: user id and generation) in
``scope["user"]``; handlers receive it as the `caller` dependency and hand it to
`Bridge.call_as`.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, cast

from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, SerializationException
from litestar.handlers import BaseRouteHandler

from iggy.control.throttle import LogLimiter
from iggy.control.users import user_for_token
from iggy.http.auth import JwtIssuer, Principal, bearer
from iggy.http.bridge import Bridge
from iggy.http.settings import HttpSettings
from iggy.protocol.errors import ErrorCode, IggyError

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane
    from iggy.http.forward import Forwarder
    from iggy.http.metrics import Metrics

U32_MAX = 0xFFFFFFFF
_log_limited = LogLimiter(logging.getLogger("iggy.http"))


class HttpContext:
    """Shared by every request of one listener (a plain class: Litestar passes it as is)."""

    def __init__(
        self,
        bridge: Bridge,
        jwt: JwtIssuer,
        settings: HttpSettings,
        metrics: Metrics,
        max_poll_bytes: int = 1 << 20,
        forwarder: Forwarder | None = None,
    ):
        self.bridge = bridge
        self.forwarder = forwarder  # a cluster node with forwarding on (iggy.http.forward)
        self.max_poll_bytes = max_poll_bytes  # the plane's, fixed at start: the cap of a poll reply
        self.jwt = jwt
        self.settings = settings
        self.metrics = metrics  # read by the metrics route (routes/system.py)
        self.diagnostics_lock = threading.Lock()  # one diagnostics archive at a time (error 9000)


Ctx = NamedDependency[HttpContext]  # handler parameter `ctx`
Caller = NamedDependency[Principal]  # handler parameter `caller`: the authenticated user
# What a route that builds its own Response returns. The body type stays Any: Litestar documents
# the T of Response[T] as the JSON schema of the body, and these bodies are empty, a ZIP or
# Prometheus text (bytes would be documented as a JSON string).
Reply = Response[Any]


def ctx_of(connection: ASGIConnection[Any, Any, Any, Any]) -> HttpContext:
    return cast(HttpContext, connection.app.state.ctx)


def provide_ctx(request: Request[Any, Any, Any]) -> HttpContext:  # Litestar dependency `ctx`
    return ctx_of(request)


def provide_caller(request: Request[Any, Any, Any]) -> Principal:  # dependency `caller` (set by the guard)
    return cast(Principal, request.scope["user"])


def _pat_user(plane: ControlPlane, credential: str) -> Principal:
    try:
        user = user_for_token(plane, credential)
        return Principal(user.id, user.generation)
    except IggyError as exc:
        if exc.code == ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN:
            raise IggyError(ErrorCode.UNAUTHENTICATED) from None
        raise


async def auth_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """Authenticate every route not marked ``opt={"public": True}``."""
    if handler.opt.get("public"):
        return
    ctx = ctx_of(connection)
    credential = bearer(connection.headers)
    who = ctx.jwt.principal(credential)
    if who is None:
        if "." in credential:  # a JWT (ours but expired or revoked, or not ours)
            raise IggyError(ErrorCode.UNAUTHENTICATED)
        who = await ctx.bridge.call(_pat_user, credential)
    connection.scope["user"] = who
    connection.scope["auth"] = credential


class JsonRequest(Request[Any, Any, Any]):
    """Litestar's Request, except that JSON nested too deeply for the decoder is a client
    error (400, plain text, as any malformed JSON) instead of a RecursionError (500 and a
    traceback per request). The refusal is logged at most once a minute."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            _log_limited.log(
                logging.INFO,
                "json-depth",
                "HTTP %s %s from %s: JSON body nested too deeply, refused (400)",
                self.method,
                self.url.path,
                self.client.host if self.client else "unknown",
            )
            raise SerializationException("JSON is malformed: nested too deeply") from None


async def require_json(request: Request[Any, Any, Any]) -> None:
    """Refuse a body route without ``Content-Type: application/json`` (415), as axum's Json does."""
    if "data" not in request.route_handler.parsed_fn_signature.parameters:
        return None
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise HTTPException(status_code=415, detail="Expected request with `Content-Type: application/json`")
    return None


# ------------------------------------------------------------------- path values


def ident(text: str) -> int | str:
    """An id-or-name path segment: digits that fit a u32 are an id, anything else a name."""
    raw = text.encode("utf-8")
    if not 1 <= len(raw) <= 255:
        raise IggyError(ErrorCode.INVALID_IDENTIFIER, "an identifier is 1..255 bytes")
    if text.isascii() and text.isdigit() and int(text) <= U32_MAX:
        return int(text)
    return text


def check_name(name: str, code: ErrorCode) -> str:
    """Stream, topic and group names are 1..255 bytes of UTF-8 (the wire's WireName)."""
    if not 1 <= len(name.encode("utf-8")) <= 255:
        raise IggyError(code, field="name")
    return name
