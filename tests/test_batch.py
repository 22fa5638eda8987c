"""iggy.protocol.batch: validation, stamping and checksums of SEND_MESSAGES batches (TCP.md 8)."""

from __future__ import annotations

import struct

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from iggy.protocol.batch import (
    BATCH_HEADER_SIZE,
    FRAME_HEADER_SIZE,
    build_batch,
    compute_batch_checksum,
    decode_headers,
    encode_headers,
    iter_messages,
    stamp_batch,
    validate_batch,
)
from iggy.protocol.errors import ErrorCode, IggyError

# --------------------------------------------------------------------------- the TCP.md A.7 capture


def _hex(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", "").replace("\n", ""))


A7_METADATA = _hex("12 00 00 00  02 02 73 31  02 02 74 31  02 04 01 00 00 00  02 00 00 00")
A7_BATCH = (
    _hex("00 00 00 00 00 00 00 00")  # partition_id 0
    + _hex("00 00 00 00 00 00 00 00")  # base_offset 0
    + _hex("00 00 00 00 00 00 00 00")  # base_timestamp 0
    + _hex("b3 8f dd 7d 31 61 06 00")  # origin_timestamp
    + _hex("92 01 00 00 00 00 00 00")  # batch_length 402
    + _hex("ed ad d0 dc 51 14 7a bc")  # batch_checksum
    + _hex("02 00 00 00")  # message_count 2
    + bytes(204)  # reserved
    # frame 0
    + _hex("48 28 57 03 78 bd aa c9")
    + _hex("d9 57 ad f8 2b 73 43 8c 8a d8 93 f7 38 df f0 bd")
    + _hex("00 00 00 00  00 00 00 00  00 00 00 00  05 00 00 00")
    + bytes(8)
    + b"hello"
    # frame 1
    + _hex("06 f7 22 4c 46 14 ec 17")
    + _hex("2a 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00")
    + _hex("01 00 00 00  4b 01 00 00  26 00 00 00  07 00 00 00")
    + bytes(8)
    + _hex("01 02 77 6f 72 6c 64")
    + _hex("02 01 00 00 00 62  03 01 00 00 00 01")
    + _hex("02 02 00 00 00 6b 31  02 02 00 00 00 76 31")
    + _hex("02 01 00 00 00 6e  09 01 00 00 00 07")
)
A7_BODY = A7_METADATA + A7_BATCH


def test_a7_capture_is_accepted_byte_for_byte():
    assert len(A7_BATCH) == 402 and len(A7_BODY) == 424
    start = len(A7_METADATA)
    assert start == 0x16
    assert validate_batch(A7_BODY, start, len(A7_BODY), 2) == (2, 402, 12)
    assert validate_batch(A7_BATCH, 0, len(A7_BATCH), 2) == (2, 402, 12)
    # the checksums recompute exactly (independent implementation: the xxhash package)
    assert compute_batch_checksum(A7_BATCH) == 0xBC7A1451DCD0ADED
    assert xxhash.xxh3_64_intdigest(A7_BATCH[256 + 8 : 256 + 53]) == 0xC9AABD7803572848


def test_a7_capture_decodes():
    msgs = list(iter_messages(A7_BATCH))
    assert [m["offset"] for m in msgs] == [0, 1]
    assert msgs[0]["payload"] == b"hello" and msgs[0]["user_headers"] == b""
    assert msgs[1]["id"] == 42
    assert msgs[1]["payload"] == b"\x01\x02world"
    assert msgs[1]["origin_timestamp"] == msgs[0]["origin_timestamp"] + 331
    assert decode_headers(msgs[1]["user_headers"]) == [
        (2, b"b", 3, b"\x01"),
        (2, b"k1", 2, b"v1"),
        (2, b"n", 9, b"\x07"),
    ]


def test_a7_capture_rebuilt_by_build_batch():
    msgs = list(iter_messages(A7_BATCH))
    origin = msgs[0]["origin_timestamp"]
    rebuilt = build_batch(
        [(m["id"], m["payload"], m["user_headers"], m["origin_timestamp"] - origin) for m in msgs],
        origin_timestamp=origin,
    )
    assert rebuilt == A7_BATCH


# --------------------------------------------------------------------------- helpers


def _batch(n=3, size=10, headers=b"") -> bytearray:
    return bytearray(
        build_batch(
            [(i + 1, bytes([65 + i % 26]) * size, headers) for i in range(n)], origin_timestamp=1_700_000_000_000_000
        )
    )


def _frame_positions(b) -> list[int]:
    out, pos = [], BATCH_HEADER_SIZE
    for _ in range(struct.unpack_from("<I", b, 48)[0]):
        out.append(pos)
        hlen, plen = struct.unpack_from("<II", b, pos + 32)
        pos += FRAME_HEADER_SIZE + hlen + plen
    return out


def _reseal(b: bytearray) -> bytearray:
    """Recompute every message checksum and the batch checksum (to reach later checks)."""
    for pos in _frame_positions(b):
        hlen, plen = struct.unpack_from("<II", b, pos + 32)
        end = pos + FRAME_HEADER_SIZE + hlen + plen
        struct.pack_into("<Q", b, pos, xxhash.xxh3_64_intdigest(bytes(b[pos + 8 : end])))
    struct.pack_into("<Q", b, 40, compute_batch_checksum(bytes(b)))
    return b


def _code(b, expected=None, start=0, end=None) -> int:
    b = bytes(b)
    end = len(b) if end is None else end
    if expected is None:
        expected = struct.unpack_from("<I", b, start + 48)[0] if end - start >= 52 else 1
    with pytest.raises(IggyError) as err:
        validate_batch(b, start, end, expected)
    return err.value.code


# --------------------------------------------------------------------------- validation


def test_valid_batch():
    b = _batch(4, 100)
    assert validate_batch(b, 0, len(b), 4) == (4, len(b), 400)
    assert validate_batch(memoryview(b), 0, len(b), 4) == (4, len(b), 400)
    # a batch in the middle of a larger buffer
    buf = b"\xff" * 7 + bytes(b) + b"\xee" * 5
    assert validate_batch(buf, 7, 7 + len(b), 4)[0] == 4


def test_bounds_outside_the_buffer():
    b = _batch()
    assert _code(b, 3, 0, len(b) + 1) == ErrorCode.INVALID_MESSAGES_SIZE
    assert _code(b, 3, -1, len(b)) == ErrorCode.INVALID_MESSAGES_SIZE
    assert _code(b, 3, 10, 5) == ErrorCode.INVALID_MESSAGES_SIZE


def test_too_short():
    assert _code(bytes(255), 1) == ErrorCode.INVALID_MESSAGES_SIZE
    assert _code(b"", 1) == ErrorCode.INVALID_MESSAGES_SIZE


def test_zero_messages():
    b = bytearray(256)
    struct.pack_into("<Q", b, 32, 256)
    assert _code(b, 0) == ErrorCode.INVALID_MESSAGES_COUNT


def test_count_differs_from_metadata():
    b = _batch(3)
    assert _code(b, 2) == ErrorCode.INVALID_MESSAGES_COUNT
    assert _code(b, 4) == ErrorCode.INVALID_MESSAGES_COUNT


def test_batch_length_field_mismatch():
    b = _batch(3)
    struct.pack_into("<Q", b, 32, len(b) + 1)
    assert _code(b) == ErrorCode.INVALID_MESSAGES_SIZE


@pytest.mark.parametrize("offset", [52, 100, 255])
def test_reserved_header_bytes(offset):
    b = _batch(2)
    b[offset] = 1
    assert _code(b) == ErrorCode.INVALID_RESERVED_FIELD


def test_frame_header_does_not_fit():
    b = _batch(2, 10)
    cut = b[: -(10 + FRAME_HEADER_SIZE) + 20]  # the second frame's header is cut short
    struct.pack_into("<Q", cut, 32, len(cut))
    assert _code(cut) == ErrorCode.INVALID_MESSAGES_SIZE


def test_empty_payload():
    b = _batch(2)
    struct.pack_into("<I", b, _frame_positions(b)[1] + 36, 0)
    assert _code(b) == ErrorCode.EMPTY_MESSAGE_PAYLOAD == 4024


def test_too_big_payload():
    b = _batch(2)
    struct.pack_into("<I", b, _frame_positions(b)[0] + 36, 64_000_001)
    assert _code(b) == ErrorCode.TOO_BIG_MESSAGE_PAYLOAD


def test_too_big_user_headers():
    b = _batch(2)
    struct.pack_into("<I", b, _frame_positions(b)[0] + 32, 100_001)
    assert _code(b) == ErrorCode.TOO_BIG_USER_HEADERS


def test_frame_exceeds_batch():
    b = _batch(2, 10)
    struct.pack_into("<I", b, _frame_positions(b)[1] + 36, 11)
    assert _code(b) == ErrorCode.INVALID_MESSAGES_SIZE


def test_frame_reserved_field():
    b = _batch(2)
    b[_frame_positions(b)[1] + 47] = 1
    assert _code(b) == ErrorCode.INVALID_RESERVED_FIELD


def test_offset_delta_must_be_the_index():
    b = _batch(3)
    struct.pack_into("<I", b, _frame_positions(b)[2] + 24, 1)
    assert _code(_reseal(b)) == ErrorCode.INVALID_FORMAT


def test_message_checksum():
    b = _batch(3)
    b[_frame_positions(b)[1] + FRAME_HEADER_SIZE] ^= 0x40
    assert _code(b) == ErrorCode.INVALID_MESSAGE_CHECKSUM


@pytest.mark.parametrize("field", [8, 9, 16, 24, 40, 47])
def test_batch_checksum(field):
    b = _batch(3)
    b[field] ^= 1  # header fields the checksum covers, and the checksum itself
    assert _code(b) == ErrorCode.INVALID_BATCH_CHECKSUM


def test_batch_checksum_covers_every_message_checksum():
    b = _batch(3)
    pos = _frame_positions(b)[2]
    b[pos + FRAME_HEADER_SIZE] ^= 1
    struct.pack_into("<Q", b, pos, xxhash.xxh3_64_intdigest(bytes(b[pos + 8 :])))
    assert _code(b) == ErrorCode.INVALID_BATCH_CHECKSUM


def test_leftover_bytes_after_the_frames():
    b = _batch(2) + b"\x00" * 10
    struct.pack_into("<Q", b, 32, len(b))
    assert _code(_reseal(b)) == ErrorCode.INVALID_MESSAGES_SIZE


def test_checksums_of_stamped_fields_are_taken_as_sent():
    # the SDK hashes partition 0 / offset 0 / timestamp 0; any value works if hashed
    b = _batch(2)
    struct.pack_into("<QQQ", b, 0, 7, 1000, 123456)
    assert _code(b) == ErrorCode.INVALID_BATCH_CHECKSUM
    validate_batch(_reseal(b), 0, len(b), 2)


# --------------------------------------------------------------------------- user headers

GOOD_HEADERS = encode_headers(
    [
        (2, b"k", 2, b"v"),
        (2, b"n", 12, bytes(8)),
        (1, b"\x00", 15, bytes(8)),
        (2, b"x" * 255, 1, b"y" * 255),
        (2, b"b", 3, b"\x01"),
        (2, b"i", 8, bytes(16)),
    ]
)


def _tlv(kind, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(4, "little") + value


def test_good_user_headers():
    b = _batch(2, headers=GOOD_HEADERS)
    validate_batch(b, 0, len(b), 2)


@pytest.mark.parametrize(
    "headers, code",
    [
        (_tlv(0, b"k") + _tlv(2, b"v"), ErrorCode.INVALID_HEADER_KIND),
        (_tlv(2, b"k") + _tlv(16, b"v"), ErrorCode.INVALID_HEADER_KIND),
        (_tlv(2, b"") + _tlv(2, b"v"), ErrorCode.INVALID_HEADER_KEY),
        (_tlv(2, b"k" * 256) + _tlv(2, b"v"), ErrorCode.INVALID_HEADER_KEY),
        (_tlv(2, b"k") + _tlv(2, b""), ErrorCode.INVALID_HEADER_VALUE),
        (_tlv(2, b"k") + _tlv(2, b"v" * 256), ErrorCode.INVALID_HEADER_VALUE),
        (_tlv(2, b"k") + _tlv(9, b"\x01\x02"), ErrorCode.INVALID_HEADER_VALUE),  # u8 in 2 bytes
        (_tlv(2, b"k") + _tlv(12, bytes(4)), ErrorCode.INVALID_HEADER_VALUE),  # u64 in 4 bytes
        (_tlv(2, b"k") + _tlv(3, b"\x01\x00"), ErrorCode.INVALID_HEADER_VALUE),  # bool in 2 bytes
        (_tlv(4, b"\x01\x02") + _tlv(2, b"v"), ErrorCode.INVALID_HEADER_KEY),  # numeric key, wrong size
        (_tlv(2, b"k"), ErrorCode.INVALID_HEADER_VALUE),  # key without value
        (_tlv(2, b"k") + _tlv(2, b"v") + b"\x02\x01", ErrorCode.INVALID_HEADER_KEY),  # truncated TLV
        (_tlv(2, b"k") + b"\x02\x05\x00\x00\x00v", ErrorCode.INVALID_HEADER_VALUE),  # length past the block
    ],
)
def test_bad_user_headers(headers, code):
    b = _batch(2, headers=headers)  # build_batch does not validate: checksums are right
    assert _code(b) == code


# --------------------------------------------------------------------------- stamping


def test_stamp_then_validate():
    b = _batch(5, 33)
    before = bytes(b)
    stamp_batch(b, 0, 3, 1000, 1_700_000_000_123_456)
    assert struct.unpack_from("<QQQ", b, 0) == (3, 1000, 1_700_000_000_123_456)
    assert b[40:48] != before[40:48]
    assert b[48:] == before[48:] and b[24:40] == before[24:40]  # frames, origin, length untouched
    assert validate_batch(b, 0, len(b), 5)[0] == 5
    assert [m["offset"] for m in iter_messages(b)] == list(range(1000, 1005))
    assert {m["timestamp"] for m in iter_messages(b)} == {1_700_000_000_123_456}


def test_stamp_inside_a_larger_buffer():
    b = _batch(2)
    buf = bytearray(b"\x01" * 9) + b + b"\x02" * 3
    stamp_batch(memoryview(buf), 9, 1, 2, 3)
    assert buf[:9] == b"\x01" * 9 and buf[-3:] == b"\x02" * 3
    validate_batch(buf, 9, 9 + len(b), 2)


def test_stamp_refuses_read_only_and_bad_framing():
    b = _batch(2)
    with pytest.raises((BufferError, TypeError)):
        stamp_batch(bytes(b), 0, 1, 2, 3)
    with pytest.raises(IggyError):
        stamp_batch(bytearray(100), 0, 1, 2, 3)
    bad = bytearray(b)
    struct.pack_into("<I", bad, 48, 3)  # one frame more than there is
    with pytest.raises(IggyError):
        stamp_batch(bad, 0, 1, 2, 3)
    assert bad[:24] == b[:24]  # untouched on failure
    longer = bytearray(b)
    struct.pack_into("<Q", longer, 32, len(b) + 1)
    with pytest.raises(IggyError):
        stamp_batch(longer, 0, 1, 2, 3)


# --------------------------------------------------------------------------- robustness


def test_every_truncation_is_refused():
    b = bytes(_batch(3, 20, headers=_tlv(2, b"k") + _tlv(2, b"v")))
    for end in range(len(b)):
        with pytest.raises(IggyError):
            validate_batch(b, 0, end, 3)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 255))
