"""The raw-frame asyncio client of iggy-bench: one TCP connection per actor, in lockstep.

Frames are the 0.9.0 protocol's (TCP.md 2-3, 8): a 256-byte header + body both ways, one
outstanding request per connection. Replies are received straight into a reusable buffer
(asyncio BufferedProtocol, `recv_into` under uvloop): the body handed back by `roundtrip` is a
memoryview into it, valid until the next request on the same connection. Data-plane frames
come pre-built from `iggy.bench.fastclient`; control-plane requests (login, streams, topics,
groups) are built here with `sdk_request`, they are not on the measured path.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import Any, cast

from iggy.protocol import codes
from iggy.protocol.codes import (
    CONSUMER_GROUP,
    CONSUMER_SINGLE,
    OP_CREATE_CONSUMER_GROUP,
    OP_CREATE_STREAM,
    OP_CREATE_TOPIC,
    OP_DELETE_STREAM,
    OP_JOIN_CONSUMER_GROUP,
    OP_LEAVE_CONSUMER_GROUP,
    OP_READ,
    OP_REGISTER,
    STRATEGY_NEXT,
    STRATEGY_OFFSET,
)
from iggy.protocol.errors import ErrorCode
from iggy.protocol.header import EV_REASON, H_COMMAND, H_SIZE, RP_OPERATION, RP_STATUS
from iggy.protocol.requests import sdk_request
from iggy.protocol.wire import COMMAND_EVICTION, COMMAND_REPLY, PROTOCOL_VERSION
from iggy.protocol.wire import HEADER_SIZE as HEADER

__all__ = [
    "COMMAND_REPLY",
    "CONSUMER_GROUP",
    "CONSUMER_SINGLE",
    "STRATEGY_NEXT",
    "STRATEGY_OFFSET",
    "BenchError",
    "Connection",
    "connect",
]

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_NOT_FOUND = {
    ErrorCode.RESOURCE_NOT_FOUND,
    ErrorCode.STREAM_ID_NOT_FOUND,
    ErrorCode.STREAM_NAME_NOT_FOUND,
    ErrorCode.TOPIC_ID_NOT_FOUND,
    ErrorCode.TOPIC_NAME_NOT_FOUND,
}
_GROUP_NOT_FOUND = {ErrorCode.CONSUMER_GROUP_ID_NOT_FOUND, ErrorCode.CONSUMER_GROUP_NAME_NOT_FOUND}


class BenchError(RuntimeError):
    """A request failed: `code` is the Iggy error code (or the eviction reason + 100000)."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


