"""Every error of the REST API becomes one response here (HTTP.md 1.5).

Iggy errors answer with a JSON body ``{"id": <code>, "code": "<snake_case>", "reason": "...",
"field": <name or null>}`` and a status chosen by code: 401 for authentication, 403 for
permission, 404 for the not-found family, 503 (+ ``Retry-After: 1``) for transient errors,
400 for every other refusal. A read of a missing entity answers the generic
``{"id": 404, "code": "not_found", "reason": "Resource not found", "field": null}``. On a
cluster follower a command it does not serve is a 307 to the leader (a read) or a 503, or,
with forwarding on, the leader's answer (iggy.http.forward).

Refusals of the framework itself are plain text, as in the reference server (axum): invalid
JSON 400, JSON of the wrong shape 422, missing ``Content-Type: application/json`` 415, body
too large 413, bad path or query 400; an unknown path is 404 with an empty body and a known
path with the wrong method is 405.
"""

from __future__ import annotations

import logging
import math
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from iggy.control.throttle import LogLimiter
from iggy.http.forward import FORWARD, FORWARDED_HEADER
from iggy.protocol.errors import ErrorCode, IggyError, error_id

log = logging.getLogger("iggy.http")
T = TypeVar("T")
_log_limited = LogLimiter(log)

UNAUTHENTICATED_CODES = frozenset(
    {
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.ACCESS_TOKEN_MISSING,
        ErrorCode.INVALID_ACCESS_TOKEN,
        ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN,
    }
)
NOT_FOUND_CODES = frozenset(
    {
        ErrorCode.STREAM_ID_NOT_FOUND,
        ErrorCode.STREAM_NAME_NOT_FOUND,
        ErrorCode.TOPIC_ID_NOT_FOUND,
        ErrorCode.TOPIC_NAME_NOT_FOUND,
        ErrorCode.PARTITION_NOT_FOUND,
        ErrorCode.SEGMENT_NOT_FOUND,
        ErrorCode.CLIENT_NOT_FOUND,
        ErrorCode.CONSUMER_GROUP_ID_NOT_FOUND,
        ErrorCode.CONSUMER_GROUP_NAME_NOT_FOUND,
        ErrorCode.CONSUMER_GROUP_MEMBER_NOT_FOUND,
        ErrorCode.CONSUMER_OFFSET_NOT_FOUND,
        ErrorCode.RESOURCE_NOT_FOUND,
    }
)
TRANSIENT_CODES = frozenset({ErrorCode.TRANSIENT_NOT_COMMITTED, ErrorCode.TRANSIENT_NOT_ACCEPTED})
DISCONNECTED = "client disconnected prematurely"

# the `field` the reference server names for these codes (HTTP.md 1.5)
FIELDS: dict[int, str] = {
    ErrorCode.STREAM_ID_NOT_FOUND: "stream_id",
    ErrorCode.INVALID_STREAM_ID: "stream_id",
    ErrorCode.TOPIC_ID_NOT_FOUND: "topic_id",
    ErrorCode.INVALID_TOPIC_ID: "topic_id",
    ErrorCode.PARTITION_NOT_FOUND: "partition_id",
    ErrorCode.SEGMENT_NOT_FOUND: "segment_id",
    ErrorCode.CLIENT_NOT_FOUND: "client_id",
    ErrorCode.INVALID_STREAM_NAME: "name",
    ErrorCode.STREAM_NAME_ALREADY_EXISTS: "name",
    ErrorCode.INVALID_TOPIC_NAME: "name",
    ErrorCode.TOPIC_NAME_ALREADY_EXISTS: "name",
    ErrorCode.CONSUMER_GROUP_NAME_ALREADY_EXISTS: "name",
    ErrorCode.PERSONAL_ACCESS_TOKEN_ALREADY_EXISTS: "name",
    ErrorCode.INVALID_OFFSET: "offset",
    ErrorCode.INVALID_CONSUMER_GROUP_ID: "consumer_group_id",
    ErrorCode.USER_ALREADY_EXISTS: "username",
}


class ErrorBody(msgspec.Struct):
    """The JSON body of every Iggy error (documented in the OpenAPI document)."""

    id: int
    code: str
    reason: str
    field: str | None


def _spec(description: str, body: type[ErrorBody] | None = ErrorBody) -> ResponseSpec:
    media = "application/json" if body is not None else "text/plain"
    return ResponseSpec(data_container=body, description=description, media_type=media, generate_examples=False)


# documented on every API operation (added by app.create_app)
ERROR_RESPONSES = {
    400: _spec("Refused by the server (an Iggy error), or a malformed path, query or JSON (plain text)"),
    401: _spec("Missing, invalid, expired or revoked credential"),
    403: _spec("The caller lacks the permission"),
    404: _spec("No such entity"),
    413: _spec("Body larger than http.max_request_size", None),
    415: _spec("Body without Content-Type: application/json", None),
    422: _spec("JSON that does not fit the expected shape", None),
}


