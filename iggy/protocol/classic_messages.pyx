# cython: language_level=3
"""The classic (pre-0.9) message layout, converted to and from stored 0.9 batches in C.

Clients before 0.9 send and receive every message with a 64-byte header of its own; this
server stores batches (`iggy.protocol.batch`: one 256-byte batch header, 48-byte message
frames). Both directions are one walk over the bytes without the GIL and without a Python
object per message. Little-endian throughout.

Classic SEND_MESSAGES, what follows the routing metadata (`iggy.protocol.classic`)::

    index       count x 16 bytes: [u32 0][u32 cumulative message bytes][u64 0]; not needed
                here (the messages carry their own lengths), skipped unread
    messages    count x message, packed

Classic message, in requests and in poll replies::

     0  u64  checksum            0 from clients; in replies XXH3-64 (seed 0) of message bytes
                                 8..end (header fields from the id on, payload, user headers)
     8  u128 id                  0 from a client means "pick one": the server draws a random id
    24  u64  offset              0 from clients; in replies the message's offset
    32  u64  timestamp           0 from clients; in replies the time the batch was appended (µs)
    40  u64  origin_timestamp    the producer's clock (µs)
    48  u32  user_headers_length
    52  u32  payload_length
    56  u64  reserved            0
    64  payload, then user headers (the TLV block of 0.9, stored unchanged)

Send: the batch's origin_timestamp is the smallest of the messages', each frame's
timestamp_delta the difference to it; a batch whose origin timestamps span more than
u32::MAX µs (71.6 minutes) cannot be stored as one batch and is refused with 4038
(INVALID_MESSAGE_TIMESTAMP_DELTA), as Apache Iggy's own converter did. Message ids of 0 get
random ids (XXH3-checked frames are built here, so the batch passes `validate_batch` like
one from a 0.9 client).

Poll: offset = batch base_offset + offset_delta, timestamp = batch base_timestamp,
origin_timestamp = batch origin_timestamp + timestamp_delta; the checksum is computed over
the classic message as sent (Apache Iggy stamped it the same way before 0.9).
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

from iggy._core.includes.le cimport le_u32, le_u64, put_u32, put_u64
from iggy._core.includes.xxh cimport XXH3_64bits
from iggy.protocol.batch cimport (B_BASE_OFFSET, B_BASE_TIMESTAMP, B_CHECKSUM, B_COUNT, B_LENGTH,
                                  B_ORIGIN_TIMESTAMP, BATCH_HEADER_LEN, F_HEADERS_LEN, F_ID,
                                  F_OFFSET_DELTA, F_PAYLOAD_LEN, F_TIMESTAMP_DELTA, FRAME_HEADER_LEN,
                                  batch_checksum)
from iggy.protocol.ccodes cimport E_INVALID_COMMAND, E_INVALID_MESSAGE_TIMESTAMP_DELTA as E_TIMESTAMP_DELTA

import os

from iggy.protocol.errors import ErrorCode, IggyError

cdef enum:
    CLASSIC_HEADER = 64         # the classic message header (module docstring)
    CLASSIC_INDEX = 16          # one index entry of a classic SEND_MESSAGES
    C_CHECKSUM = 0
    C_ID = 8
    C_OFFSET = 24
    C_TIMESTAMP = 32
    C_ORIGIN = 40
    C_HEADERS_LEN = 48
    C_PAYLOAD_LEN = 52
    C_RESERVED = 56

cdef uint64_t MAX_DELTA = 0xFFFFFFFF   # the largest timestamp_delta of a frame (u32)

CLASSIC_MESSAGE_HEADER_SIZE = CLASSIC_HEADER
CLASSIC_INDEX_ENTRY_SIZE = CLASSIC_INDEX


cdef int _scan_send(const unsigned char *p, uint64_t n, uint32_t count, uint64_t *frames_len,
                    uint64_t *origin, uint32_t *zero_ids) noexcept nogil:
    """Walk `count` classic messages filling p[0:n] exactly. 0 or an Iggy error code."""
    cdef uint64_t pos = 0, size, lo = 0xFFFFFFFFFFFFFFFF, hi = 0, ts
    cdef uint32_t _i
    frames_len[0] = 0
    zero_ids[0] = 0
    for _i in range(count):
        if n - pos < CLASSIC_HEADER:
            return E_INVALID_COMMAND
        size = <uint64_t>CLASSIC_HEADER + le_u32(p + pos + C_PAYLOAD_LEN) + le_u32(p + pos + C_HEADERS_LEN)
        if size > n - pos:
            return E_INVALID_COMMAND
        ts = le_u64(p + pos + C_ORIGIN)
        if ts < lo:
            lo = ts
        if ts > hi:
            hi = ts
        if le_u64(p + pos + C_ID) == 0 and le_u64(p + pos + C_ID + 8) == 0:
            zero_ids[0] += 1
        frames_len[0] += size - CLASSIC_HEADER + FRAME_HEADER_LEN
        pos += size
    if pos != n:
        return E_INVALID_COMMAND       # bytes after the last message: the count lies
    if hi - lo > MAX_DELTA:
        return E_TIMESTAMP_DELTA
    origin[0] = lo
    return 0


cdef void _fill_batch(const unsigned char *p, uint32_t count, uint64_t origin, const unsigned char *ids,
                      unsigned char *out, uint64_t frames_len) noexcept nogil:
    """Write the 0.9 batch (header + frames, checksums included) of `count` scanned messages."""
    cdef unsigned char *f = out + BATCH_HEADER_LEN
    cdef uint64_t pos = 0, body, sum_
    cdef uint32_t i, payload, headers
    memset(out, 0, BATCH_HEADER_LEN)
    put_u64(out + B_ORIGIN_TIMESTAMP, origin)
    put_u64(out + B_LENGTH, BATCH_HEADER_LEN + frames_len)
    put_u32(out + B_COUNT, count)
    for i in range(count):
        payload = le_u32(p + pos + C_PAYLOAD_LEN)
        headers = le_u32(p + pos + C_HEADERS_LEN)
        memset(f, 0, FRAME_HEADER_LEN)
        if le_u64(p + pos + C_ID) == 0 and le_u64(p + pos + C_ID + 8) == 0:
            memcpy(f + F_ID, ids, 16)
            if le_u64(f + F_ID) == 0 and le_u64(f + F_ID + 8) == 0:
                f[F_ID] = 1             # a random id is never 0 (p = 2^-128)
            ids += 16
        else:
            memcpy(f + F_ID, p + pos + C_ID, 16)
        put_u32(f + F_OFFSET_DELTA, i)
        put_u32(f + F_TIMESTAMP_DELTA, <uint32_t>(le_u64(p + pos + C_ORIGIN) - origin))
        put_u32(f + F_HEADERS_LEN, headers)
        put_u32(f + F_PAYLOAD_LEN, payload)
        body = <uint64_t>payload + headers
        memcpy(f + FRAME_HEADER_LEN, p + pos + CLASSIC_HEADER, body)     # payload, then user headers
        put_u64(f, XXH3_64bits(f + 8, FRAME_HEADER_LEN - 8 + body))
        f += FRAME_HEADER_LEN + body
        pos += CLASSIC_HEADER + body
    batch_checksum(out, out + BATCH_HEADER_LEN, frames_len, &sum_)
    put_u64(out + B_CHECKSUM, sum_)


def classic_to_batch(body, Py_ssize_t start, uint32_t count):
    """The 0.9 batch (bytes) for the classic messages in body[start:]: the index of `count`
    16-byte entries, then `count` messages that must fill the rest exactly.

    Raises IggyError: 4009 for count 0; 3 (INVALID_COMMAND) when the messages do not fill
    the body (a lying count or length); 4038 for origin timestamps more than u32::MAX µs apart.
    Payload and user-header rules are left to `validate_batch`, which the append runs anyway.
    """
    cdef Py_buffer view
    cdef const unsigned char *msgs
    cdef uint64_t n, frames_len = 0, origin = 0
    cdef uint32_t zero_ids = 0
    cdef int rc
    cdef bytes ids = b""
    cdef bytes out
    cdef const unsigned char *ids_p
    cdef unsigned char *out_p
    if count == 0:
        raise IggyError(ErrorCode.INVALID_MESSAGES_COUNT)
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        if start < 0 or start > view.len or <uint64_t>(view.len - start) < <uint64_t>count * CLASSIC_INDEX:
            raise IggyError(ErrorCode.INVALID_COMMAND)
        msgs = <const unsigned char *>view.buf + start + <Py_ssize_t>count * CLASSIC_INDEX
        n = <uint64_t>(view.len - start) - <uint64_t>count * CLASSIC_INDEX
        with nogil:
            rc = _scan_send(msgs, n, count, &frames_len, &origin, &zero_ids)
        if rc:
            raise IggyError(rc)
        if zero_ids:
            ids = os.urandom(16 * zero_ids)
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(BATCH_HEADER_LEN + frames_len))
        ids_p = <const unsigned char *>PyBytes_AS_STRING(ids)
        out_p = <unsigned char *>PyBytes_AS_STRING(out)
        with nogil:
            _fill_batch(msgs, count, origin, ids_p, out_p, frames_len)
    finally:
        PyBuffer_Release(&view)
    return out


cdef int _scan_poll(const unsigned char *p, uint64_t n, uint64_t *out_len, uint64_t *messages) noexcept nogil:
    """Size of the classic messages of the stored batches in p[0:n]. 0, or -1 when a batch
    does not fit (never for what the log serves; checked so nothing is read past the end)."""
    cdef uint64_t pos = 0, blen, fpos, flen
    cdef uint32_t count, _i
    out_len[0] = 0
    messages[0] = 0
    while pos < n:
        if n - pos < BATCH_HEADER_LEN:
            return -1
        blen = le_u64(p + pos + B_LENGTH)
        count = le_u32(p + pos + B_COUNT)
        if blen < BATCH_HEADER_LEN or blen > n - pos:
            return -1
        fpos = pos + BATCH_HEADER_LEN
        for _i in range(count):
            if pos + blen - fpos < FRAME_HEADER_LEN:
                return -1
            flen = <uint64_t>FRAME_HEADER_LEN + le_u32(p + fpos + F_PAYLOAD_LEN) + le_u32(p + fpos + F_HEADERS_LEN)
            if flen > pos + blen - fpos:
                return -1
            out_len[0] += flen - FRAME_HEADER_LEN + CLASSIC_HEADER
            fpos += flen
        messages[0] += count
        pos += blen
    return 0


cdef void _fill_classic(const unsigned char *p, uint64_t n, unsigned char *out) noexcept nogil:
    cdef uint64_t pos = 0, blen, fpos, base_offset, base_ts, origin, body
    cdef uint32_t count, _i, payload, headers
    while pos < n:
        blen = le_u64(p + pos + B_LENGTH)
        count = le_u32(p + pos + B_COUNT)
        base_offset = le_u64(p + pos + B_BASE_OFFSET)
        base_ts = le_u64(p + pos + B_BASE_TIMESTAMP)
        origin = le_u64(p + pos + B_ORIGIN_TIMESTAMP)
        fpos = pos + BATCH_HEADER_LEN
        for _i in range(count):
            payload = le_u32(p + fpos + F_PAYLOAD_LEN)
            headers = le_u32(p + fpos + F_HEADERS_LEN)
            body = <uint64_t>payload + headers
            memcpy(out + C_ID, p + fpos + F_ID, 16)
            put_u64(out + C_OFFSET, base_offset + le_u32(p + fpos + F_OFFSET_DELTA))
            put_u64(out + C_TIMESTAMP, base_ts)
            put_u64(out + C_ORIGIN, origin + le_u32(p + fpos + F_TIMESTAMP_DELTA))
            put_u32(out + C_HEADERS_LEN, headers)
            put_u32(out + C_PAYLOAD_LEN, payload)
            put_u64(out + C_RESERVED, 0)
            memcpy(out + CLASSIC_HEADER, p + fpos + FRAME_HEADER_LEN, body)
            put_u64(out + C_CHECKSUM, XXH3_64bits(out + 8, CLASSIC_HEADER - 8 + body))
            out += CLASSIC_HEADER + body
            fpos += FRAME_HEADER_LEN + body
        pos += blen


def batches_to_classic(data):
    """The classic messages (bytes) of the stored batches in `data`, and how many there are.

    Every message becomes a 64-byte classic header, its payload and its user headers,
    checksummed; batch headers are dropped.
    """
    cdef Py_buffer view
    cdef uint64_t out_len = 0, messages = 0
    cdef int rc
    cdef bytes out
    cdef unsigned char *out_p
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            rc = _scan_poll(<const unsigned char *>view.buf, <uint64_t>view.len, &out_len, &messages)
        if rc:
            raise IggyError(ErrorCode.CANNOT_READ_MESSAGE)
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>out_len)
        out_p = <unsigned char *>PyBytes_AS_STRING(out)
        with nogil:
            _fill_classic(<const unsigned char *>view.buf, <uint64_t>view.len, out_p)
    finally:
        PyBuffer_Release(&view)
    return out, messages
