"""A minimal blocking client of the classic protocol (clients before 0.9), for raw tests.

Frames: request `[u32 length][u32 code][payload]` (length = 4 + payload), reply
`[u32 status][u32 length][payload]`. The body builders follow the 0.8 SDK's encoders
(docs/PROTOCOL.md section 11); they are written out here on purpose, not shared with the
server's code, so a test fails when the two disagree.
"""

from __future__ import annotations

import socket
import struct
import time

from tests.rawclient import recv_exact

PING = 1
GET_ME = 20
GET_USER = 31
GET_USERS = 32
CREATE_USER = 33
DELETE_USER = 34
LOGIN_USER = 38
LOGOUT_USER = 39
CREATE_PAT = 42
LOGIN_WITH_PAT = 44
POLL_MESSAGES = 100
SEND_MESSAGES = 101
FLUSH_UNSAVED_BUFFER = 102
GET_CONSUMER_OFFSET = 120
STORE_CONSUMER_OFFSET = 121
DELETE_CONSUMER_OFFSET = 122
GET_STREAM = 200
GET_STREAMS = 201
CREATE_STREAM = 202
DELETE_STREAM = 203
GET_TOPIC = 300
GET_TOPICS = 301
CREATE_TOPIC = 302
UPDATE_TOPIC = 304
GET_CONSUMER_GROUP = 600
CREATE_CONSUMER_GROUP = 602
JOIN_CONSUMER_GROUP = 604
LEAVE_CONSUMER_GROUP = 605

BALANCED, PARTITION_ID, MESSAGES_KEY = 1, 2, 3
OFFSET, TIMESTAMP, FIRST, LAST, NEXT = 1, 2, 3, 4, 5
CONSUMER, GROUP = 1, 2


def frame(code: int, body: bytes = b"") -> bytes:
    return struct.pack("<II", 4 + len(body), code) + body


def ident(x) -> bytes:
    if isinstance(x, int):
        return b"\x01\x04" + struct.pack("<I", x)
    raw = x.encode()
    return bytes([2, len(raw)]) + raw


def name(s: str) -> bytes:
    raw = s.encode()
    return bytes([len(raw)]) + raw


def login_body(username: str, password: str, version: str = "0.10.0") -> bytes:
    pw = password.encode()
    v = version.encode()
    return name(username) + bytes([len(pw)]) + pw + struct.pack("<I", len(v)) + v + struct.pack("<I", 0)


def consumer(kind: int, x) -> bytes:
    return bytes([kind]) + ident(x)


def partitioning(kind: int, value: bytes = b"") -> bytes:
    return bytes([kind, len(value)]) + value


def message(payload: bytes, id_: int = 0, headers: bytes = b"", origin: int | None = None) -> bytes:
    """One classic message: 64-byte header (checksum, offset, timestamp 0 from clients)."""
    if origin is None:
        origin = time.time_ns() // 1000
    return (
        struct.pack("<Q", 0)
        + id_.to_bytes(16, "little")
        + struct.pack("<QQQIIQ", 0, 0, origin, len(headers), len(payload), 0)
        + payload
        + headers
    )


def send_body(stream, topic, part: bytes, messages: list[bytes], count: int | None = None) -> bytes:
    meta = ident(stream) + ident(topic) + part + struct.pack("<I", len(messages) if count is None else count)
    index, total = b"", 0
    for m in messages:
        total += len(m)
        index += struct.pack("<IIQ", 0, total, 0)
    return struct.pack("<I", len(meta)) + meta + index + b"".join(messages)


def poll_body(
    cons: bytes, stream, topic, partition: int | None, strategy: int, value: int, count: int, auto_commit: bool = False
) -> bytes:
    part = struct.pack("<BI", 1, partition) if partition is not None else struct.pack("<BI", 0, 0)
    return (
        cons + ident(stream) + ident(topic) + part + struct.pack("<BQI", strategy, value, count) + bytes([auto_commit])
    )


def offset_body(cons: bytes, stream, topic, partition: int | None, offset: int | None = None) -> bytes:
    part = struct.pack("<BI", 1, partition) if partition is not None else struct.pack("<BI", 0, 0)
    body = cons + ident(stream) + ident(topic) + part
    return body if offset is None else body + struct.pack("<Q", offset)


def create_topic_body(
    stream, name_: str, partitions: int, compression: int = 1, expiry: int = 0, max_size: int = 0, replication: int = 0
) -> bytes:
    return ident(stream) + struct.pack("<IBQQB", partitions, compression, expiry, max_size, replication) + name(name_)


def parse_poll(payload: bytes):
    """(partition_id, current_offset, count, [message dicts]) of a classic poll reply."""
    pid, current, count = struct.unpack_from("<IQI", payload)
    pos, out = 16, []
    while pos < len(payload):
        (checksum,) = struct.unpack_from("<Q", payload, pos)
        id_ = int.from_bytes(payload[pos + 8 : pos + 24], "little")
        offset, ts, origin, hlen, plen, reserved = struct.unpack_from("<QQQIIQ", payload, pos + 24)
        body = payload[pos + 64 : pos + 64 + plen + hlen]
        out.append(
            {
                "checksum": checksum,
                "id": id_,
                "offset": offset,
                "timestamp": ts,
                "origin": origin,
                "payload": body[:plen],
                "headers": body[plen:],
                "reserved": reserved,
                "raw": payload[pos : pos + 64 + plen + hlen],
            }
        )
        pos += 64 + plen + hlen
    return pid, current, count, out


class ClassicClient:
    def __init__(self, address: str, timeout: float = 10.0):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, bytes]:
        status, length = struct.unpack("<II", recv_exact(self.sock, 8))
        return status, recv_exact(self.sock, length) if length else b""

    def request(self, code: int, body: bytes = b"") -> tuple[int, bytes]:
        self.sendall(frame(code, body))
        return self.reply()

    def login(self, username: str = "iggy", password: str = "iggy") -> tuple[int, bytes]:
        return self.request(LOGIN_USER, login_body(username, password))

    def closed(self) -> bool:
        """True when the server has closed the connection (reads EOF, nothing else)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