def test_single_byte_corruption_is_detected(where, flip):
    b = _batch(3, 40, headers=_tlv(2, b"key") + _tlv(11, bytes(4)))
    where %= len(b)
    if 24 <= where < 32:
        return  # origin_timestamp: covered by the batch checksum too
    b[where] ^= flip
    with pytest.raises(IggyError):
        validate_batch(b, 0, len(b), 3)


message = st.tuples(
    st.integers(0, 2**128 - 1),
    st.binary(min_size=1, max_size=300),
    st.lists(
        st.tuples(
            st.sampled_from([1, 2]),
            st.binary(min_size=1, max_size=20),
            st.sampled_from(
                [(1, None), (2, None), (3, 1), (9, 1), (10, 2), (11, 4), (12, 8), (13, 16), (14, 4), (15, 8)]
            ),
            st.binary(min_size=1, max_size=40),
        ),
        max_size=4,
    ),
    st.integers(0, 2**32 - 1),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(message, min_size=1, max_size=20), st.integers(0, 2**63))
def test_build_validate_iterate_roundtrip(msgs, origin):
    entries = []
    for mid, payload, headers, delta in msgs:
        tlv = encode_headers(
            [(kk, kb, vk, vb if size is None else (vb * size)[:size]) for kk, kb, (vk, size), vb in headers]
        )
        entries.append((mid, payload, tlv, delta))
    b = build_batch(entries, origin_timestamp=origin)
    count, length, payload_bytes = validate_batch(b, 0, len(b), len(entries))
    assert (count, length, payload_bytes) == (len(entries), len(b), sum(len(e[1]) for e in entries))
    got = list(iter_messages(b))
    assert [(m["id"], m["payload"], m["user_headers"], m["origin_timestamp"] - origin) for m in got] == entries
    assert [m["offset"] for m in got] == list(range(len(entries)))
    for m in got:
        assert m["checksum"] == xxhash.xxh3_64_intdigest(
            struct.pack(
                "<16sIIII",
                m["id"].to_bytes(16, "little"),
                m["offset"],
                m["origin_timestamp"] - origin,
                len(m["user_headers"]),
                len(m["payload"]),
            )
            + bytes(8)
            + m["payload"]
            + m["user_headers"]
        )
