"""A blocking TCP client for administration, speaking the Iggy 0.9.0 binary protocol.

Frames are built with the server's own codec (`iggy.protocol.requests.sdk_request`) and the
numbering the official SDK uses (TCP.md 3.3): login is operation 1 with request 0, reads
(operation 2) carry the number the next write will use without consuming it, writes consume
one. Replies of writes start with a result section `[u32 count]`; a refusal arrives either as
a header status, as a result entry `[u32 1][u32 index][u32 code]`, or (for logins) as an
eviction header. Every refusal is raised as `CommandError`.

Every method returns plain data (dicts, lists, ints, strings), ready for a table or JSON.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from iggy.control import permissions as perm
from iggy.metadata.state import Permissions
from iggy.protocol import codes
from iggy.protocol.batch import build_batch, decode_headers, iter_messages, random_id
from iggy.protocol.errors import ErrorCode, IggyError, error_id
from iggy.protocol.requests import sdk_request
from iggy.protocol.wire import COMMAND_EVICTION, PROTOCOL_VERSION, Reader, Writer, parse_reply_header
from iggy.protocol.wire import HEADER_SIZE as HEADER

Ident = int | str  # a stream, topic, user, group or consumer: numeric id or name
_Entry = dict[str, Any]  # one decoded entry of a reply

U64_MAX = 0xFFFFFFFFFFFFFFFF
SDK_NAME = "iggy-cli-py"

# eviction reason (header byte 255) -> the error code it stands for (TCP.md 2.4)
EVICTION_CODES = {
    1: ErrorCode.UNAUTHENTICATED,
    2: ErrorCode.INVALID_COMMAND,
    3: ErrorCode.INVALID_COMMAND,
    4: ErrorCode.INVALID_COMMAND,
    5: ErrorCode.INVALID_COMMAND,
    6: ErrorCode.INVALID_COMMAND,
    7: ErrorCode.UNAUTHENTICATED,
    8: ErrorCode.UNAUTHENTICATED,
    9: ErrorCode.INVALID_CREDENTIALS,
    10: ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN,
    11: ErrorCode.USER_INACTIVE,
    12: ErrorCode.UNAUTHENTICATED,
    13: ErrorCode.STALE_CLIENT,
    14: ErrorCode.INCOMPATIBLE_PROTOCOL_VERSION,
    15: ErrorCode.INVALID_FORMAT,
}

# user header / option value kinds (TCP.md 5.8)
HEADER_KINDS = {
    "raw": 1,
    "string": 2,
    "bool": 3,
    "int8": 4,
    "int16": 5,
    "int32": 6,
    "int64": 7,
    "int128": 8,
    "uint8": 9,
    "uint16": 10,
    "uint32": 11,
    "uint64": 12,
    "uint128": 13,
    "float32": 14,
    "float64": 15,
}
HEADER_KIND_NAMES = {v: k for k, v in HEADER_KINDS.items()}
_INT_KINDS = {
    4: (1, True),
    5: (2, True),
    6: (4, True),
    7: (8, True),
    8: (16, True),
    9: (1, False),
    10: (2, False),
    11: (4, False),
    12: (8, False),
    13: (16, False),
}

TRANSPORTS = {1: "tcp", 2: "quic", 3: "http", 4: "websocket"}
USER_STATUSES = {1: "active", 2: "inactive"}
COMPRESSION = {1: "none", 2: "gzip"}
STRATEGIES = {"offset": 1, "timestamp": 2, "first": 3, "last": 4, "next": 5}
CONSUMER_KINDS = {"consumer": 1, "consumer_group": 2, "consumer-group": 2}


class CommandError(Exception):
    """The server refused a request (or could not be reached)."""

    def __init__(self, code: int, reason: str | None = None):
        self.code = int(code)
        self.id = error_id(self.code)
        self.reason = reason or IggyError(self.code).reason
        super().__init__(f"[{self.code}] {self.reason}")


# --------------------------------------------------------------------------- encoding


def parse_identifier(text: object) -> Ident:
    """A CLI identifier: digits -> numeric id, anything else -> name (as the SDK does)."""
    if isinstance(text, int):
        return text
    text = str(text)
    if text.isascii() and text.isdigit() and int(text) <= 0xFFFFFFFF:
        return int(text)
    return text


def identifier(value: object) -> bytes:
    value = parse_identifier(value)
    if isinstance(value, int):
        return b"\x01\x04" + struct.pack("<I", value)
    raw = value.encode("utf-8")
    if not 0 < len(raw) <= 255:
        raise ValueError(f"an identifier is 1..255 bytes: {value!r}")
    return b"\x02" + bytes([len(raw)]) + raw


def encode_value(kind: int, text: str) -> bytes:
    """A header value of `kind` from its text form (`-H key:kind:value`)."""
    if kind == 1:
        return text.encode("utf-8")
    if kind == 2:
        return text.encode("utf-8")
    if kind == 3:
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise ValueError(f"not a bool: {text!r}")
        return b"\x01" if lowered == "true" else b"\x00"
    if kind in _INT_KINDS:
        size, signed = _INT_KINDS[kind]
        return int(text, 0).to_bytes(size, "little", signed=signed)
    if kind == 14:
        return struct.pack("<f", float(text))
    if kind == 15:
        return struct.pack("<d", float(text))
    raise ValueError(f"unknown header kind {kind}")


def decode_value(kind: int, raw: bytes) -> Any:
    """A header or option value as a JSON-friendly Python value."""
    if kind == 2:
        return raw.decode("utf-8", "replace")
    if kind == 3 and len(raw) == 1:
        return raw != b"\x00"
    if kind in _INT_KINDS and len(raw) == _INT_KINDS[kind][0]:
        return int.from_bytes(raw, "little", signed=_INT_KINDS[kind][1])
    if kind == 14 and len(raw) == 4:
        return struct.unpack("<f", raw)[0]
    if kind == 15 and len(raw) == 8:
        return struct.unpack("<d", raw)[0]
    return raw.hex()


def options_block(pairs: Iterable[tuple[str, int, bytes]]) -> bytes:
    """A request options block (no length prefix): string key, then the value's TLV."""
    out = bytearray()
    for key, kind, value in pairs:
        raw_key = key.encode("utf-8")
        out += bytes([2]) + len(raw_key).to_bytes(4, "little") + raw_key
        out += bytes([kind]) + len(value).to_bytes(4, "little") + value
    return bytes(out)


