"""The WebSocket listener (`[websocket]`, default 127.0.0.1:8092): binary frames over WS/WSS.

The SDK connects at path `/` with no subprotocol and sends binary messages that hold the same
256-byte-header frames as TCP (TCP.md 2); it reads replies as a byte stream, so a message may
hold one frame, several, or part of one, in either direction. Here every binary message is
fed to a `FrameReader`, each complete frame goes to `ControlPlane.handle`, and each reply is
sent as one binary message (a poll reply made of several buffers goes out as one fragmented
message, without joining them). Requests of one connection are handled one at a time, in
order; `websockets` stops reading the socket while its incoming queue is full, so a client
that floods requests is held back by TCP.

Server pings are off: the SDK reads only while it waits for a reply, and the binary
protocol has its own heartbeat (PING every 5 s, eviction by `[heartbeat]`).
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from iggy.control.plane import TRANSPORT_WEBSOCKET, ConnectionLimit
from iggy.engine.base import ListenerEngine, spawn
from iggy.protocol.wire import FrameError, FrameReader

if TYPE_CHECKING:
    from websockets.asyncio.server import Server, ServerConnection

    from iggy.control.plane import ControlPlane

log = logging.getLogger(__name__)

_CLOSE_PROTOCOL_ERROR = 1002
_CLOSE_UNSUPPORTED_DATA = 1003
_CLOSE_TRY_AGAIN_LATER = 1013


async def serve_connection(plane: ControlPlane, ws: ServerConnection, max_frame_size: int) -> None:
    """Run one WebSocket connection until it closes."""
    from websockets.exceptions import ConnectionClosed

    peer = ws.remote_address
    address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def close() -> None:  # Session.close: heartbeat eviction, shutdown
        spawn(ws.close(1001, "closed by the server"), f"closing websocket {address}")

    try:
        session = plane.open_session(address, TRANSPORT_WEBSOCKET, close=close)
    except ConnectionLimit:
        await ws.close(_CLOSE_TRY_AGAIN_LATER, "too many connections")
        return
    frames = FrameReader(max_frame_size)
    try:
        async for message in ws:
            if isinstance(message, str):
                log.info("closing websocket %s: text message (the protocol is binary)", address)
                await ws.close(_CLOSE_UNSUPPORTED_DATA, "binary messages only")
                return
            frames.feed(message)
            while True:
                try:
                    frame = frames.next_frame()
                except FrameError as exc:
                    log.info("closing websocket %s: %s", address, exc)
                    await ws.close(_CLOSE_PROTOCOL_ERROR, "invalid frame")
                    return
                if frame is None:
                    break
                header, body = frame
                reply = plane.handle(session, header, body, parts=True)
                if not isinstance(reply, (bytes, list)):
                    reply = await reply
                await ws.send(reply)  # a list is sent as the fragments of one message
    except ConnectionClosed:
        pass
    finally:
        plane.close_session(session)


async def start_websocket(
    plane: ControlPlane, host: str, port: int, max_frame_size: int, ssl_context: ssl.SSLContext | None = None
) -> Server:
    """Bind the listener; returns the `websockets` Server (`.close()`, `.wait_closed()`)."""
    from websockets.asyncio.server import serve

    return await serve(
        lambda ws: serve_connection(plane, ws, max_frame_size),
        host,
        port,
        ssl=ssl_context,
        compression=None,  # the SDK offers none; frames are mostly binary payloads
        ping_interval=None,  # see the module docstring
        max_size=max_frame_size,  # upstream: websocket.max_message_size <= message_bus.max_message_size
        max_queue=16,
        reuse_address=True,
        backlog=1024,
    )


class WebSocketEngine(ListenerEngine):
    """`[websocket]`: the listener (WSS when given an SSL context) and its connections; stop()
    closes them too (1001 going away)."""

    kind = "websocket"

    async def start(self) -> tuple[str, int]:
        self.server = server = await start_websocket(
            self.plane, self.host, self.port, self.max_frame_size, self.ssl_context
        )
        bound = next(iter(server.sockets)).getsockname()
        return bound[0], bound[1]

    def listening(self, bound: tuple[str, int]) -> str:
        tls = " (TLS)" if self.ssl_context else ""
        return f"WebSocket server listening on {bound[0]}:{bound[1]}{tls}"
