# cython: language_level=3
"""Message batches: validation, stamping and checksums, in C without the GIL.

A batch is exactly what SEND_MESSAGES carries after its routing metadata, what the segment
`.log` files hold and what polls return::

    batch header, 256 bytes
        0  u64 partition_id        stamped by the server
        8  u64 base_offset         stamped by the server
       16  u64 base_timestamp      stamped by the server (µs)
       24  u64 origin_timestamp    producer clock, minimum of the batch (µs)
       32  u64 batch_length        256 + all frames
       40  u64 batch_checksum      XXH3-64 over bytes 0..40 and 48..52, then each
                                   message's 8-byte checksum, in order
       48  u32 message_count
       52  204 reserved, zero
    message frame, 48-byte header + payload + user headers
        0  u64 checksum            XXH3-64 of frame bytes 8..end
        8  u128 id
       24  u32 offset_delta        0, 1, 2, ... (index in the batch)
       28  u32 timestamp_delta     origin timestamp - batch origin_timestamp (µs)
       32  u32 user_headers_length
       36  u32 payload_length
       40  u64 reserved, zero
       48  payload, then user headers (TLV: u8 kind, u32 length, bytes; key then value)

Only the batch checksum depends on the fields the server stamps, so stamping rewrites 32
bytes and recomputes one hash over 44 + 8 x count bytes; message checksums are never redone.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memset

from iggy._core.includes.le cimport le_u32, le_u64, put_u32, put_u64
from iggy._core.includes.xxh cimport XXH3_64bits, XXH3_64bits_digest, XXH3_64bits_reset, XXH3_64bits_update, XXH3_state_t

import os
import time

from iggy.errors import ErrorCode, IggyError

DEF HEADER = 256
DEF FRAME = 48
DEF MAX_PAYLOAD = 64000000
DEF MAX_USER_HEADERS = 100000

# Iggy error codes returned from the nogil checks (iggy.errors.ErrorCode)
cdef enum:
    E_INVALID_FORMAT = 4
    E_INVALID_MESSAGES_COUNT = 4009
    E_TOO_BIG_USER_HEADERS = 4017
    E_INVALID_HEADER_KEY = 4018
    E_INVALID_HEADER_VALUE = 4019
    E_TOO_BIG_MESSAGE_PAYLOAD = 4022
    E_EMPTY_MESSAGE_PAYLOAD = 4024
    E_INVALID_MESSAGE_CHECKSUM = 4027
    E_INVALID_MESSAGES_SIZE = 4036
    E_INVALID_BATCH_CHECKSUM = 4039
    E_INVALID_HEADER_KIND = 4040
    E_INVALID_RESERVED_FIELD = 4101

BATCH_HEADER_SIZE = HEADER
FRAME_HEADER_SIZE = FRAME

# header value kinds and their fixed sizes (0 = variable, 1..255 bytes)
cdef int _KIND_SIZE[16]
_KIND_SIZE[:] = [-1, 0, 0, 1, 1, 2, 4, 8, 16, 1, 2, 4, 8, 16, 4, 8]


cdef uint64_t batch_checksum(const unsigned char *p) noexcept nogil:
    """XXH3-64 over the header fields and every message checksum (frames must fit)."""
    cdef XXH3_state_t state
    cdef uint32_t count = le_u32(p + 48)
    cdef uint64_t pos = HEADER
    cdef uint32_t i
    XXH3_64bits_reset(&state)
    XXH3_64bits_update(&state, p, 40)
    XXH3_64bits_update(&state, p + 48, 4)
    for i in range(count):
        XXH3_64bits_update(&state, p + pos, 8)
        pos += FRAME + <uint64_t>le_u32(p + pos + 36) + le_u32(p + pos + 32)
    return XXH3_64bits_digest(&state)


cdef int _check_headers(const unsigned char *h, uint32_t n) noexcept nogil:
    cdef uint32_t pos = 0
    cdef uint32_t length
    cdef uint8_t kind
    cdef int entries = 0
    while pos < n:
        if n - pos < 5:
            return E_INVALID_HEADER_KEY if entries % 2 == 0 else E_INVALID_HEADER_VALUE
        kind = h[pos]
        length = le_u32(h + pos + 1)
        if kind < 1 or kind > 15:
            return E_INVALID_HEADER_KIND
        if length < 1 or length > 255 or length > n - pos - 5 or (_KIND_SIZE[kind] and length != <uint32_t>_KIND_SIZE[kind]):
            return E_INVALID_HEADER_KEY if entries % 2 == 0 else E_INVALID_HEADER_VALUE
        pos += 5 + length
        entries += 1
    if entries % 2:
        return E_INVALID_HEADER_VALUE
    return 0


cdef int check_batch(const unsigned char *p, uint64_t n, uint32_t expected, bint verify_batch_checksum,
                     uint64_t *payload_bytes) noexcept nogil:
    """0 when the batch in p[0:n] is well formed, else the Iggy error code."""
    cdef uint32_t count, i, hlen, plen
    cdef uint64_t pos, flen, total = 0
    cdef const unsigned char *f
    cdef int herr
    if n < HEADER:
        return E_INVALID_MESSAGES_SIZE
    count = le_u32(p + 48)
    if count == 0 or count != expected:
        return E_INVALID_MESSAGES_COUNT
    if le_u64(p + 32) != n:
        return E_INVALID_MESSAGES_SIZE
    for i in range(52, HEADER):
        if p[i]:
            return E_INVALID_RESERVED_FIELD
    pos = HEADER
    for i in range(count):
        if n - pos < FRAME:
            return E_INVALID_MESSAGES_SIZE
        f = p + pos
        hlen = le_u32(f + 32)
        plen = le_u32(f + 36)
        if le_u64(f + 40):
            return E_INVALID_RESERVED_FIELD
        if plen == 0:
            return E_EMPTY_MESSAGE_PAYLOAD
        if plen > MAX_PAYLOAD:
            return E_TOO_BIG_MESSAGE_PAYLOAD
        if hlen > MAX_USER_HEADERS:
            return E_TOO_BIG_USER_HEADERS
        flen = FRAME + <uint64_t>plen + hlen
        if flen > n - pos:
            return E_INVALID_MESSAGES_SIZE
        if le_u32(f + 24) != i:
            # offsets are assigned as base_offset + offset_delta: deltas must count 0, 1, 2...
            return E_INVALID_FORMAT
        if XXH3_64bits(f + 8, flen - 8) != le_u64(f):
            return E_INVALID_MESSAGE_CHECKSUM
        if hlen:
            herr = _check_headers(f + FRAME + plen, hlen)
            if herr:
                return herr
        total += plen
        pos += flen
    if pos != n:
        return E_INVALID_MESSAGES_SIZE
    if verify_batch_checksum and batch_checksum(p) != le_u64(p + 40):
        return E_INVALID_BATCH_CHECKSUM
    payload_bytes[0] = total
    return 0


cdef void stamp_header(unsigned char *p, uint64_t partition_id, uint64_t base_offset,
                       uint64_t base_timestamp) noexcept nogil:
    """Write the server's fields into a batch header (frames must follow it in memory)."""
    put_u64(p, partition_id)
    put_u64(p + 8, base_offset)
    put_u64(p + 16, base_timestamp)
    put_u64(p + 40, batch_checksum(p))