def encode_headers(headers: Iterable[tuple[str, int, bytes]]) -> bytes:
    """[(key, kind, value bytes)] -> the user-headers TLV block of a message."""
    out = bytearray()
    for key, kind, value in headers:
        raw_key = key.encode("utf-8")
        if not 0 < len(raw_key) <= 255 or not 0 < len(value) <= 255:
            raise ValueError(f"header key and value must be 1..255 bytes: {key!r}")
        out += bytes([2]) + len(raw_key).to_bytes(4, "little") + raw_key
        out += bytes([kind]) + len(value).to_bytes(4, "little") + value
    return bytes(out)


def encode_permissions(perms: Permissions | None) -> bytes:
    """`[u8 has_permissions][u32 length][Permissions]`, or `00` for none."""
    if perms is None:
        return b"\x00"
    raw = perm.encode(perms)
    return b"\x01" + struct.pack("<I", len(raw)) + raw


# --------------------------------------------------------------------------- decoding


def _str32(r: Reader) -> str:
    return r.bytes32().decode("utf-8", "replace")


def _options(r: Reader) -> dict[str, Any]:
    raw = r.bytes32()
    if not raw:
        return {}
    entries = Reader(raw).tlv()
    out = {}
    for i in range(0, len(entries) - 1, 2):
        key = entries[i][1].decode("utf-8", "replace")
        out[key] = decode_value(*entries[i + 1])
    return out


def permissions_to_json(perms: Permissions | None) -> dict[str, Any] | None:
    """The stored permission form -> named flags."""
    if perms is None:
        return None
    return {
        "global": {name: bool(v) for name, v in zip(perm.GLOBAL_FLAGS, perms["global"], strict=True)},
        "streams": {
            str(sid): {
                **{name: bool(v) for name, v in zip(perm.STREAM_FLAGS, sp["flags"], strict=True)},
                "topics": {
                    str(tid): {name: bool(v) for name, v in zip(perm.TOPIC_FLAGS, flags, strict=True)}
                    for tid, flags in sp["topics"].items()
                },
            }
            for sid, sp in perms["streams"].items()
        },
    }


def _f32(r: Reader) -> float:
    value: float = struct.unpack("<f", r.take(4))[0]
    return value


