"""Messages in JSON: the send body in, the poll reply out (HTTP.md 6).

Payloads travel as standard base64. User headers travel either as a list of
``{"key": {"kind": K, "value": b64}, "value": {"kind": K, "value": b64}}`` entries or as one
base64 string of the encoded block; on the wire and on disk they are the TLV block of
TCP.md 5.8, repeated per header::

    [u8 key kind][u32 LE key length][key bytes][u8 value kind][u32 LE value length][value bytes]

with kinds 1 raw, 2 string, 3 bool, 4..8 int8..int128, 9..13 uint8..uint128, 14 float32,
15 float64 (numbers little-endian), each key and value 1..255 bytes, the block at most
100,000 bytes. A message id of 0 or none gets a random UUID v4 (as u128), as the reference
server's HTTP handler does. These functions are pure and run on the HTTP thread; building
and reading batches is the Cython core's job (`iggy.protocol.batch`).
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from iggy.http.errors import Unprocessable
from iggy.http.views import KIND_NAMES
from iggy.protocol.errors import ErrorCode, IggyError

if TYPE_CHECKING:
    from iggy.http.schemas import HeaderEntry, SendMessages

KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
# fixed value sizes per kind (raw and string have any size)
KIND_SIZES = {3: 1, 4: 1, 5: 2, 6: 4, 7: 8, 8: 16, 9: 1, 10: 2, 11: 4, 12: 8, 13: 16, 14: 4, 15: 8}
MAX_HEADERS_BYTES = 100_000
MAX_PAYLOAD_BYTES = 64_000_000
U128_MAX = (1 << 128) - 1

PARTITION_KINDS = {"balanced": 1, "partition_id": 2, "messages_key": 3}


def b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Unprocessable(f"{what}: invalid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def message_id(value: int | str | None) -> int:
    """A JSON id (number, decimal string or UUID hex) as u128; 0 or none -> random UUID v4."""
    if value is None:
        return uuid.uuid4().int
    if isinstance(value, int):
        ident = value
    else:
        text = value.strip()
        try:
            ident = int(text) if text.isdigit() else uuid.UUID(text).int
        except ValueError:
            raise Unprocessable(f"invalid message id {value!r}") from None
        if ident > U128_MAX:
            raise Unprocessable(f"message id {value!r} does not fit in 128 bits")
    return ident or uuid.uuid4().int


def _check_field(kind: int, data: bytes, error: ErrorCode) -> None:
    if kind not in KIND_NAMES:
        raise IggyError(ErrorCode.INVALID_HEADER_KIND)
    if not 1 <= len(data) <= 255:
        raise IggyError(error)
    size = KIND_SIZES.get(kind)
    if size is not None and len(data) != size:
        raise IggyError(error)


def encode_headers(entries: Iterable[HeaderEntry]) -> bytes:
    """The TLV block of a list of schemas.HeaderEntry (or b"" for none)."""
    out = bytearray()
    for entry in entries:
        for fld, error in ((entry.key, ErrorCode.INVALID_HEADER_KEY), (entry.value, ErrorCode.INVALID_HEADER_VALUE)):
            kind = KIND_CODES[fld.kind]
            data = b64decode(fld.value, "user header")
            _check_field(kind, data, error)
            out += struct.pack("<BI", kind, len(data)) + data
    if len(out) > MAX_HEADERS_BYTES:
        raise IggyError(ErrorCode.TOO_BIG_USER_HEADERS)
    return bytes(out)


def parse_headers(block: bytes) -> list[tuple[int, bytes]]:
    """TLV fields of a header block; ValueError if the block is malformed."""
    fields: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(block):
        if pos + 5 > len(block):
            raise ValueError("truncated header field")
        kind, n = struct.unpack_from("<BI", block, pos)
        pos += 5
        if pos + n > len(block):
            raise ValueError("truncated header value")
        fields.append((kind, bytes(block[pos : pos + n])))
        pos += n
    if len(fields) % 2:
        raise ValueError("a header key without a value")
    return fields


def headers_block(value: list[HeaderEntry] | str | None) -> bytes:
    """user_headers of a send body (list, base64 string or None) as a validated TLV block."""
    if value is None:
        return b""
    if isinstance(value, str):
        block = b64decode(value, "user_headers")
        if len(block) > MAX_HEADERS_BYTES:
            raise IggyError(ErrorCode.TOO_BIG_USER_HEADERS)
        try:
            fields = parse_headers(block)
        except ValueError:
            raise IggyError(ErrorCode.INVALID_HEADER_KEY) from None
        for i, (kind, data) in enumerate(fields):
            _check_field(kind, data, ErrorCode.INVALID_HEADER_VALUE if i % 2 else ErrorCode.INVALID_HEADER_KEY)
        return block
    return encode_headers(value)


def headers_json(block: bytes) -> list[dict[str, Any]] | str:
    """A stored header block as JSON entries; an unparsable block as a base64 string."""
    if not block:
        return []
    try:
        fields = parse_headers(block)
    except ValueError:
        return b64(block)
    out = []
    for i in range(0, len(fields), 2):
        (kk, kv), (vk, vv) = fields[i], fields[i + 1]
        if kk not in KIND_NAMES or vk not in KIND_NAMES:
            return b64(block)
        out.append(
            {"key": {"kind": KIND_NAMES[kk], "value": b64(kv)}, "value": {"kind": KIND_NAMES[vk], "value": b64(vv)}}
        )
    return out


def batch_input(body: SendMessages) -> list[tuple[int, bytes, bytes]]:
    """(id, payload, user headers block) per message of a schemas.SendMessages body."""
    if not body.messages:
        raise IggyError(ErrorCode.INVALID_MESSAGES_COUNT)
    out = []
    for m in body.messages:
        payload = b64decode(m.payload, "payload")
        if not payload:
            raise Unprocessable("payload: a message payload can't be empty")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise IggyError(ErrorCode.TOO_BIG_MESSAGE_PAYLOAD)
        out.append((message_id(m.id), payload, headers_block(m.user_headers)))
    return out


def partitioning(body: SendMessages) -> tuple[int, bytes]:
    """(partitioning kind code, value bytes) of a send body; value length checked as upstream."""
    kind = PARTITION_KINDS[body.partitioning.kind]
    value = b64decode(body.partitioning.value, "partitioning.value") if body.partitioning.value else b""
    if len(value) > 255 or (kind != 1 and not value):
        raise IggyError(ErrorCode.INVALID_KEY_VALUE_LENGTH)
    return kind, value


# A poll reply in JSON stays within about the largest frame, as a TCP reply does. It is
# bounded before anything is read, by caps on the messages and on the batch bytes read:
# a message's JSON is at most ~300 bytes of fields (20-digit numbers, a 39-digit id) plus its
# payload in base64 (4/3 of it) plus its user headers (up to ~7 times their TLV bytes when
# every field is one byte; ~1.4 times for ordinary ones). With at most limit / JSON_MESSAGE_SHARE
# messages and limit * 5 / 8 batch bytes: 300 * limit / 2048 + 4/3 * 5/8 * limit ~= 0.98 * limit.
JSON_MESSAGE_SHARE = 2048


def poll_caps(limit: int, count: int) -> tuple[int, int]:
    """(count, max batch bytes) for an HTTP poll whose JSON must stay within `limit` bytes.
    (A first batch larger than the byte cap is still served, cut to the count, as over TCP.)"""
    return max(1, min(count, limit // JSON_MESSAGE_SHARE)), max(1, limit * 5 // 8)


def polled_json(partition_id: int, current_offset: int, messages: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The PolledMessages object from the dicts `iggy.protocol.batch.iter_messages` yields."""
    out = []
    for m in messages:
        payload, headers = m["payload"], m["user_headers"]
        out.append(
            {
                "header": {
                    "checksum": m["checksum"],
                    "id": m["id"],
                    "offset": m["offset"],
                    "timestamp": m["timestamp"],
                    "origin_timestamp": m["origin_timestamp"],
                    "user_headers_length": len(headers),
                    "payload_length": len(payload),
                    "reserved": 0,
                },
                "payload": b64(payload),
                "user_headers": headers_json(headers),
            }
        )
    return {"partition_id": partition_id, "current_offset": current_offset, "count": len(out), "messages": out}
