"""A minimal blocking client that speaks frames over a plain socket, for raw-protocol tests.

It builds requests with the same Cython codec the server uses (`iggy.protocol.requests.sdk_request`), and hands
back `(status, operation, body)` of each reply, or the eviction reason.
"""

from __future__ import annotations

import socket
import struct
import time

from iggy._core.checksum import xxh3_64
from iggy.protocol import codes
from iggy.protocol.codes import OP_READ, OP_REGISTER
from iggy.protocol.requests import sdk_request
from iggy.protocol.wire import COMMAND_EVICTION, COMMAND_REPLY, HEADER_SIZE, parse_reply_header


class Reply:
    def __init__(self, command: int, operation: int, status: int, body: bytes, reason: int):
        self.command = command
        self.operation = operation
        self.status = status
        self.body = body
        self.eviction_reason = reason if command == COMMAND_EVICTION else None

    @property
    def result_code(self) -> int | None:
        """The error code of a result-framed write reply, 0 on success."""
        if len(self.body) >= 4 and struct.unpack_from("<I", self.body)[0] == 0:
            return 0
        if len(self.body) >= 12:
            return struct.unpack_from("<I", self.body, 8)[0]
        return None

    @property
    def code(self) -> int:
        """Whichever channel carried the outcome: status first, then result section."""
        if self.status:
            return self.status
        if self.operation in codes.RESULT_FRAMED_OPS:
            return self.result_code
        return 0

    def __repr__(self):
        return (
            f"Reply(command={self.command}, op={self.operation}, status={self.status}, "
            f"body={self.body[:32]!r}, evict={self.eviction_reason})"
        )


def login_body(username: str, password: str, version: int = 0x2C00) -> bytes:
    def wname(s: bytes) -> bytes:
        return bytes([len(s)]) + s

    return (
        struct.pack("<I", version)
        + wname(b"rust-sdk")
        + wname(b"0.11.0")
        + wname(username.encode())
        + wname(password.encode())
        + struct.pack("<I", 0)
    )


def pat_login_body(token: str) -> bytes:
    def wname(s: bytes) -> bytes:
        return bytes([len(s)]) + s

    return struct.pack("<I", 0x2C00) + wname(b"rust-sdk") + wname(b"0.11.0") + wname(token.encode()) + b"\0\0\0\0"


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes from `sock` (ConnectionError when the server closes it first)."""
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"connection closed by the server after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True if the server ends the connection within `timeout` (EOF or reset), reading any reply."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


class RawClient:
    def __init__(self, address: str, timeout: float = 10.0, source: str | None = None):
        """`source`: the local IP to connect from (any 127.x.y.z reaches a loopback server)."""
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection(
            (host, int(port)), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.session = 0
        self.request = 0
        self.client = 0x1234_5678_9ABC_DEF0_1122_3344_5566_7788

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        return recv_exact(self.sock, n)

    def read_reply(self) -> Reply:
        head = self.recv_exact(HEADER_SIZE)
        size, command, operation, status, reason = parse_reply_header(head)
        body = self.recv_exact(size - HEADER_SIZE)
        return Reply(command, operation, status, body, reason)

    def call(self, operation: int, code: int = 0, body: bytes = b"") -> Reply:
        """Send one request with the numbering the SDK uses and read its reply."""
        if operation == OP_REGISTER:
            request, session = 0, 0
        elif operation == OP_READ:
            request, session = self.request + 1, self.session
        else:
            self.request += 1
            request, session = self.request, self.session
        frame = sdk_request(operation, code, body, session, request, self.client)
        self.send_raw(frame)
        return self.read_reply()

    def read(self, code: int, body: bytes = b"") -> Reply:
        return self.call(OP_READ, code, body)

    def login(self, username: str = "iggy", password: str = "iggy") -> Reply:
        reply = self.call(OP_REGISTER, 0, login_body(username, password))
        if reply.command == COMMAND_REPLY and reply.status == 0:
            self.session = struct.unpack_from("<Q", reply.body, 8)[0]
            self.request = 0
        return reply

    def login_token(self, token: str) -> Reply:
        reply = self.call(OP_REGISTER, 0, pat_login_body(token))
        if reply.command == COMMAND_REPLY and reply.status == 0:
            self.session = struct.unpack_from("<Q", reply.body, 8)[0]
            self.request = 0
        return reply


def ident(value) -> bytes:
    """Identifier encoding: int -> numeric, str -> name."""
    if isinstance(value, int):
        return b"\x01\x04" + struct.pack("<I", value)
    raw = value.encode()
    return b"\x02" + bytes([len(raw)]) + raw


def wire_name(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


def topic_option(key: str, kind: int, value: bytes) -> bytes:
    """One entry of CREATE_TOPIC's options block: the key (TLV kind 2, a string), then the
    value as a TLV of `kind` (e.g. 12 for a u64)."""
    k = key.encode()
    return b"\x02" + struct.pack("<I", len(k)) + k + bytes([kind]) + struct.pack("<I", len(value)) + value


def consumer_target(stream, topic, partition: int | None = 0, consumer=1, kind: int = 1) -> bytes:
    """The start of the poll and consumer-offset bodies (TCP.md 8.5): consumer (kind u8, 1 a
    consumer, 2 a group; identifier), stream and topic identifiers, u8 has_partition and u32
    partition id (0 when there is none)."""
    has = partition is not None
    return bytes([kind]) + ident(consumer) + ident(stream) + ident(topic) + struct.pack("<?I", has, partition or 0)


def poll_body(
    stream,
    topic,
    partition: int | None = 0,
    *,
    strategy: int = 1,
    value: int = 0,
    count: int = 10,
    auto_commit: bool = False,
    consumer=1,
    kind: int = 1,
) -> bytes:
    """POLL_MESSAGES (100): the consumer target, the strategy (kind u8, 1 offset ... 5 next;
    value u64), u32 count, u8 auto_commit."""
    return consumer_target(stream, topic, partition, consumer, kind) + struct.pack(
        "<BQI?", strategy, value, count, auto_commit
    )


def store_offset_body(stream, topic, partition: int | None, offset: int, consumer=1, kind: int = 1) -> bytes:
    """STORE_CONSUMER_OFFSET (121): the consumer target, u64 offset, u8 ack (1)."""
    return consumer_target(stream, topic, partition, consumer, kind) + struct.pack("<QB", offset, 1)


__all__ = [
    "RawClient",
    "Reply",
    "consumer_target",
    "ident",
    "login_body",
    "pat_login_body",
    "poll_body",
    "store_offset_body",
    "wire_name",
    "xxh3_64",
]