def _user_id(r: Reader) -> int | None:
    user_id = r.u32()
    return None if user_id == 0xFFFFFFFF else user_id  # u32::MAX: not logged in


# How each field kind of a reply record is read.
_FIELD_READERS: dict[str, Callable[[Reader], Any]] = {
    "u8": Reader.u8,
    "u32": Reader.u32,
    "u64": Reader.u64,
    "f32": _f32,
    "name": Reader.name,  # u8 length + UTF-8
    "str32": _str32,  # u32 length + UTF-8
    "options": _options,  # u32 length + TLV pairs
    "user_id": _user_id,
    "compression": lambda r: COMPRESSION.get(r.u8(), "unknown"),
    "user_status": lambda r: USER_STATUSES.get(r.u8(), "unknown"),
    "transport": lambda r: TRANSPORTS.get(r.u8(), "unknown"),
}


def record(layout: str) -> Callable[[Reader], _Entry]:
    """A reader of one reply record laid out as `layout`: "name:kind ..." in wire order.

    Writing each layout as one line of data keeps it next to its byte order in docs/PROTOCOL.md
    and leaves a single loop to read every record of every reply.
    """
    fields = [(name, _FIELD_READERS[kind]) for name, kind in (f.split(":") for f in layout.split())]

    def read(r: Reader) -> _Entry:
        return {name: read_field(r) for name, read_field in fields}

    return read


_stream = record("id:u32 created_at:u64 topics_count:u32 size_bytes:u64 messages_count:u64 name:name options:options")
_topic_header = record(
    "id:u32 created_at:u64 partitions_count:u32 message_expiry:u64 compression_algorithm:compression"
    " max_topic_size:u64 size_bytes:u64 messages_count:u64 name:name options:options derived_options:options"
)
_partition = record("id:u32 created_at:u64 segments_count:u32 current_offset:u64 size_bytes:u64 messages_count:u64")
_user = record("id:u32 created_at:u64 status:user_status username:name options:options")
_group = record("id:u32 partitions_count:u32 members_count:u32 name:name")
_client = record("client_id:u32 user_id:user_id transport:transport address:str32 consumer_groups_count:u32")
_group_membership = record("stream_id:u32 topic_id:u32 group_id:u32")
_cache_metrics = record("stream_id:u32 topic_id:u32 partition_id:u32 hits:u64 misses:u64 hit_ratio:f32")
_consumer_offset = record("partition_id:u32 current_offset:u64 stored_offset:u64")
_sent_batch = record("stream_id:u32 topic_id:u32 partition_id:u32 base_offset:u64")
_stats_head = record(
    "process_id:u32 cpu_usage:f32 total_cpu_usage:f32 memory_usage:u64 total_memory:u64 available_memory:u64"
    " run_time:u64 start_time:u64 read_bytes:u64 written_bytes:u64 messages_size_bytes:u64 streams_count:u32"
    " topics_count:u32 partitions_count:u32 segments_count:u32 messages_count:u64 clients_count:u32"
    " consumer_groups_count:u32 hostname:str32 os_name:str32 os_version:str32 kernel_version:str32"
    " iggy_server_version:str32"
)
_stats_tail = record("threads_count:u32 free_disk_space:u64 total_disk_space:u64")


def _client_details(r: Reader) -> _Entry:
    c = _client(r)
    c["consumer_groups"] = [_group_membership(r) for _ in range(c["consumer_groups_count"])]
    return c


def _message_json(m: dict[str, Any], partition_id: int) -> dict[str, Any]:
    payload = m["payload"]
    out = {
        "offset": m["offset"],
        "id": m["id"],
        "partition_id": partition_id,
        "timestamp": m["timestamp"],
        "origin_timestamp": m["origin_timestamp"],
        "checksum": m["checksum"],
        "length": len(payload),
    }
    try:
        out["payload"], out["payload_encoding"] = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        out["payload"], out["payload_encoding"] = base64.b64encode(payload).decode("ascii"), "base64"
    headers = {}
    for _, key, vkind, value in decode_headers(m["user_headers"]):
        headers[key.decode("utf-8", "replace")] = {
            "kind": HEADER_KIND_NAMES.get(vkind, str(vkind)),
            "value": decode_value(vkind, value),
        }
    out["headers"] = headers
    return out


# --------------------------------------------------------------------------- the client