def validate_batch(buf, Py_ssize_t start, Py_ssize_t end, uint32_t expected_count):
    """Check buf[start:end]; returns (message_count, batch_length, payload_bytes) or raises."""
    cdef Py_buffer view
    cdef int err
    cdef uint64_t payload = 0
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if start < 0 or end > view.len or start > end:
            raise IggyError(ErrorCode.INVALID_MESSAGES_SIZE)
        with nogil:
            err = check_batch(<const unsigned char *>view.buf + start, end - start, expected_count, True,
                              &payload)
    finally:
        PyBuffer_Release(&view)
    if err:
        raise IggyError(err)
    return expected_count, end - start, payload


def stamp_batch(buf, Py_ssize_t start, uint64_t partition_id, uint64_t base_offset, uint64_t base_timestamp):
    """Stamp a batch in place in a writable buffer (bytearray, memoryview)."""
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
    try:
        if start < 0 or start + HEADER > view.len:
            raise ValueError("no batch header at start")
        with nogil:
            stamp_header(<unsigned char *>view.buf + start, partition_id, base_offset, base_timestamp)
    finally:
        PyBuffer_Release(&view)


def compute_batch_checksum(batch):
    """The batch checksum of a well-formed batch (tests, tools)."""
    cdef const unsigned char[:] v = batch
    if v.shape[0] < HEADER:
        raise ValueError("too short")
    return batch_checksum(&v[0])


