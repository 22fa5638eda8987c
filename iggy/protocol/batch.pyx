# cython: language_level=3, embedsignature=True
"""Message batches: validation, stamping and checksums, in C without the GIL.

A batch is exactly what SEND_MESSAGES carries after its routing metadata, what the segment
`.log` files hold and what polls return (TCP.md 8.2-8.4, SEMANTICS 8.3). Little-endian::

    batch header, 256 bytes
        0  u64 partition_id        stamped by the server (0 from the SDK)
        8  u64 base_offset         stamped by the server (0 from the SDK)
       16  u64 base_timestamp      stamped by the server, µs (0 from the SDK)
       24  u64 origin_timestamp    producer clock, minimum of the batch (µs)
       32  u64 batch_length        256 + all frames
       40  u64 batch_checksum      see below
       48  u32 message_count       >= 1
       52  204 reserved            zero
    message frame = 48-byte header + payload + user headers, packed without padding
        0  u64 checksum            XXH3-64 (seed 0) of frame bytes 8..end of the frame
        8  u128 id
       24  u32 offset_delta        0, 1, 2, ... (index in the batch)
       28  u32 timestamp_delta     origin timestamp - batch origin_timestamp (µs)
       32  u32 user_headers_length <= 100,000
       36  u32 payload_length      1 .. 64,000,000
       40  u64 reserved            zero
       48  payload, then user headers: TLV `[u8 kind][u32 len][len bytes]`, key then value
           repeated; kinds 1..15, lengths 1..255, numeric kinds have fixed sizes (TCP.md 5.8)

    batch_checksum = XXH3-64 streamed over partition_id, base_offset, base_timestamp,
                     origin_timestamp, batch_length (header bytes 0..40), message_count
                     (bytes 48..52), then the 8-byte checksum field of every frame in order

Only the batch checksum covers the fields the server stamps, so stamping rewrites 24 bytes
and rehashes 44 + 8 x count bytes; message checksums are never redone. The SDK sends
partition_id, base_offset and base_timestamp as 0 and computes the checksum over those
zeros, so validation hashes the header exactly as received.

The C functions (declared in batch.pxd, used by log.pyx) return 0 or the Iggy error code;
the Python wrappers are the only place that raises. `build_batch` and `iter_messages` are
Python helpers for tests, the HTTP API and tools, not for the data path.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from iggy._core.includes.le cimport le_u32, le_u64, put_u64
from iggy.protocol.ccodes cimport (E_EMPTY_MESSAGE_PAYLOAD, E_INVALID_BATCH_CHECKSUM,
                                   E_INVALID_FORMAT, E_INVALID_HEADER_KEY, E_INVALID_HEADER_KIND,
                                   E_INVALID_HEADER_VALUE, E_INVALID_MESSAGES_COUNT,
                                   E_INVALID_MESSAGES_SIZE, E_INVALID_MESSAGE_CHECKSUM,
                                   E_INVALID_RESERVED_FIELD, E_TOO_BIG_MESSAGE_PAYLOAD,
                                   E_TOO_BIG_USER_HEADERS)
from iggy._core.includes.xxh cimport (XXH3_64bits, XXH3_64bits_digest, XXH3_64bits_reset,
                                      XXH3_64bits_update, XXH3_state_t)

import os
import struct
import time

from iggy._core.checksum import xxh3_64
from iggy.protocol.errors import ErrorCode, IggyError

BATCH_HEADER_SIZE = BATCH_HEADER_LEN
FRAME_HEADER_SIZE = FRAME_HEADER_LEN
# where Python code that only reads a stored batch's header (the replica link) finds its fields
BATCH_BASE_OFFSET_AT = B_BASE_OFFSET
BATCH_COUNT_AT = B_COUNT
BATCH_LENGTH_AT = B_LENGTH
MAX_PAYLOAD_SIZE = MAX_PAYLOAD_LEN
MAX_USER_HEADERS_SIZE = MAX_USER_HEADERS_LEN

# value size of each user-header kind (TCP.md 5.8): 0 = variable (raw, string), -1 = invalid
cdef int _KIND_SIZE[16]
_KIND_SIZE[:] = [-1, 0, 0, 1, 1, 2, 4, 8, 16, 1, 2, 4, 8, 16, 4, 8]


cdef int batch_checksum(const unsigned char *head, const unsigned char *frames, uint64_t frames_len,
                        uint64_t *out) noexcept nogil:
    """The batch checksum of `head` (256 bytes) followed by the frames in frames[0:frames_len].

    The header may live apart from its frames (log.pyx stamps a private copy of it). Returns
    0, or E_INVALID_MESSAGES_SIZE when message_count frames do not fit in frames_len (the
    walk is bounded, so an unvalidated batch can never make it read past the buffer).
    """
    cdef XXH3_state_t state
    cdef uint32_t count = le_u32(head + B_COUNT)
    cdef uint32_t _frame
    cdef uint64_t pos = 0, flen
    XXH3_64bits_reset(&state)
    XXH3_64bits_update(&state, head, B_CHECKSUM)
    XXH3_64bits_update(&state, head + B_COUNT, 4)
    for _frame in range(count):
        if frames_len - pos < FRAME_HEADER_LEN:
            return E_INVALID_MESSAGES_SIZE
        flen = (<uint64_t>FRAME_HEADER_LEN + le_u32(frames + pos + F_PAYLOAD_LEN)
                + le_u32(frames + pos + F_HEADERS_LEN))
        if flen > frames_len - pos:
            return E_INVALID_MESSAGES_SIZE
        # the state buffers small updates internally: this is a memcpy, not a hash round
        XXH3_64bits_update(&state, frames + pos, 8)
        pos += flen
    out[0] = XXH3_64bits_digest(&state)
    return 0


cdef int _check_user_headers(const unsigned char *h, uint32_t n) noexcept nogil:
    """0 when h[0:n] is a well-formed TLV list of key/value pairs, else the error code."""
    cdef uint32_t pos = 0, length
    cdef uint8_t kind
    cdef uint32_t entries = 0
    cdef int size
    while pos < n:
        # entries alternate key, value: an error in an even entry is about a key
        if n - pos < 5:
            return E_INVALID_HEADER_KEY if entries % 2 == 0 else E_INVALID_HEADER_VALUE
        kind = h[pos]
        if kind < 1 or kind > 15:
            return E_INVALID_HEADER_KIND
        length = le_u32(h + pos + 1)
        size = _KIND_SIZE[kind]
        if length < 1 or length > 255 or length > n - pos - 5 or (size != 0 and length != <uint32_t>size):
            return E_INVALID_HEADER_KEY if entries % 2 == 0 else E_INVALID_HEADER_VALUE
        pos += 5 + length
        entries += 1
    if entries % 2:
        return E_INVALID_HEADER_VALUE      # a key without its value
    return 0


cdef int check_batch(const unsigned char *p, uint64_t n, uint32_t expected_count, int flags,
                     uint64_t *payload_bytes) noexcept nogil:
    """0 when the batch in p[0:n] is well formed, else the Iggy error code.

    `flags` selects the checksum checks (CHECK_MESSAGE_CHECKSUMS, CHECK_BATCH_CHECKSUM); the
    layout is always checked. On success payload_bytes receives the sum of payload lengths.
    """
    cdef uint32_t count, i, hlen, plen
    cdef uint64_t pos, flen, total = 0, sum_
    cdef const unsigned char *f
    cdef int rc, j
    if n < BATCH_HEADER_LEN:
        return E_INVALID_MESSAGES_SIZE
    count = le_u32(p + B_COUNT)
    if count == 0 or count != expected_count:
        return E_INVALID_MESSAGES_COUNT
    if le_u64(p + B_LENGTH) != n:
        return E_INVALID_MESSAGES_SIZE
    for j in range(B_RESERVED, BATCH_HEADER_LEN):
        if p[j]:
            return E_INVALID_RESERVED_FIELD
    pos = BATCH_HEADER_LEN
    for i in range(count):
        if n - pos < FRAME_HEADER_LEN:
            return E_INVALID_MESSAGES_SIZE
        f = p + pos
        hlen = le_u32(f + F_HEADERS_LEN)
        plen = le_u32(f + F_PAYLOAD_LEN)
        if plen == 0:
            return E_EMPTY_MESSAGE_PAYLOAD
        if plen > MAX_PAYLOAD_LEN:
            return E_TOO_BIG_MESSAGE_PAYLOAD
        if hlen > MAX_USER_HEADERS_LEN:
            return E_TOO_BIG_USER_HEADERS
        flen = <uint64_t>FRAME_HEADER_LEN + plen + hlen
        if flen > n - pos:
            return E_INVALID_MESSAGES_SIZE
        if le_u64(f + F_RESERVED):
            return E_INVALID_RESERVED_FIELD
        if le_u32(f + F_OFFSET_DELTA) != i:
            # Iggy has no dedicated code for this; offsets are base_offset + offset_delta, so a
            # delta that is not the frame's index would give two messages one offset, or skip
            # one: the batch is malformed (INVALID_FORMAT).
            return E_INVALID_FORMAT
        if flags & CHECK_MESSAGE_CHECKSUMS and XXH3_64bits(f + 8, flen - 8) != le_u64(f + F_CHECKSUM):
            return E_INVALID_MESSAGE_CHECKSUM
        if hlen:
            rc = _check_user_headers(f + FRAME_HEADER_LEN + plen, hlen)
            if rc:
                return rc
        total += plen
        pos += flen
    if pos != n:
        return E_INVALID_MESSAGES_SIZE
    if flags & CHECK_BATCH_CHECKSUM:
        batch_checksum(p, p + BATCH_HEADER_LEN, n - BATCH_HEADER_LEN, &sum_)
        if sum_ != le_u64(p + B_CHECKSUM):
            return E_INVALID_BATCH_CHECKSUM
    payload_bytes[0] = total
    return 0


cdef int stamp_header(unsigned char *head, const unsigned char *frames, uint64_t frames_len,
                      uint64_t partition_id, uint64_t base_offset, uint64_t base_timestamp) noexcept nogil:
    """Write the server's fields into `head` and recompute its batch checksum.

    `frames` are the batch's frames (they may live apart from the header). Returns 0, or
    E_INVALID_MESSAGES_SIZE (head untouched) when the frames do not fit.
    """
    cdef uint64_t sum_
    cdef unsigned char saved[24]
    cdef int i
    for i in range(24):
        saved[i] = head[i]
    put_u64(head + B_PARTITION_ID, partition_id)
    put_u64(head + B_BASE_OFFSET, base_offset)
    put_u64(head + B_BASE_TIMESTAMP, base_timestamp)
    if batch_checksum(head, frames, frames_len, &sum_):
        for i in range(24):
            head[i] = saved[i]
        return E_INVALID_MESSAGES_SIZE
    put_u64(head + B_CHECKSUM, sum_)
    return 0


# --------------------------------------------------------------------------- Python API

def validate_batch(buf, Py_ssize_t start, Py_ssize_t end, uint32_t expected_count):
    """Check the batch in buf[start:end] (header + frames, as received).

    Returns (message_count, batch_length, payload_bytes); raises IggyError with the code of
    the first problem found (see check_batch). Every per-message check runs without the GIL.
    """
    cdef Py_buffer view
    cdef int rc
    cdef uint64_t payload = 0
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if start < 0 or end > view.len or start > end:
            raise IggyError(ErrorCode.INVALID_MESSAGES_SIZE)
        with nogil:
            rc = check_batch(<const unsigned char *>view.buf + start, <uint64_t>(end - start),
                             expected_count, CHECK_ALL, &payload)
    finally:
        PyBuffer_Release(&view)
    if rc:
        raise IggyError(rc)
    return expected_count, end - start, payload


def stamp_batch(buf, Py_ssize_t start, uint64_t partition_id, uint64_t base_offset, uint64_t base_timestamp):
    """Stamp the batch at buf[start:] in place (a writable buffer: bytearray, memoryview).

    Writes partition_id, base_offset and base_timestamp and recomputes the batch checksum;
    the batch ends at start + its batch_length field. Raises IggyError(INVALID_MESSAGES_SIZE)
    when the batch does not fit in the buffer.
    """
    cdef Py_buffer view
    cdef unsigned char *p
    cdef uint64_t n
    cdef int rc = 0
    PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
    try:
        if start < 0 or view.len - start < BATCH_HEADER_LEN:
            raise IggyError(ErrorCode.INVALID_MESSAGES_SIZE)
        p = <unsigned char *>view.buf + start
        n = le_u64(p + B_LENGTH)
        if n < BATCH_HEADER_LEN or n > <uint64_t>(view.len - start):
            raise IggyError(ErrorCode.INVALID_MESSAGES_SIZE)
        with nogil:
            rc = stamp_header(p, p + BATCH_HEADER_LEN, n - BATCH_HEADER_LEN, partition_id, base_offset,
                              base_timestamp)
    finally:
        PyBuffer_Release(&view)
    if rc:
        raise IggyError(rc)


def compute_batch_checksum(batch):
    """The batch checksum of the batch at the start of `batch` (tests, tools)."""
    cdef Py_buffer view
    cdef uint64_t sum_ = 0
    cdef int rc
    PyObject_GetBuffer(batch, &view, PyBUF_SIMPLE)
    try:
        if view.len < BATCH_HEADER_LEN:
            raise IggyError(ErrorCode.INVALID_MESSAGES_SIZE)
        rc = batch_checksum(<const unsigned char *>view.buf, <const unsigned char *>view.buf + BATCH_HEADER_LEN,
                            <uint64_t>(view.len - BATCH_HEADER_LEN), &sum_)
    finally:
        PyBuffer_Release(&view)
    if rc:
        raise IggyError(rc)
    return sum_


# --------------------------------------------------------------------------- helpers (not the data path)

_FRAME_TAIL = struct.Struct("<16sIIIIQ")   # frame bytes 8..48: id, deltas, lengths, reserved
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def encode_headers(headers):
    """User headers [(key_kind, key_bytes, value_kind, value_bytes)] -> TLV bytes."""
    out = bytearray()
    for kk, kb, vk, vb in headers:
        out += bytes([kk]) + len(kb).to_bytes(4, "little") + kb
        out += bytes([vk]) + len(vb).to_bytes(4, "little") + vb
    return bytes(out)


def decode_headers(raw):
    """TLV bytes -> [(key_kind, key_bytes, value_kind, value_bytes)] (no validation)."""
    entries, pos = [], 0
    while pos + 5 <= len(raw):
        kind = raw[pos]
        n = int.from_bytes(raw[pos + 1:pos + 5], "little")
        entries.append((kind, bytes(raw[pos + 5:pos + 5 + n])))
        pos += 5 + n
    return [(entries[i][0], entries[i][1], entries[i + 1][0], entries[i + 1][1])
            for i in range(0, len(entries) - 1, 2)]


def build_batch(messages, origin_timestamp=None):
    """A batch as a client builds it: header fields the server stamps are 0, checksums right.

    `messages` is a sequence of (id, payload, user_headers) or (id, payload, user_headers,
    timestamp_delta); user_headers is the encoded TLV block (b"" or None for none).
    `origin_timestamp` defaults to now (µs). Used by tests, the HTTP API and the bench tool.
    """
    if origin_timestamp is None:
        origin_timestamp = time.time_ns() // 1000
    parts = []
    checksums = []
    for i, msg in enumerate(messages):
        payload = bytes(msg[1])
        headers = bytes(msg[2] or b"")
        delta = msg[3] if len(msg) > 3 else 0
        tail = _FRAME_TAIL.pack(int(msg[0]).to_bytes(16, "little"), i, delta, len(headers), len(payload), 0)
        tail += payload + headers
        checksum = _U64.pack(xxh3_64(tail))
        checksums.append(checksum)
        parts.append(checksum)
        parts.append(tail)
    frames = b"".join(parts)
    header = bytearray(BATCH_HEADER_LEN)
    _U64.pack_into(header, B_ORIGIN_TIMESTAMP, int(origin_timestamp))
    _U64.pack_into(header, B_LENGTH, BATCH_HEADER_LEN + len(frames))
    _U32.pack_into(header, B_COUNT, len(checksums))
    batch = header + frames
    _U64.pack_into(batch, B_CHECKSUM, compute_batch_checksum(batch))
    return bytes(batch)


def random_id():
    """A random non-zero u128 message id (what the SDK puts in place of id 0)."""
    return int.from_bytes(os.urandom(16), "little") or 1


def iter_messages(batches):
    """Walk concatenated batches; yields one dict per message (tests, HTTP; not the data path).

    Keys: offset, id, checksum, timestamp, origin_timestamp, payload, user_headers. Stops at
    a batch or frame that does not fit in the data.
    """
    data = memoryview(batches).cast("B")
    n = len(data)
    pos = 0
    while n - pos >= BATCH_HEADER_LEN:
        base_offset, base_ts, origin, length = struct.unpack_from("<QQQQ", data, pos + B_BASE_OFFSET)
        count = _U32.unpack_from(data, pos + B_COUNT)[0]
        if length < BATCH_HEADER_LEN or pos + length > n:
            return
        f = pos + BATCH_HEADER_LEN
        end = pos + length
        for _ in range(count):
            if end - f < FRAME_HEADER_LEN:
                return
            checksum, mid, odelta, tdelta, hlen, plen = struct.unpack_from("<Q16sIIII", data, f)
            if end - f - FRAME_HEADER_LEN < plen + hlen:
                return
            body = f + FRAME_HEADER_LEN
            yield {
                "offset": base_offset + odelta,
                "id": int.from_bytes(mid, "little"),
                "checksum": checksum,
                "timestamp": base_ts,
                "origin_timestamp": origin + tdelta,
                "payload": bytes(data[body:body + plen]),
                "user_headers": bytes(data[body + plen:body + plen + hlen]),
            }
            f = body + plen + hlen
        pos = end
