"""The portable engine: asyncio (uvloop when installed) serving the binary protocol over TCP.

One `Connection` per socket, an asyncio BufferedProtocol: the socket reads straight into the
Cython `FrameReader`'s buffer (no intermediate bytes object); each complete frame
is handed to the control plane's `handle()` in arrival order. The first 8 bytes of a
connection tell whether it speaks the 0.9 protocol or the classic one of clients before 0.9
(`FrameReader.detect`); classic frames go to `iggy.protocol.classic.handle` instead, with
the same limits, ordering and reply budget. The uring engine hands its classic connections
over to this class too (`adopt_classic`). Synchronous commands answer
inside `data_received`; a command that must wait (Argon2 hashing at login) holds later frames
of the same connection until it is done, so replies always leave in request order.

Limits: when more than `limits.max_write_buffer` bytes of replies are unsent (a client that
does not read) the engine stops parsing and reading that connection until it drains, and it
never buffers more than one frame of unread input: one maximum frame once logged in, one
`limits.max_unauthenticated_frame` before (a bigger frame before login closes the
connection with a log line as soon as its header is in). With `limits.idle_timeout` set, a
connection that completes no request for that long (idle, or too slow to send or to read) is
aborted with a log line.

Large replies (over 1 MiB: big polls) are counted in a process-wide `ReplyBudget` of
`limits.max_reply_buffers` bytes from the moment they are built until the transport has sent
them (its write buffer is back under 1 MiB). While the budget is spent, a connection's next
poll waits (the frame is held, reading pauses) until replies of other connections have gone
out; other commands go on. The budget is checked before a poll runs, so it is exceeded by at
most one reply. When the budget empties after big replies, glibc's free heap pages are
handed back (`release_free_memory`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeAlias, cast

from iggy.control.plane import TRANSPORT_TCP, ConnectionLimit
from iggy.engine.base import ListenerEngine, inject_fault, spawn
from iggy.protocol import codes
from iggy.protocol.wire import (
    HEADER_SIZE,
    PROTOCOL_CLASSIC,
    PROTOCOL_UNKNOWN,
    FrameError,
    FrameReader,
    RequestHeader,
    release_free_memory,
)

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Reply, Session

log = logging.getLogger(__name__)

# a frame: (header, body) of the 0.9 protocol, or (command code, body) of the classic one
Frame: TypeAlias = tuple[RequestHeader, bytes] | tuple[int, bytes]

# a reply above this many bytes is a large reply: counted in the ReplyBudget until sent
LARGE_REPLY = 1 << 20


class ReplyBudget:
    """Bytes of large replies built and not yet sent, for all connections of the process.

    `full()` before a poll runs: at or over `cap` bytes, the connection `wait()`s and is woken
    (its `_wake()`) in arrival order as `release()` brings the total back under the cap.
    """

    def __init__(self, cap: int) -> None:
        self.cap = max(1, cap)
        self.used = 0
        self.peak = 0
        self._waiting: list[Connection] = []
        self._trim: asyncio.TimerHandle | None = None

    def full(self) -> bool:
        return self.used >= self.cap

    def take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def wait(self, conn: Connection) -> None:
        self._waiting.append(conn)

    def forget(self, conn: Connection) -> None:
        if conn in self._waiting:
            self._waiting.remove(conn)

    def release(self, n: int) -> None:
        self.used -= n
        while self._waiting and not self.full():
            self._waiting.pop(0)._wake()
        if self.used == 0 and self._trim is None:
            # once the big replies of a burst are gone, give their heap pages back (see
            # release_free_memory); debounced, it walks the whole heap
            self._trim = asyncio.get_running_loop().call_later(0.2, self._release_memory)

    def _release_memory(self) -> None:
        self._trim = None
        if self.used == 0:
            release_free_memory()


_budgets: weakref.WeakKeyDictionary[ControlPlane, ReplyBudget] = weakref.WeakKeyDictionary()


def reply_budget(plane: ControlPlane) -> ReplyBudget:
    """The budget of a control plane's connections (TCP and TLS alike), made on first use."""
    budget = _budgets.get(plane)
    if budget is None:
        budget = _budgets[plane] = ReplyBudget(plane.config.limits.max_reply_buffers)
    return budget