class NotFound(Exception):
    """A read of an entity that does not exist: the generic 404 body."""


def found(result: T | None) -> T:
    """A read's result, or the generic 404 when it found nothing (None)."""
    if result is None:
        raise NotFound()
    return result


def answered(result: T | None) -> T:
    """The result of a command that always answers (a list, the entity a create made): None
    would be a broken command, so it is a 500 (the generic handler), never a `null` body."""
    if result is None:
        raise RuntimeError("the command answered nothing")
    return result


class Unprocessable(Exception):
    """A body that parsed as JSON but does not fit (bad base64, empty payload): 422 text."""


def status_of(code: int) -> int:
    if code in UNAUTHENTICATED_CODES:
        return 401
    if code == ErrorCode.UNAUTHORIZED:
        return 403
    if code in NOT_FOUND_CODES:
        return 404
    if code in TRANSIENT_CODES:
        return 503
    return 400


def iggy_error_response(exc: IggyError) -> Response[Any]:
    status = status_of(exc.code)
    body = {
        "id": exc.code,
        "code": error_id(exc.code),
        "reason": exc.reason,
        "field": exc.field or FIELDS.get(exc.code),
    }
    headers = {"Retry-After": "1"} if status == 503 else None
    retry_after = getattr(exc, "retry_after", None)  # a login refused while backed off
    if retry_after:
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def text(status: int, message: str = "") -> Response[Any]:
    return Response(message, status_code=status, media_type="text/plain")


def _on_iggy_error(request: Request[Any, Any, Any], exc: IggyError) -> Response[Any]:
    if hasattr(exc, "leader_url"):  # refused by a cluster follower (iggy.http.bridge.call_as)
        if FORWARDED_HEADER in request.headers:
            return iggy_error_response(exc)  # forwarded here by a node with a stale view: one hop only
        if FORWARD in request.scope:  # forwarding is on: the leader's answer replaces this one
            request.scope[FORWARD] = True  # type: ignore[literal-required]
            return iggy_error_response(exc)
        leader_url = exc.leader_url
        if leader_url and request.method in ("GET", "HEAD"):
            query = request.url.query
            location = leader_url + request.url.path + (f"?{query}" if query else "")
            return Response(b"", status_code=307, headers={"Location": location})
    return iggy_error_response(exc)


def _on_not_found(request: Request[Any, Any, Any], exc: NotFound) -> Response[Any]:
    return Response(
        {"id": 404, "code": "not_found", "reason": "Resource not found", "field": None},
        status_code=404,
        media_type="application/json",
    )


def _on_unprocessable(request: Request[Any, Any, Any], exc: Unprocessable) -> Response[Any]:
    return text(422, str(exc))


def _on_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Body that does not fit its schema -> 422; bad path or query values -> 400."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    if any(isinstance(e, dict) and e.get("source") == "body" for e in extra):
        details = "; ".join(f"{e.get('key', '')}: {e.get('message', '')}" for e in extra if isinstance(e, dict))
        return text(422, f"Failed to deserialize the JSON body into the target type: {details}")
    details = "; ".join(f"{e.get('key', '')}: {e.get('message', '')}" for e in extra if isinstance(e, dict))
    return text(400, f"{exc.detail}{': ' + details if details else ''}")


def _on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, NotFoundException):
        return Response(b"", status_code=404)  # no route: empty body, as the reference server
    if exc.status_code == 405:
        return Response(b"", status_code=405, headers=exc.headers)
    if exc.status_code >= 500:
        if exc.detail == DISCONNECTED:
            # the client went away while its body was read (a slow client cut off by
            # http.body_read_timeout, or one that hung up): nothing failed here. Litestar
            # says so only in this message (Request.stream on http.disconnect)
            _log_limited.log(
                logging.INFO,
                "disconnected",
                "HTTP %s %s: the client disconnected before sending its body",
                request.method,
                request.url.path,
            )
            return text(400, "client disconnected")
        log.error("HTTP %s %s failed: %s", request.method, request.url.path, exc.detail)
    return text(exc.status_code, str(exc.detail))


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # litestar calls this handler with the exception, outside any `except` block
    log.error("HTTP %s %s failed", request.method, request.url.path, exc_info=exc)
    return text(HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    IggyError: _on_iggy_error,
    NotFound: _on_not_found,
    Unprocessable: _on_unprocessable,
    ValidationException: _on_validation,
    HTTPException: _on_http_exception,
    Exception: _on_unexpected,
}