# ---------------------------------------------------------------- helpers, not the data path

def encode_headers(headers):
    """User headers [(key_kind, key_bytes, value_kind, value_bytes)] -> TLV bytes."""
    out = bytearray()
    for kk, kb, vk, vb in headers:
        out += bytes([kk]) + len(kb).to_bytes(4, "little") + kb
        out += bytes([vk]) + len(vb).to_bytes(4, "little") + vb
    return bytes(out)


def decode_headers(raw):
    """TLV bytes -> [(key_kind, key_bytes, value_kind, value_bytes)]."""
    entries, pos = [], 0
    while pos < len(raw):
        kind = raw[pos]
        n = int.from_bytes(raw[pos + 1:pos + 5], "little")
        entries.append((kind, bytes(raw[pos + 5:pos + 5 + n])))
        pos += 5 + n
    return [(entries[i][0], entries[i][1], entries[i + 1][0], entries[i + 1][1]) for i in range(0, len(entries) - 1, 2)]


def build_batch(messages, origin_timestamp=None):
    """A client-side batch: messages are (id, payload, user_headers_bytes) or (id, payload,
    user_headers_bytes, timestamp_delta). Used by tests, the HTTP API and the bench tool."""
    if origin_timestamp is None:
        origin_timestamp = time.time_ns() // 1000
    frames = bytearray()
    for i, msg in enumerate(messages):
        mid, payload, headers = msg[0], bytes(msg[1]), bytes(msg[2] or b"")
        delta = msg[3] if len(msg) > 3 else 0
        frame = bytearray(FRAME) + payload + headers
        frame[8:24] = int(mid).to_bytes(16, "little")
        put = frame.__setitem__
        put(slice(24, 28), i.to_bytes(4, "little"))
        put(slice(28, 32), int(delta).to_bytes(4, "little"))
        put(slice(32, 36), len(headers).to_bytes(4, "little"))
        put(slice(36, 40), len(payload).to_bytes(4, "little"))
        tail = bytes(frame[8:])
        frame[0:8] = _xxh3(tail).to_bytes(8, "little")
        frames += frame
    header = bytearray(HEADER)
    header[24:32] = int(origin_timestamp).to_bytes(8, "little")
    header[32:40] = (HEADER + len(frames)).to_bytes(8, "little")
    header[48:52] = len(messages).to_bytes(4, "little")
    batch = header + frames
    batch[40:48] = compute_batch_checksum(bytes(batch)).to_bytes(8, "little")
    return bytes(batch)


def _xxh3(bytes data):
    return XXH3_64bits(<const char *>data, len(data))


def random_id():
    return int.from_bytes(os.urandom(16), "little")


def iter_messages(batches):
    """Walk concatenated batches; yields one dict per message (tests, HTTP; not the data path)."""
    data = bytes(batches)
    pos = 0
    while pos + HEADER <= len(data):
        base_offset = int.from_bytes(data[pos + 8:pos + 16], "little")
        base_ts = int.from_bytes(data[pos + 16:pos + 24], "little")
        origin = int.from_bytes(data[pos + 24:pos + 32], "little")
        length = int.from_bytes(data[pos + 32:pos + 40], "little")
        count = int.from_bytes(data[pos + 48:pos + 52], "little")
        f = pos + HEADER
        for _ in range(count):
            hlen = int.from_bytes(data[f + 32:f + 36], "little")
            plen = int.from_bytes(data[f + 36:f + 40], "little")
            yield {
                "offset": base_offset + int.from_bytes(data[f + 24:f + 28], "little"),
                "id": int.from_bytes(data[f + 8:f + 24], "little"),
                "checksum": int.from_bytes(data[f:f + 8], "little"),
                "timestamp": base_ts,
                "origin_timestamp": origin + int.from_bytes(data[f + 28:f + 32], "little"),
                "payload": data[f + FRAME:f + FRAME + plen],
                "user_headers": data[f + FRAME + plen:f + FRAME + plen + hlen],
            }
            f += FRAME + plen + hlen
        pos += length