def budget_counters(plane: ControlPlane) -> dict[str, int]:
    """The reply budget's gauges of GET /metrics."""
    budget = reply_budget(plane)
    return {"reply_buffers_bytes": budget.used, "reply_buffer_waiters": len(budget._waiting)}


class Connection(asyncio.BufferedProtocol):
    """A binary-protocol connection; `transport_kind` is what GET_CLIENTS reports."""

    def __init__(
        self, plane: ControlPlane, max_frame_size: int, transport_kind: int = TRANSPORT_TCP, received: bytes = b""
    ) -> None:
        self.plane = plane
        self._received = received  # bytes another engine read before handing the socket over
        self.max_frame_size = max_frame_size
        self.transport_kind = transport_kind
        # set by connection_made, which asyncio calls before any other callback
        self.transport: asyncio.Transport
        self.session: Session | None = None  # stays None for a connection refused by the limit
        limits = plane.config.limits
        self.frames = FrameReader(max_frame_size, min(max_frame_size, limits.max_unauthenticated_frame))
        self._busy = False
        self._closed = False
        self._write_paused = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self.max_write_buffer = limits.max_write_buffer
        self.idle_timeout = limits.idle_timeout
        self.budget = reply_budget(plane)
        self._held = 0  # bytes of this connection's large replies not yet sent
        self._deferred: Frame | None = None  # a poll frame waiting for the reply budget
        self._sent_check: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport: asyncio's own, its TLS one or uvloop's TCPTransport, which has
        # every method of asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
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
        if self._received:
            received, self._received = self._received, b""
            self.data_received(received)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.frames.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.frames.buffer_updated(nbytes)
        if not self._closed:
            self._drain()

    def data_received(self, data: bytes) -> None:
        """For transports that deliver bytes objects (TLS, WebSocket, QUIC adapters)."""
        if self._closed:
            return
        self.frames.feed(data)
        self._drain()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._sent_check is not None:
            self._sent_check.cancel()
        self._deferred = None
        self.budget.forget(self)
        if self._held:
            held, self._held = self._held, 0
            self.budget.release(held)
        if self.session is not None:
            self.plane.close_session(self.session)

    def pause_writing(self) -> None:
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._check_sent()
        self.transport.resume_reading()
        self._drain()

    # ---------------------------------------------------------------- frames

    def close(self) -> None:
        """Session.close (heartbeat eviction, shutdown), set once connected."""
        if not self._closed:
            self.transport.close()

    def _check_idle(self) -> None:
        """limits.idle_timeout: abort (unsent replies dropped) a connection with no recent request."""
        session = self.session
        if self._closed or session is None:
            return
        loop = asyncio.get_running_loop()
        idle = time.monotonic() - session.last_seen
        if self._busy:  # a request still running (login hashing): look again later
            self._idle_timer = loop.call_later(self.idle_timeout, self._check_idle)
        elif idle < self.idle_timeout:
            self._idle_timer = loop.call_later(self.idle_timeout - idle, self._check_idle)
        else:
            log.info("closing %s: no complete request for %.1f s (limits.idle_timeout)", session.address, idle)
            self.transport.abort()

    def _drain(self) -> None:
        session = self.session
        if session is None:  # refused by limits.max_connections: closed, nothing to serve
            return
        while not self._busy and not self._closed and not self._write_paused:
            frame: Frame | None
            if self._deferred is not None:
                frame, self._deferred = self._deferred, None
            else:
                try:
                    frame = self._next_frame()
                except FrameError as exc:
                    log.info("closing %s: %s", session.address, exc)
                    self.transport.close()
                    return
                if frame is None:
                    break
            head, body = frame
            if isinstance(head, int):  # the classic protocol's frames are (code, body)
                is_poll = head == codes.POLL_MESSAGES
            else:
                is_poll = head.operation == codes.OP_READ and head.code == codes.POLL_MESSAGES
            if is_poll and self.budget.full():
                self._deferred = frame  # the reply could be large: wait for room
                self.budget.wait(self)
                break
            try:
                reply: Reply | Awaitable[bytes]
                if isinstance(head, int):
                    from iggy.protocol import classic as classic_protocol

                    reply = classic_protocol.handle(self.plane, session, head, body)
                else:
                    inject_fault(head)
                    reply = self.plane.handle(session, head, body, parts=True)
                self.frames.authenticated = session.user_id is not None
                if isinstance(reply, bytes):
                    self._write([reply], len(reply))
                elif isinstance(reply, list):
                    self._write(reply, sum(len(part) for part in reply))
                else:
                    self._busy = True
                    spawn(self._finish(session, reply), f"request on {session.address}")
            except Exception as exc:
                self._failed(session, exc)
                return
        # never more than one frame of unread input (the limit in force: before login it is
        # limits.max_unauthenticated_frame); reading resumes when the frames can be taken
        if self.frames.buffered > self.frames.frame_limit + HEADER_SIZE or self._deferred is not None:
            self.transport.pause_reading()

    def _next_frame(self) -> Frame | None:
        """The next complete frame of whichever protocol the connection speaks: (header,
        body) for 0.9, (code, body) for classic; None when more bytes are needed."""
        protocol = self.frames.protocol
        if protocol == PROTOCOL_UNKNOWN:
            protocol = self.frames.detect()
            if protocol == PROTOCOL_UNKNOWN:
                return None
        if protocol == PROTOCOL_CLASSIC:
            return self.frames.next_classic_frame()
        return self.frames.next_frame()

    def _failed(self, session: Session, exc: Exception) -> None:
        log.error(
            "closing %s (client %d): the request raised %s",
            session.address,
            session.client_id,
            type(exc).__name__,
            exc_info=exc,
        )
        self._closed = True
        self.transport.abort()

    def _write(self, parts: list[bytes], size: int) -> None:
        if size > LARGE_REPLY:
            self.budget.take(size)
            self._held += size
        if len(parts) == 1:
            self.transport.write(parts[0])
        else:
            self.transport.writelines(parts)
        if self._held:
            self._check_sent()

    def _check_sent(self) -> None:
        """Give the large replies back to the budget once the transport has (nearly) sent them."""
        self._sent_check = None
        if not self._held or self._closed:
            return
        if self.transport.get_write_buffer_size() <= LARGE_REPLY:
            held, self._held = self._held, 0
            self.budget.release(held)
        elif not self._write_paused:
            # under the write-buffer high mark there is no resume_writing to wait for
            self._sent_check = asyncio.get_running_loop().call_later(0.05, self._check_sent)

    def _wake(self) -> None:
        """The reply budget has room again for the deferred poll."""
        if not self._closed:
            self.transport.resume_reading()
            self._drain()

    async def _finish(self, session: Session, pending: Awaitable[bytes]) -> None:
        try:
            reply = await pending
            self.frames.authenticated = session.user_id is not None
            if not self._closed:
                self._write([reply], len(reply))
        except Exception:
            log.exception("request failed on %s", session.address)
            self.close()
        finally:
            self._busy = False
        if not self._closed:
            self.transport.resume_reading()
            self._drain()


