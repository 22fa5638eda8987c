"""uvicorn's httptools protocol with the limits a public listener needs against slow clients.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`) but has no deadline for
a request that is being received: a client that sends a few header bytes now and then, or
connects and sends nothing, holds its connection (and a file descriptor) forever, and
headers are buffered without a size limit. Per connection, `GuardedHttpProtocol` adds:

    head deadline   the request line and headers must be complete `header_read_timeout`
                    seconds after the connection opened, or after the request's first byte
                    for the next requests of a keep-alive connection; else 408 and close
    body deadline   the body must be complete `body_read_timeout` seconds after the headers;
                    else the connection is closed (the handler sees a disconnect)
    head size       more than `max_header_size` bytes received while the head is still
                    incomplete: 431 and close (counted per read, so the bound is exact to one
                    read of the socket)
    connections     with `max_connections` open, a new one is answered 503 and closed

Refusals close gracefully ("lingering close", as nginx does): the answer is written, the
sending side shut down, and what the client still sends is read and dropped for up to
`LINGER` seconds before the socket is closed. Closing at once with unread input would make
the kernel send a reset, which destroys the answer before the client reads it.

The time a handler takes (a slow control plane, a large poll) is not limited: the deadlines
stop once the request has been received. One timer per connection at a time; closing lines
are logged at most once a minute per kind (iggy.control.throttle.LogLimiter).

`protocol_class(settings)` returns the class for `uvicorn.Config(http=...)`, bound to one
listener's settings.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from iggy.control.throttle import LogLimiter
from iggy.http.settings import HttpSettings

log = logging.getLogger("iggy.http")
_log_limited = LogLimiter(log)
LINGER = 2.0  # seconds a refused connection's input is drained before it is closed


def _response(status: int, reason: str) -> bytes:
    body = reason.encode("ascii")
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


class GuardedHttpProtocol(HttpToolsProtocol):
    settings: HttpSettings = HttpSettings()  # replaced per listener by protocol_class()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn types it
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True  # receiving a request line and headers (or waiting for one)
        self._head_bytes = 0
        self._completed = False  # a request was completed during the current read
        self._refused = False  # answered with an error: input is dropped until closed
        self._counted = False  # in server_state.connections (uvicorn's bookkeeping)
        limit = self.settings.max_connections
        if limit and len(self.server_state.connections) >= limit:
            self.transport = transport
            _log_limited.log(
                logging.WARNING,
                "connections",
                "refusing an HTTP connection: %d open (http.max_connections)",
                len(self.server_state.connections),
            )
            transport.write(_response(503, "Service Unavailable"))
            self._linger()
            return
        self._counted = True
        super().connection_made(transport)
        self._arm(self.settings.header_read_timeout, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        head_before = self._in_head
        self._completed = False
        super().data_received(data)
        if not (self._in_head and head_before and not self._completed) or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self.settings.max_header_size and self._head_bytes > self.settings.max_header_size:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "head-size",
                "request headers over %d bytes (http.max_header_size)",
                self.settings.max_header_size,
            )

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._timer is None:  # a keep-alive connection's next request starts its clock
            self._arm(self.settings.header_read_timeout, "head")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm()
        self._arm(self.settings.body_read_timeout, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head = True
        self._completed = True
        super().on_message_complete()

    # ------------------------------------------------------------ deadlines

    def _arm(self, seconds: float, phase: str) -> None:
        if seconds > 0:
            self._timer = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, phase: str, seconds: float) -> None:
        self._timer = None
        if self.transport.is_closing() or self._refused:
            return
        if phase == "head":
            self._refuse(
                408,
                "Request Timeout",
                "head-timeout",
                "request headers not received within %.1f s (http.header_read_timeout)",
                seconds,
            )
        else:
            _log_limited.log(
                logging.INFO,
                "body-timeout",
                "closing HTTP connection from %s: request body not received within %.1f s (http.body_read_timeout)",
                self._peer(),
                seconds,
            )
            self.transport.close()

    def _refuse(self, status: int, reason: str, key: str, why: str, *args: object) -> None:
        _log_limited.log(logging.INFO, key, "closing HTTP connection from %s: " + why, self._peer(), *args)
        if self.cycle is None or self.cycle.response_complete:  # no response under way
            self.transport.write(_response(status, reason))
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Shut down our side once the answer is out, drop the client's input, close later."""
        self._refused = True
        self._disarm()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._timer = self.loop.call_later(LINGER, self.transport.close)
        else:  # TLS: no half-close
            self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"


def protocol_class(settings: HttpSettings) -> type:
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"settings": settings})
