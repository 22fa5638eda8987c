"""The QUIC listener (`[quic]`, default 127.0.0.1:8080/UDP) on aioquic.

What the SDK does (core/sdk/src/quic/quic_client.rs): one QUIC connection per client, no
ALPN; for every request it opens a new bidirectional stream, writes the frame (TCP.md 2),
finishes its sending side and reads the reply until the server finishes the stream
(`read_to_end`, capped at the client's `response_buffer_size`, 10 MB by default). So here:

- one `Session` per QUIC connection (opened when the handshake completes, transport kind
  QUIC), closed when the connection ends;
- each bidirectional stream has its own `FrameReader`; complete frames join one queue per
  connection, handled one at a time in arrival order (`ControlPlane.handle`, awaited when
  asynchronous), and the reply is written on the stream that carried the request;
- the server finishes a stream once the client has finished its side and every frame that
  arrived on it is answered. A stream that ends inside a frame is reset.

`[quic]` settings: `max_idle_timeout` (0 = no idle limit of our own; the client's still
applies), `keep_alive_interval` (the server PINGs each connection that often; 0 = never),
`receive_window` / `stream_receive_window` (flow-control budget per connection / stream).
`[quic.certificate]`: see `iggy.engine.frontdoors.tls`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aioquic.asyncio.protocol import QuicConnectionProtocol, QuicStreamHandler
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection

from iggy.control.plane import TRANSPORT_QUIC, ConnectionLimit
from iggy.engine.base import Engine, spawn
from iggy.protocol.wire import FrameError, FrameReader, RequestHeader

if TYPE_CHECKING:
    from iggy.config import Config
    from iggy.control.plane import ControlPlane, Session

log = logging.getLogger(__name__)

_NO_IDLE_LIMIT = 10 * 365 * 86400.0  # seconds; "0 s" turns our idle limit off
_APP_ERROR_INVALID_FRAME = 1
_APP_ERROR_STREAM_TRUNCATED = 2


class _Stream:
    __slots__ = ("finished", "frames", "outstanding")

    def __init__(self, max_frame_size: int):
        self.frames = FrameReader(max_frame_size)
        self.outstanding = 0  # frames received and not answered yet
        self.finished = False  # the client finished its sending side


class IggyQuicProtocol(QuicConnectionProtocol):
    """One QUIC connection: a Session plus the per-connection request queue."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: QuicStreamHandler | None = None,
        *,
        plane: ControlPlane,
        max_frame_size: int,
        keep_alive: float,
    ) -> None:
        super().__init__(quic, stream_handler)
        self.plane = plane
        self.max_frame_size = max_frame_size
        self.keep_alive = keep_alive
        self.session: Session | None = None
        self.peer: object = None  # the client's address, (host, port, ...) for UDP
        self._streams: dict[int, _Stream] = {}
        self._queue: deque[tuple[int, RequestHeader, bytes]] = deque()  # (stream_id, header, body)
        self._busy = False
        self._ended = False
        self._ping_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ connection

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        if self.peer is None:
            self.peer = addr
        super().datagram_received(data, addr)

    def _open_session(self) -> Session | None:
        """The connection's session, opened on first use; None once the connection ended."""
        if self.session is not None:
            return self.session
        if self._ended:
            return None
        peer = self.peer
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            self.session = self.plane.open_session(address, TRANSPORT_QUIC, close=self._close_by_server)
        except ConnectionLimit:
            self._ended = True
            self.close(error_code=0, reason_phrase="too many connections")
            return None
        if self.keep_alive > 0:
            self._ping_timer = self._loop.call_later(self.keep_alive, self._ping)
        return self.session

    def _close_by_server(self) -> None:
        """Session.close (heartbeat eviction, shutdown): CONNECTION_CLOSE, session gone at once."""
        self.close(error_code=0, reason_phrase="closed by the server")
        self._terminated()

    def _ping(self) -> None:
        self._ping_timer = None
        if self._ended:
            return
        self._quic.send_ping(0)
        self.transmit()
        self._ping_timer = self._loop.call_later(self.keep_alive, self._ping)

    def _terminated(self) -> None:
        if self._ended and self.session is None:
            return
        self._ended = True
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        self._queue.clear()
        self._streams.clear()
        if self.session is not None:
            self.plane.close_session(self.session)
            self.session = None

    # ------------------------------------------------------------ events

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.HandshakeCompleted):
            self._open_session()
        elif isinstance(event, events.StreamReset):
            self._streams.pop(event.stream_id, None)
        elif isinstance(event, events.ConnectionTerminated):
            self._terminated()

    def _on_stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if stream_id & 0x2:  # unidirectional: the protocol has no use for them
            return
        session = self._open_session()
        if session is None:
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream(self.max_frame_size)
        if data:
            stream.frames.feed(data)
            while True:
                try:
                    frame = stream.frames.next_frame()
                except FrameError as exc:
                    log.info("closing QUIC connection %s: %s", session.address, exc)
                    self.close(error_code=_APP_ERROR_INVALID_FRAME, reason_phrase="invalid frame")
                    self._terminated()
                    return
                if frame is None:
                    break
                stream.outstanding += 1
                self._queue.append((stream_id, frame[0], frame[1]))
        if end_stream:
            stream.finished = True
            if stream.frames.buffered:
                log.info("QUIC client %s finished stream %d inside a frame", session.address, stream_id)
                self._send(stream_id, b"", reset=True)
            elif stream.outstanding == 0:
                self._send(stream_id, b"", end=True)
        self._drain()

    # ------------------------------------------------------------ requests

    def _drain(self) -> None:
        # frames are queued only once the session is open, and it is None again once the
        # connection ended (_terminated, which also empties the queue)
        while not self._busy and self._queue and (session := self.session) is not None:
            stream_id, header, body = self._queue.popleft()
            reply = self.plane.handle(session, header, body, parts=True)
            if isinstance(reply, (bytes, list)):
                self._reply(stream_id, reply)
            else:
                self._busy = True
                spawn(self._finish(stream_id, reply), f"QUIC request on {session.address}")
        self.transmit()

    async def _finish(self, stream_id: int, pending: Awaitable[bytes]) -> None:
        try:
            reply = await pending
        except Exception:
            log.exception("request failed on QUIC connection %s", self.session.address if self.session else self.peer)
            self._busy = False
            self.close(error_code=0, reason_phrase="internal error")
            self._terminated()
            return
        self._busy = False
        if not self._ended:
            self._reply(stream_id, reply)
            self._drain()

    def _reply(self, stream_id: int, reply: bytes | list[bytes]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:  # reset by the client meanwhile
            return
        stream.outstanding -= 1
        last = stream.finished and stream.outstanding == 0
        parts = reply if isinstance(reply, list) else (reply,)
        for i, part in enumerate(parts):
            self._send(stream_id, part, end=last and i == len(parts) - 1)

    def _send(self, stream_id: int, data: bytes, end: bool = False, reset: bool = False) -> None:
        try:
            if reset:
                self._quic.reset_stream(stream_id, _APP_ERROR_STREAM_TRUNCATED)
            else:
                self._quic.send_stream_data(stream_id, data, end_stream=end)
        except Exception as exc:
            log.debug("QUIC stream %d: reply dropped: %s", stream_id, exc)
        if end or reset:
            self._streams.pop(stream_id, None)


def quic_configuration(cfg: Config, cert_file: str, key_file: str) -> QuicConfiguration:
    """aioquic server configuration from `[quic]` (no ALPN, as upstream's client listener)."""
    idle = cfg.quic.max_idle_timeout
    conf = QuicConfiguration(
        is_client=False,
        alpn_protocols=None,
        idle_timeout=idle if idle > 0 else _NO_IDLE_LIMIT,
        max_data=cfg.quic.receive_window,
        max_stream_data=cfg.quic.stream_receive_window,
    )
    conf.load_cert_chain(cert_file, key_file)
    return conf


async def start_quic(
    plane: ControlPlane,
    host: str,
    port: int,
    max_frame_size: int,
    configuration: QuicConfiguration,
    keep_alive: float,
) -> tuple[QuicServer, tuple[str, int]]:
    """Bind the UDP listener; returns (QuicServer, bound (host, port))."""
    quiet = logging.getLogger("quic")  # aioquic logs 3 INFO lines per connection
    if quiet.level == logging.NOTSET and logging.getLogger().getEffectiveLevel() >= logging.INFO:
        quiet.setLevel(logging.WARNING)

    def create_protocol(quic: QuicConnection, stream_handler: QuicStreamHandler | None = None) -> IggyQuicProtocol:
        return IggyQuicProtocol(quic, stream_handler, plane=plane, max_frame_size=max_frame_size, keep_alive=keep_alive)

    server = await serve(host, port, configuration=configuration, create_protocol=create_protocol)
    transport = server._transport  # set by serve(); aioquic has no public accessor for the socket
    if transport is None:
        raise RuntimeError("aioquic's serve() returned a server without its UDP transport")
    bound = transport.get_extra_info("sockname")
    return server, (bound[0], bound[1])


@dataclass(eq=False)
class QuicEngine(Engine):
    """`[quic]`: the UDP listener and its connections."""

    kind = "quic"

    configuration: QuicConfiguration
    keep_alive: float  # seconds between the server's PINGs; 0: none
    server: QuicServer | None = field(default=None, init=False)  # the listener once started

    async def start(self) -> tuple[str, int]:
        self.server, bound = await start_quic(
            self.plane, self.host, self.port, self.max_frame_size, self.configuration, self.keep_alive
        )
        return bound

    def listening(self, bound: tuple[str, int]) -> str:
        return f"QUIC server listening on {bound[0]}:{bound[1]} (UDP)"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()  # CONNECTION_CLOSE to every client, then the UDP socket