class AdminClient:
    """One TCP connection, one request at a time."""

    def __init__(
        self,
        address: str,
        *,
        tls: bool = False,
        tls_domain: str | None = None,
        tls_ca_file: str | None = None,
        timeout: float = 30.0,
    ):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"invalid server address {address!r} (expected HOST:PORT)")
        host = host.strip("[]")
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout)
        except OSError as exc:
            raise CommandError(ErrorCode.ERROR, f"cannot connect to {address}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            ctx = ssl.create_default_context(cafile=tls_ca_file)
            sock = ctx.wrap_socket(sock, server_hostname=tls_domain or host)
        self.address = address
        self.sock = sock
        self.session = 0
        self.request = 0
        self.client = int.from_bytes(os.urandom(16), "little") or 1
        self.user_id: int | None = None
        self.server_version: str | None = None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- framing

    def _recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except TimeoutError:
                raise CommandError(ErrorCode.ERROR, "no reply from the server (timeout)") from None
            if not chunk:
                raise CommandError(ErrorCode.DISCONNECTED, "the server closed the connection")
            out += chunk
        return bytes(out)

    def _call(self, operation: int, code: int = 0, body: bytes = b"") -> bytes:
        if operation == codes.OP_REGISTER:
            request, session = 0, 0
        elif operation == codes.OP_READ:
            request, session = self.request + 1, self.session
        else:
            self.request += 1
            request, session = self.request, self.session
        frame = sdk_request(operation, code, body, session, request, self.client)
        self.sock.sendall(frame)
        head = self._recv_exact(HEADER)
        size, command, _operation, status, reason = parse_reply_header(head)
        if command == COMMAND_EVICTION:
            raise CommandError(EVICTION_CODES.get(reason, ErrorCode.UNAUTHENTICATED))
        payload = self._recv_exact(size - HEADER) if size > HEADER else b""
        if status:
            raise CommandError(status)
        if operation in codes.RESULT_FRAMED_OPS or (operation == codes.OP_REGISTER and payload):
            if len(payload) < 4:
                raise CommandError(ErrorCode.INVALID_COMMAND, "malformed reply from the server")
            count = struct.unpack_from("<I", payload)[0]
            if count:
                failed = struct.unpack_from("<I", payload, 8)[0] if len(payload) >= 12 else ErrorCode.ERROR
                raise CommandError(failed)
            payload = payload[4:]
        return payload

    def read(self, code: int, body: bytes = b"") -> bytes:
        return self._call(codes.OP_READ, code, body)

    def write(self, code: int, body: bytes = b"") -> bytes:
        return self._call(codes.CODE_OPERATIONS[code], 0, body)

    def _read_all(self, code: int, decode: Callable[[Reader], _Entry], body: bytes = b"") -> list[_Entry]:
        """A list reply: entries decoded one after the other until the body is used up."""
        r = Reader(self.read(code, body))
        out = []
        while r.remaining():
            out.append(decode(r))
        return out

    def _read_found(self, code: int, body: bytes) -> Reader | None:
        """The reply of a lookup by id: None when it is empty (nothing found)."""
        raw = self.read(code, body)
        return Reader(raw) if raw else None

    # ----------------------------------------------------------------- session

    def _version_prefix(self) -> bytes:
        from iggy import __version__

        return Writer().u32(PROTOCOL_VERSION).name(SDK_NAME).name(__version__).getvalue()

    def _register(self, body: bytes) -> dict[str, Any]:
        reply = Reader(self._call(codes.OP_REGISTER, 0, body))
        self.user_id = reply.u32()
        self.session = reply.u64()
        reply.u32()
        self.server_version = reply.name() if reply.remaining() else None
        self.request = 0
        return {"user_id": self.user_id, "server_version": self.server_version}

    def login(self, username: str, password: str) -> dict[str, Any]:
        raw = password.encode("utf-8")
        if len(raw) > 255:
            raise CommandError(ErrorCode.INVALID_PASSWORD)
        body = self._version_prefix() + Writer().name(username).bytes8(raw).u32(0).getvalue()
        return self._register(body)

    def login_with_token(self, token: str) -> dict[str, Any]:
        raw = token.encode("utf-8")
        if len(raw) > 255:
            raise CommandError(ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN)
        return self._register(self._version_prefix() + Writer().bytes8(raw).u32(0).getvalue())

    def logout(self) -> None:
        self._call(codes.OP_LOGOUT)
        self.session = 0

    # ----------------------------------------------------------------- system

    def ping(self) -> float:
        """Round trip of one PING, in milliseconds."""
        start = time.perf_counter()
        self.read(codes.PING)
        return (time.perf_counter() - start) * 1000.0

    def me(self) -> dict[str, Any]:
        return _client_details(Reader(self.read(codes.GET_ME)))

    def get_clients(self) -> list[dict[str, Any]]:
        return self._read_all(codes.GET_CLIENTS, _client)

    def get_client(self, client_id: int) -> dict[str, Any] | None:
        r = self._read_found(codes.GET_CLIENT, struct.pack("<I", client_id))
        return None if r is None else _client_details(r)

    def stats(self) -> dict[str, Any]:
        r = Reader(self.read(codes.GET_STATS))
        s = _stats_head(r)
        s["iggy_server_semver"] = r.u32() or None
        s["cache_metrics"] = [_cache_metrics(r) for _ in range(r.u32())]
        s.update(_stats_tail(r))
        return s

    def describe_options(self, scope: str) -> list[dict[str, Any]]:
        scopes = {"topic": 1, "stream": 2, "user": 3}
        r = Reader(self.read(codes.DESCRIBE_OPTIONS, bytes([scopes[scope]])))
        out = []
        for _ in range(r.u32()):
            key = r.name()
            kind = r.u8()
            default = r.bytes32()
            out.append(
                {
                    "key": key,
                    "kind": HEADER_KIND_NAMES.get(kind, str(kind)),
                    "default": decode_value(kind, default),
                    "description": _str32(r),
                }
            )
        return out

    # ----------------------------------------------------------------- streams

    def get_streams(self) -> list[dict[str, Any]]:
        return self._read_all(codes.GET_STREAMS, _stream)

    def get_stream(self, stream: Ident) -> dict[str, Any] | None:
        r = self._read_found(codes.GET_STREAM, identifier(stream))
        if r is None:
            return None
        s = _stream(r)
        s["topics"] = [_topic_header(r) for _ in range(s["topics_count"])]
        return s

    def create_stream(self, name: str) -> dict[str, Any]:
        r = Reader(self.write(codes.CREATE_STREAM, Writer().name(name).getvalue()))
        s = _stream(r)
        s["topics"] = [_topic_header(r) for _ in range(s["topics_count"])]
        return s

    def update_stream(self, stream: Ident, name: str) -> None:
        self.write(codes.UPDATE_STREAM, identifier(stream) + Writer().name(name).getvalue())

    def delete_stream(self, stream: Ident) -> None:
        self.write(codes.DELETE_STREAM, identifier(stream))

    def purge_stream(self, stream: Ident) -> None:
        self.write(codes.PURGE_STREAM, identifier(stream))

    # ----------------------------------------------------------------- topics

    def get_topics(self, stream: Ident) -> list[dict[str, Any]]:
        r = Reader(self.read(codes.GET_TOPICS, identifier(stream)))
        if not r.remaining():
            return []
        return [_topic_header(r) for _ in range(r.u32())]

    def get_topic(self, stream: Ident, topic: Ident) -> dict[str, Any] | None:
        r = self._read_found(codes.GET_TOPIC, identifier(stream) + identifier(topic))
        if r is None:
            return None
        t = _topic_header(r)
        t["partitions"] = [_partition(r) for _ in range(t["partitions_count"])]
        return t

    def create_topic(
        self, stream: Ident, name: str, partitions_count: int, options: Sequence[tuple[str, int, bytes]] = ()
    ) -> dict[str, Any]:
        body = identifier(stream) + struct.pack("<I", partitions_count) + Writer().name(name).getvalue()
        r = Reader(self.write(codes.CREATE_TOPIC, body + options_block(options)))
        t = _topic_header(r)
        t["partitions"] = [_partition(r) for _ in range(t["partitions_count"])]
        return t

    def update_topic(
        self, stream: Ident, topic: Ident, name: str, options: Sequence[tuple[str, int, bytes]] = ()
    ) -> None:
        body = identifier(stream) + identifier(topic) + Writer().name(name).getvalue()
        self.write(codes.UPDATE_TOPIC, body + options_block(options))

    def delete_topic(self, stream: Ident, topic: Ident) -> None:
        self.write(codes.DELETE_TOPIC, identifier(stream) + identifier(topic))

    def purge_topic(self, stream: Ident, topic: Ident) -> None:
        self.write(codes.PURGE_TOPIC, identifier(stream) + identifier(topic))

    # ----------------------------------------------------------------- partitions, segments

    def create_partitions(self, stream: Ident, topic: Ident, count: int) -> None:
        self.write(codes.CREATE_PARTITIONS, identifier(stream) + identifier(topic) + struct.pack("<I", count))

    def delete_partitions(self, stream: Ident, topic: Ident, count: int) -> None:
        self.write(codes.DELETE_PARTITIONS, identifier(stream) + identifier(topic) + struct.pack("<I", count))

    def delete_segments(self, stream: Ident, topic: Ident, partition_id: int, count: int) -> None:
        self.write(
            codes.DELETE_SEGMENTS, identifier(stream) + identifier(topic) + struct.pack("<II", partition_id, count)
        )

    # ----------------------------------------------------------------- users

    def get_users(self) -> list[dict[str, Any]]:
        return self._read_all(codes.GET_USERS, _user)

    def _user_details(self, raw: bytes) -> dict[str, Any]:
        r = Reader(raw)
        u = _user(r)
        u["permissions"] = None
        if r.remaining() and r.u8():
            u["permissions"] = permissions_to_json(perm.decode(Reader(r.bytes32())))
        return u

    def get_user(self, user: Ident) -> dict[str, Any] | None:
        raw = self.read(codes.GET_USER, identifier(user))
        return self._user_details(raw) if raw else None

    def create_user(
        self, username: str, password: str, status: str = "active", permissions: Permissions | None = None
    ) -> dict[str, Any]:
        w = Writer().name(username).bytes8(password.encode("utf-8")).u8(1 if status == "active" else 2)
        return self._user_details(self.write(codes.CREATE_USER, w.getvalue() + encode_permissions(permissions)))

    def update_user(self, user: Ident, username: str | None = None, status: str | None = None) -> None:
        w = Writer().raw(identifier(user))
        if username is None:
            w.u8(0)
        else:
            w.u8(1).name(username)
        if status is None:
            w.u8(0)
        else:
            w.u8(1).u8(1 if status == "active" else 2)
        self.write(codes.UPDATE_USER, w.getvalue())

    def update_permissions(self, user: Ident, permissions: Permissions | None) -> None:
        self.write(codes.UPDATE_PERMISSIONS, identifier(user) + encode_permissions(permissions))

    def change_password(self, user: Ident, current: str, new: str) -> None:
        w = Writer().raw(identifier(user)).bytes8(current.encode("utf-8")).bytes8(new.encode("utf-8"))
        self.write(codes.CHANGE_PASSWORD, w.getvalue())

    def delete_user(self, user: Ident) -> None:
        self.write(codes.DELETE_USER, identifier(user))

    # ----------------------------------------------------------------- personal access tokens

    def get_tokens(self) -> list[dict[str, Any]]:
        r = Reader(self.read(codes.GET_PERSONAL_ACCESS_TOKENS))
        out = []
        while r.remaining():
            name = r.name()
            expiry = r.u64()
            out.append({"name": name, "expiry_at": expiry or None})
        return out

    def create_token(self, name: str, expiry_us: int = 0) -> str:
        r = Reader(self.write(codes.CREATE_PERSONAL_ACCESS_TOKEN, Writer().name(name).u64(expiry_us).getvalue()))
        return r.name()

    def delete_token(self, name: str) -> None:
        self.write(codes.DELETE_PERSONAL_ACCESS_TOKEN, Writer().name(name).getvalue())

    # ----------------------------------------------------------------- consumer groups

    def get_consumer_groups(self, stream: Ident, topic: Ident) -> list[dict[str, Any]]:
        return self._read_all(codes.GET_CONSUMER_GROUPS, _group, identifier(stream) + identifier(topic))

    def _group_details(self, raw: bytes) -> dict[str, Any]:
        r = Reader(raw)
        g = _group(r)
        g["members"] = []
        for _ in range(g["members_count"]):
            member_id, count = r.u32(), r.u32()
            g["members"].append(
                {"id": member_id, "partitions_count": count, "partitions": [r.u32() for _ in range(count)]}
            )
        return g

    def get_consumer_group(self, stream: Ident, topic: Ident, group: Ident) -> dict[str, Any] | None:
        raw = self.read(codes.GET_CONSUMER_GROUP, identifier(stream) + identifier(topic) + identifier(group))
        return self._group_details(raw) if raw else None

    def create_consumer_group(self, stream: Ident, topic: Ident, name: str) -> dict[str, Any]:
        body = identifier(stream) + identifier(topic) + Writer().name(name).getvalue()
        return self._group_details(self.write(codes.CREATE_CONSUMER_GROUP, body))

    def delete_consumer_group(self, stream: Ident, topic: Ident, group: Ident) -> None:
        self.write(codes.DELETE_CONSUMER_GROUP, identifier(stream) + identifier(topic) + identifier(group))

    # ----------------------------------------------------------------- consumer offsets

    @staticmethod
    def _offset_target(kind: str, consumer: Ident, stream: Ident, topic: Ident, partition_id: int | None) -> bytes:
        return (
            bytes([CONSUMER_KINDS[kind]])
            + identifier(consumer)
            + identifier(stream)
            + identifier(topic)
            + (b"\x00\x00\x00\x00\x00" if partition_id is None else b"\x01" + struct.pack("<I", partition_id))
        )

    def get_consumer_offset(
        self, consumer: Ident, stream: Ident, topic: Ident, partition_id: int | None, kind: str = "consumer"
    ) -> dict[str, Any] | None:
        target = self._offset_target(kind, consumer, stream, topic, partition_id)
        r = self._read_found(codes.GET_CONSUMER_OFFSET, target)
        if r is None:
            return None
        return _consumer_offset(r)

    def store_consumer_offset(
        self,
        consumer: Ident,
        stream: Ident,
        topic: Ident,
        partition_id: int | None,
        offset: int,
        kind: str = "consumer",
    ) -> None:
        body = self._offset_target(kind, consumer, stream, topic, partition_id) + struct.pack("<QB", offset, 1)
        self.write(codes.STORE_CONSUMER_OFFSET, body)

    # ----------------------------------------------------------------- messages

    def send_messages(
        self,
        stream: Ident,
        topic: Ident,
        messages: Sequence[tuple[bytes, bytes]],
        *,
        partition_id: int | None = None,
        key: bytes | None = None,
    ) -> list[dict[str, Any]]:
        """`messages`: [(payload bytes, headers TLV bytes)]; the partition by id, by key or balanced."""
        if partition_id is not None:
            partitioning = b"\x02\x04" + struct.pack("<I", partition_id)
        elif key is not None:
            if not 0 < len(key) <= 255:
                raise ValueError("a message key is 1..255 bytes")
            partitioning = b"\x03" + bytes([len(key)]) + key
        else:
            partitioning = b"\x01\x00"
        metadata = identifier(stream) + identifier(topic) + partitioning + struct.pack("<I", len(messages))
        batch = build_batch([(random_id(), payload, headers) for payload, headers in messages])
        raw = self.write(codes.SEND_MESSAGES, struct.pack("<I", len(metadata)) + metadata + batch)
        if len(raw) < 4:
            return []
        r = Reader(raw)
        return [_sent_batch(r) for _ in range(r.u32())]

    def poll_messages(
        self,
        stream: Ident,
        topic: Ident,
        partition_id: int | None,
        *,
        strategy: str = "next",
        value: int = 0,
        count: int = 1,
        consumer: Ident = "0",
        consumer_kind: str = "consumer",
        auto_commit: bool = False,
    ) -> dict[str, Any]:
        body = (
            bytes([CONSUMER_KINDS[consumer_kind]])
            + identifier(consumer)
            + identifier(stream)
            + identifier(topic)
            + (b"\x00\x00\x00\x00\x00" if partition_id is None else b"\x01" + struct.pack("<I", partition_id))
            + struct.pack("<BQIB", STRATEGIES[strategy], value, count, 1 if auto_commit else 0)
        )
        raw = self.read(codes.POLL_MESSAGES, body)
        if len(raw) < 16:
            return {"partition_id": partition_id, "current_offset": None, "count": 0, "messages": []}
        pid, current, n = struct.unpack_from("<IQI", raw)
        messages = [_message_json(m, pid) for m in iter_messages(raw[16:])]
        return {"partition_id": pid, "current_offset": current, "count": n, "messages": messages}