def wire_name(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


def numeric_id(value: int) -> bytes:
    return b"\x01\x04" + _U32.pack(value)


def name_id(text: str) -> bytes:
    raw = text.encode()
    return b"\x02" + bytes([len(raw)]) + raw


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + _U32.pack(len(value)) + value


def poll_body(consumer_id: int, stream_id: int, topic_id: int, partition_id: int, offset: int, count: int) -> bytes:
    """POLL_MESSAGES as a single consumer by offset, no auto commit (numeric ids): consumer
    [u8 kind 1][id], stream id, topic id, [u8 1][u32 partition], [u8 strategy 1][u64 offset],
    [u32 count], [u8 auto_commit 0]."""
    return (
        bytes([CONSUMER_SINGLE])
        + numeric_id(consumer_id)
        + numeric_id(stream_id)
        + numeric_id(topic_id)
        + b"\x01"
        + _U32.pack(partition_id)
        + bytes([STRATEGY_OFFSET])
        + struct.pack("<QI", offset, count)
        + b"\x00"
    )


class _ReplyProtocol(asyncio.BufferedProtocol):
    """Collects exactly one reply frame per request into a buffer that only grows."""

    def __init__(self) -> None:
        self.buf = bytearray(1 << 16)
        self.view = memoryview(self.buf)
        self.filled = 0
        self.size = 0
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed_exc: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_exc = exc or ConnectionResetError("connection closed by the server")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.closed_exc)

    def _grow(self, capacity: int) -> None:
        # a new buffer (the old one may still be exported through a body view)
        grown = bytearray(capacity)
        grown[: self.filled] = self.view[: self.filled]
        self.buf = grown
        self.view = memoryview(grown)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.filled >= len(self.buf):
            self._grow(len(self.buf) * 2)
        return self.view[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        if not self.size and self.filled >= HEADER:
            self.size = _U32.unpack_from(self.buf, H_SIZE)[0]
            if self.size < HEADER:
                if self.transport is not None:
                    self.transport.close()
                return
            if self.size > len(self.buf):
                self._grow(self.size)
        if self.size and self.filled >= self.size:
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool:
        return False


class Connection:
    """One logged-in (after `login`) TCP connection speaking raw frames."""

    def __init__(self, transport: asyncio.Transport, protocol: _ReplyProtocol):
        self.transport = transport
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.session = 0
        self.request = 0
        self.client_id = int.from_bytes(os.urandom(16), "little") | 1

    @classmethod
    async def open(cls, address: str, nodelay: bool = True) -> Connection:
        host, port = address.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(_ReplyProtocol, host.strip("[]"), int(port))
        sock = transport.get_extra_info("socket")
        if sock is not None and nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(transport, protocol)

    def close(self) -> None:
        self.transport.close()

    # ------------------------------------------------------------------ numbering (TCP.md 3.3)

    def write_request(self) -> int:
        """The number of the next write (logout, metadata and data writes consume one)."""
        self.request += 1
        return self.request

    def read_request(self) -> int:
        """Reads carry the number the next write will use, without consuming it."""
        return self.request + 1

    # ------------------------------------------------------------------ frames

    async def roundtrip(self, data: bytes | bytearray | memoryview) -> tuple[int, int, int, memoryview]:
        """Send one frame, wait for its reply: (command, operation, status, body view)."""
        p = self.protocol
        if p.closed_exc is not None:
            raise p.closed_exc
        p.filled = 0
        p.size = 0
        waiter = p.waiter = self.loop.create_future()
        self.transport.write(data)
        await waiter
        if p.filled != p.size:
            raise BenchError(f"{p.filled - p.size} unexpected bytes after a reply")
        buf = p.buf
        return buf[H_COMMAND], buf[RP_OPERATION], _U32.unpack_from(buf, RP_STATUS)[0], p.view[HEADER : p.size]

    async def call(self, operation: int, code: int = 0, body: bytes = b"") -> bytes:
        """A control-plane request; returns the reply body (result section stripped for
        metadata writes) or raises BenchError."""
        if operation == OP_REGISTER:
            request, session = 0, 0
        elif operation == OP_READ:
            request, session = self.read_request(), self.session
        else:
            request, session = self.write_request(), self.session
        frame = sdk_request(operation, code, body, session, request, self.client_id)
        command, _, status, view = await self.roundtrip(frame)
        if command == COMMAND_EVICTION:
            reason = self.protocol.buf[EV_REASON]
            raise BenchError(f"evicted by the server (reason {reason})", 100000 + reason)
        if status:
            raise BenchError(f"operation {operation}/{code} failed with error {status}", status)
        reply = bytes(view)
        if operation == OP_REGISTER or operation in codes.METADATA_OPS:
            if len(reply) >= 4 and _U32.unpack_from(reply)[0] == 0:
                return reply[4:]
            if len(reply) >= 12:
                error = _U32.unpack_from(reply, 8)[0]
                raise BenchError(f"operation {operation} failed with error {error}", error)
        return reply

    # ------------------------------------------------------------------ control plane

    async def login(self, username: str, password: str) -> None:
        body = (
            _U32.pack(PROTOCOL_VERSION)
            + wire_name("rust-sdk")
            + wire_name("0.11.0")
            + wire_name(username)
            + bytes([len(password.encode())])
            + password.encode()
            + _U32.pack(0)
        )
        reply = await self.call(OP_REGISTER, 0, body)
        self.session = _U64.unpack_from(reply, 4)[0]
        self.request = 0

    async def ping(self) -> None:
        await self.call(OP_READ, codes.PING)

    async def _read_if_found(self, code: int, body: bytes) -> bytes | None:
        """The reply body of a read, None when the thing does not exist (or the body is empty)."""
        try:
            reply = await self.call(OP_READ, code, body)
        except BenchError as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        return reply or None

    async def get_stream(self, name: str) -> dict[str, Any] | None:
        """{id, name, topics_count, messages_count, size_bytes} or None when it does not exist."""
        reply = await self._read_if_found(codes.GET_STREAM, name_id(name))
        if reply is None:
            return None
        sid, _, topics, size, messages = struct.unpack_from("<IQIQQ", reply)
        return {
            "id": sid,
            "name": name,
            "topics_count": topics,
            "size_bytes": size,
            "messages_count": messages,
        }

    async def create_stream(self, name: str) -> int:
        reply = await self.call(OP_CREATE_STREAM, 0, wire_name(name))
        return int(_U32.unpack_from(reply)[0])

    async def delete_stream(self, stream_id: int) -> None:
        await self.call(OP_DELETE_STREAM, 0, numeric_id(stream_id))

    async def create_topic(self, stream_id: int, name: str, partitions: int, durability: str = "replicated") -> int:
        options = (
            tlv(2, b"consumer_offset_durability")
            + tlv(2, b"replicated")
            + tlv(2, b"durability")
            + tlv(2, durability.encode())
        )
        reply = await self.call(
            OP_CREATE_TOPIC, 0, numeric_id(stream_id) + _U32.pack(partitions) + wire_name(name) + options
        )
        return int(_U32.unpack_from(reply)[0])

    async def get_topic(self, stream_id: int, topic: int | str) -> dict[str, Any] | None:
        """{id, partitions: [(id, current_offset, messages_count)]} or None."""
        tid = numeric_id(topic) if isinstance(topic, int) else name_id(topic)
        reply = await self._read_if_found(codes.GET_TOPIC, numeric_id(stream_id) + tid)
        if reply is None:
            return None
        topic_id, _, n_parts = struct.unpack_from("<IQI", reply)
        pos = 49
        pos += 1 + reply[pos]  # name
        for _ in range(2):  # options, derived options
            pos += 4 + _U32.unpack_from(reply, pos)[0]
        parts = []
        for _ in range(n_parts):
            pid, _, _, current, _, count = struct.unpack_from("<IQIQQQ", reply, pos)
            parts.append((pid, current, count))
            pos += 40
        return {"id": topic_id, "partitions": parts}

    async def create_group(self, stream_id: int, topic_id: int, name: str) -> int:
        reply = await self.call(
            OP_CREATE_CONSUMER_GROUP, 0, numeric_id(stream_id) + numeric_id(topic_id) + wire_name(name)
        )
        return int(_U32.unpack_from(reply)[0])

    async def get_group_id(self, stream_id: int, topic_id: int, name: str) -> int | None:
        try:
            reply = await self.call(
                OP_READ, codes.GET_CONSUMER_GROUP, numeric_id(stream_id) + numeric_id(topic_id) + name_id(name)
            )
        except BenchError as exc:
            if exc.code in _NOT_FOUND or exc.code in _GROUP_NOT_FOUND:
                return None
            raise
        return int(_U32.unpack_from(reply)[0]) if len(reply) >= 4 else None

    async def join_group(self, stream_id: int, topic_id: int, group_id: int) -> None:
        await self.call(OP_JOIN_CONSUMER_GROUP, 0, numeric_id(stream_id) + numeric_id(topic_id) + numeric_id(group_id))

    async def leave_group(self, stream_id: int, topic_id: int, group_id: int) -> None:
        await self.call(OP_LEAVE_CONSUMER_GROUP, 0, numeric_id(stream_id) + numeric_id(topic_id) + numeric_id(group_id))

    async def sync_group(self, stream_id: int, topic_id: int, group_id: int) -> list[int]:
        """The partitions this member owns now (empty when it owns none)."""
        reply = await self.call(
            OP_READ, codes.SYNC_CONSUMER_GROUP, numeric_id(stream_id) + numeric_id(topic_id) + numeric_id(group_id)
        )
        if len(reply) < 12:
            return []
        count = _U32.unpack_from(reply, 8)[0]
        return list(struct.unpack_from(f"<{count}I", reply, 12))


async def connect(address: str, username: str, password: str, nodelay: bool = True) -> Connection:
    conn = await Connection.open(address, nodelay)
    try:
        await conn.login(username, password)
    except BaseException:
        conn.close()
        raise
    return conn