def adopt_classic(plane: ControlPlane, sock: socket.socket, received: bytes, max_frame_size: int) -> None:
    """Serve a connection another engine accepted and found not to speak 0.9 (the uring
    engine: its shards parse only 0.9 frames). `sock` is a connected socket of its own (a
    dup of the shard's descriptor); `received` the bytes the shard read already. Runs on the
    event loop."""

    async def start() -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: Connection(plane, max_frame_size, received=received), sock
            )
        except OSError as exc:
            log.info("classic connection handed over, then lost: %s", exc)
            sock.close()

    spawn(start(), "serving a classic connection handed over")


class AsyncioEngine(ListenerEngine):
    """The TCP listener of the asyncio engine, plain or behind TLS (`ssl_context`).

    With TLS, a client that does not speak it fails the handshake, and asyncio closes that
    socket before a session exists (connection_made runs only after a completed handshake).
    stop() closes the listener only: the open connections end with their sessions
    (iggy.server.node).
    """

    kind = "tcp"

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = server = await loop.create_server(
            lambda: Connection(self.plane, self.max_frame_size),
            self.host,
            self.port,
            reuse_address=True,
            backlog=1024,
            ssl=self.ssl_context,  # None: plain TCP
            ssl_handshake_timeout=10.0 if self.ssl_context is not None else None,
        )
        bound = server.sockets[0].getsockname()
        return bound[0], bound[1]

    def listening(self, bound: tuple[str, int]) -> str:
        tls = ", TLS" if self.ssl_context else ""
        return f"TCP server listening on {bound[0]}:{bound[1]} (asyncio engine{tls})"

    def counters(self) -> dict[str, int]:
        return budget_counters(self.plane)
