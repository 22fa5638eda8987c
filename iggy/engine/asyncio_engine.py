"""The portable engine: asyncio (uvloop when installed) serving the binary protocol over TCP.

One `Connection` per socket, an asyncio BufferedProtocol: the socket reads straight into the
Cython `FrameReader`'s buffer (no intermediate bytes object); each complete frame
is handed to the control plane's `handle()` in arrival order. Synchronous commands answer
inside `data_received`; a command that must wait (Argon2 hashing at login) holds later frames
of the same connection until it is done, so replies always leave in request order.

Limits: when more than `limits.max_write_buffer` bytes of replies are unsent (a client that
does not read) the engine stops parsing and reading that connection until it drains, and it
never buffers more than one maximum frame of unread input. With `limits.idle_timeout` set, a
connection that completes no request for that long (idle, or too slow to send or to read) is
aborted with a log line.
"""
from __future__ import annotations

import asyncio
import logging
import time

from iggy._core.wire import FrameError, FrameReader
from iggy.control.plane import TRANSPORT_TCP, ConnectionLimit

log = logging.getLogger(__name__)


class Connection(asyncio.BufferedProtocol):
    """A binary-protocol connection; `transport_kind` is what GET_CLIENTS reports."""

    def __init__(self, plane, max_frame_size: int, transport_kind: int = TRANSPORT_TCP):
        self.plane = plane
        self.max_frame_size = max_frame_size
        self.transport_kind = transport_kind
        self.transport = None
        self.session = None
        self.frames = FrameReader(max_frame_size)
        self._busy = False
        self._closed = False
        self._write_paused = False
        self._idle_timer = None
        limits = plane.config.limits
        self.max_write_buffer = limit_bytes(limits.max_write_buffer)
        self.idle_timeout = limit_seconds(limits.idle_timeout)

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            self.session = self.plane.open_session(address, self.transport_kind, close=self.close)
        except ConnectionLimit:
            self._closed = True
            transport.close()
            return
        if hasattr(transport, "set_write_buffer_limits"):
            transport.set_write_buffer_limits(high=self.max_write_buffer)
        if self.idle_timeout:
            self._idle_timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._check_idle)

    def get_buffer(self, sizehint):
        return self.frames.get_buffer(sizehint)

    def buffer_updated(self, nbytes):
        self.frames.buffer_updated(nbytes)
        if not self._closed:
            self._drain()

    def data_received(self, data):
        """For transports that deliver bytes objects (TLS, WebSocket, QUIC adapters)."""
        if self._closed:
            return
        self.frames.feed(data)
        self._drain()

    def connection_lost(self, exc):
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self.session is not None:
            self.plane.close_session(self.session)

    def pause_writing(self):
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self):
        self._write_paused = False
        self.transport.resume_reading()
        self._drain()

    # ---------------------------------------------------------------- frames

    def close(self):
        if not self._closed and self.transport is not None:
            self.transport.close()

    def _check_idle(self):
        """limits.idle_timeout: abort (unsent replies dropped) a connection with no recent request."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        idle = time.monotonic() - self.session.last_seen
        if self._busy:       # a request still running (login hashing): look again later
            self._idle_timer = loop.call_later(self.idle_timeout, self._check_idle)
        elif idle < self.idle_timeout:
            self._idle_timer = loop.call_later(self.idle_timeout - idle, self._check_idle)
        else:
            log.info("closing %s: no complete request for %.1f s (limits.idle_timeout)", self.session.address, idle)
            self.transport.abort()

    def _drain(self):
        while not self._busy and not self._closed and not self._write_paused:
            try:
                frame = self.frames.next_frame()
            except FrameError as exc:
                log.info("closing %s: %s", self.session.address, exc)
                self.transport.close()
                return
            if frame is None:
                break
            header, body = frame
            reply = self.plane.handle(self.session, header, body, parts=True)
            if isinstance(reply, bytes):
                self.transport.write(reply)
            elif isinstance(reply, list):
                self.transport.writelines(reply)
            else:
                self._busy = True
                asyncio.ensure_future(self._finish(reply))
        if self.frames.buffered > self.max_frame_size + 256 and not self._busy:
            self.transport.pause_reading()

    async def _finish(self, pending):
        try:
            reply = await pending
            if not self._closed:
                self.transport.write(reply)
        except Exception:  # noqa: BLE001 - a failed request must not kill the connection silently
            log.exception("request failed on %s", self.session.address)
            self.close()
        finally:
            self._busy = False
        if not self._closed:
            self.transport.resume_reading()
            self._drain()


def limit_bytes(text) -> int:
    from iggy.config import parse_size
    return parse_size(text)


def limit_seconds(text) -> float:
    """A limits.* duration in seconds; 0 = off."""
    from iggy.config import parse_duration
    return parse_duration(text) / 1e6


async def start_tcp(plane, host: str, port: int, max_frame_size: int):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(plane, max_frame_size), host, port,
                                      reuse_address=True, backlog=1024)
    return server
