# cython: language_level=3, embedsignature=True
"""Client-side hot paths of `iggy-bench` and `perf/compare_peers.py`.

The load tool must measure the server, not itself, so everything it does per request is one
call into this module:

* `SendFrame`: a SEND_MESSAGES request (TCP.md 8.1) built once, re-stamped per send. Only
  the request number (header offset 168), the target partition (in the metadata), the batch
  origin_timestamp (batch offset 24) and the batch checksum change; message checksums do not
  cover any of them (TCP.md 8.4), so a re-stamp hashes 44 + 8 x count bytes. Layout::

      0    256  request header: size, command 5, client, request, operation 160, session
      256    4  u32 metadata length (22)
      260    6  stream Identifier (numeric: 01 04 u32)
      266    6  topic Identifier
      272    2  partitioning kind 2, length 4
      274    4  u32 partition id                       <- re-stamped
      278    4  u32 message count
      282  ...  batch: 256-byte header + frames         origin_timestamp, checksum re-stamped

* `PollFrame`: a POLL_MESSAGES request (TCP.md 8.5), body of 38 bytes::

      256  u8 consumer kind (1 single, 2 group)   257  consumer Identifier (6)
      263  stream Identifier (6)                  269  topic Identifier (6)
      275  u8 has_partition                       276  u32 partition id   <- re-stamped
      280  u8 strategy (1 offset, 5 next)          281  u64 value          <- re-stamped
      289  u32 count                               293  u8 auto_commit

* `scan_poll`: walks a poll reply body (TCP.md 8.6) in C: message count, payload bytes, the
  first batch's origin_timestamp (end-to-end latency) and the offset after the last message.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from iggy.protocol.batch cimport (B_COUNT, B_LENGTH, B_BASE_OFFSET, B_CHECKSUM, B_ORIGIN_TIMESTAMP,
                                  BATCH_HEADER_LEN, F_HEADERS_LEN, F_OFFSET_DELTA, F_PAYLOAD_LEN,
                                  FRAME_HEADER_LEN, batch_checksum)
from iggy.protocol.ccodes cimport CMD_POLL_MESSAGES, IDENTIFIER_NUMERIC, OP_READ, OP_SEND_MESSAGES, PARTITION_ID
from iggy.protocol.cursor cimport Cursor, cur_init, cur_u32, cur_u64
from iggy.protocol.header cimport HEADER_SIZE, RQ_REQUEST, U128_LEN, put_request_header
from iggy._core.includes.le cimport le_u32, le_u64, put_u32, put_u64

cdef enum:
    # SEND_MESSAGES body (module docstring), offsets from the frame's start
    SEND_META_LEN = 22
    SEND_STREAM_POS = HEADER_SIZE + 4
    SEND_TOPIC_POS = HEADER_SIZE + 10
    SEND_KIND_POS = HEADER_SIZE + 16
    SEND_PARTITION_POS = HEADER_SIZE + 18
    SEND_COUNT_POS = HEADER_SIZE + 22
    SEND_BATCH_POS = HEADER_SIZE + 26
    # POLL_MESSAGES body
    POLL_BODY_LEN = 38
    POLL_CONSUMER_POS = HEADER_SIZE + 1
    POLL_STREAM_POS = HEADER_SIZE + 7
    POLL_TOPIC_POS = HEADER_SIZE + 13
    POLL_HAS_PARTITION_POS = HEADER_SIZE + 19
    POLL_PARTITION_POS = HEADER_SIZE + 20
    POLL_STRATEGY_POS = HEADER_SIZE + 24
    POLL_VALUE_POS = HEADER_SIZE + 25
    POLL_COUNT_POS = HEADER_SIZE + 33
    POLL_AUTO_COMMIT_POS = HEADER_SIZE + 37


cdef inline void _numeric_id(unsigned char *p, uint32_t value) noexcept nogil:
    p[0] = IDENTIFIER_NUMERIC
    p[1] = 4
    put_u32(p + 2, value)


cdef class SendFrame:
    """One pre-built SEND_MESSAGES request (layout in the module docstring).

    Invariants: `data` never changes size, so views handed to a transport stay valid; the
    batch in it passed `build_batch`, so its frames fit and the checksum walk is bounded.
    """
    cdef bytearray _buf
    cdef readonly Py_ssize_t size
    cdef readonly uint32_t message_count
    cdef readonly uint64_t batch_length

    def __init__(self, batch, uint64_t session, client, uint32_t stream_id, uint32_t topic_id,
                 uint32_t partition_id=0):
        cdef Py_buffer view
        cdef unsigned char *p
        cdef bytes client_raw = int(client).to_bytes(U128_LEN, "little")
        PyObject_GetBuffer(batch, &view, PyBUF_SIMPLE)
        try:
            if view.len < BATCH_HEADER_LEN:
                raise ValueError(f"a batch is at least {BATCH_HEADER_LEN} bytes")
            self.size = SEND_BATCH_POS + view.len
            self._buf = bytearray(self.size)
            p = <unsigned char *>PyByteArray_AS_STRING(self._buf)
            put_request_header(p, <uint32_t>self.size, OP_SEND_MESSAGES, 0, session, 0,
                               <const unsigned char *>client_raw)
            put_u32(p + HEADER_SIZE, SEND_META_LEN)
            _numeric_id(p + SEND_STREAM_POS, stream_id)
            _numeric_id(p + SEND_TOPIC_POS, topic_id)
            p[SEND_KIND_POS] = PARTITION_ID
            p[SEND_KIND_POS + 1] = 4
            put_u32(p + SEND_PARTITION_POS, partition_id)
            memcpy(p + SEND_BATCH_POS, view.buf, view.len)
            self.message_count = le_u32(p + SEND_BATCH_POS + B_COUNT)
            self.batch_length = le_u64(p + SEND_BATCH_POS + B_LENGTH)
            put_u32(p + SEND_COUNT_POS, self.message_count)
            if self.batch_length != <uint64_t>view.len:
                raise ValueError("batch_length does not match the batch")
        finally:
            PyBuffer_Release(&view)

    @property
    def data(self):
        """The frame (a bytearray of fixed size; write it to the socket as is)."""
        return self._buf

    def stamp(self, uint64_t request, uint64_t origin_timestamp, uint32_t partition_id):
        """Set the request number, the partition and the origin timestamp; redo the checksum."""
        cdef unsigned char *p = <unsigned char *>PyByteArray_AS_STRING(self._buf)
        cdef unsigned char *b = p + SEND_BATCH_POS
        cdef uint64_t sum_ = 0
        with nogil:
            put_u64(p + RQ_REQUEST, request)
            put_u32(p + SEND_PARTITION_POS, partition_id)
            put_u64(b + B_ORIGIN_TIMESTAMP, origin_timestamp)
            batch_checksum(b, b + BATCH_HEADER_LEN, self.batch_length - BATCH_HEADER_LEN, &sum_)
            put_u64(b + B_CHECKSUM, sum_)
        return self._buf


cdef class PollFrame:
    """One pre-built POLL_MESSAGES request (layout in the module docstring)."""
    cdef bytearray _buf

    def __init__(self, uint64_t session, client, uint8_t consumer_kind, uint32_t consumer_id,
                 uint32_t stream_id, uint32_t topic_id, uint32_t partition_id, uint8_t strategy,
                 uint32_t count, bint auto_commit=False, bint has_partition=True):
        cdef unsigned char *p
        cdef bytes client_raw = int(client).to_bytes(U128_LEN, "little")
        self._buf = bytearray(HEADER_SIZE + POLL_BODY_LEN)
        p = <unsigned char *>PyByteArray_AS_STRING(self._buf)
        put_request_header(p, HEADER_SIZE + POLL_BODY_LEN, OP_READ, CMD_POLL_MESSAGES, session, 0,
                           <const unsigned char *>client_raw)
        p[HEADER_SIZE] = consumer_kind
        _numeric_id(p + POLL_CONSUMER_POS, consumer_id)
        _numeric_id(p + POLL_STREAM_POS, stream_id)
        _numeric_id(p + POLL_TOPIC_POS, topic_id)
        p[POLL_HAS_PARTITION_POS] = 1 if has_partition else 0
        put_u32(p + POLL_PARTITION_POS, partition_id)
        p[POLL_STRATEGY_POS] = strategy
        put_u32(p + POLL_COUNT_POS, count)
        p[POLL_AUTO_COMMIT_POS] = 1 if auto_commit else 0

    @property
    def data(self):
        return self._buf

    def stamp(self, uint64_t request, uint32_t partition_id, uint64_t value):
        """Set the request number (reads carry the next write's number), partition and value."""
        cdef unsigned char *p = <unsigned char *>PyByteArray_AS_STRING(self._buf)
        put_u64(p + RQ_REQUEST, request)
        put_u32(p + POLL_PARTITION_POS, partition_id)
        put_u64(p + POLL_VALUE_POS, value)
        return self._buf


def scan_poll(body):
    """Walk a poll reply body: (partition_id, current_offset, count, payload_bytes,
    first_origin_timestamp, next_offset).

    `next_offset` is the offset after the last message served (0 when none); payload bytes
    sum the frames' payload lengths. Raises ValueError when the batches do not frame.
    """
    cdef Py_buffer view
    cdef const unsigned char *p
    cdef const unsigned char *b
    cdef uint64_t n, pos, blen, fpos, flen, payload = 0, first_origin = 0, next_offset = 0
    cdef uint32_t count, bcount, _frame, last_delta = 0
    cdef uint32_t partition_id
    cdef uint64_t current
    cdef bint bad = False
    cdef Cursor head
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char *>view.buf
        n = <uint64_t>view.len
        cur_init(&head, p, n)
        partition_id = cur_u32(&head)
        current = cur_u64(&head)
        count = cur_u32(&head)
        if head.bad:
            raise ValueError(f"poll reply of {view.len} bytes")
        pos = head.pos
        with nogil:
            while n - pos >= BATCH_HEADER_LEN:
                b = p + pos
                blen = le_u64(b + B_LENGTH)
                bcount = le_u32(b + B_COUNT)
                if blen < BATCH_HEADER_LEN or blen > n - pos:
                    bad = True
                    break
                if first_origin == 0:
                    first_origin = le_u64(b + B_ORIGIN_TIMESTAMP)
                fpos = BATCH_HEADER_LEN
                for _frame in range(bcount):
                    if blen - fpos < FRAME_HEADER_LEN:
                        bad = True
                        break
                    flen = (<uint64_t>FRAME_HEADER_LEN + le_u32(b + fpos + F_PAYLOAD_LEN)
                            + le_u32(b + fpos + F_HEADERS_LEN))
                    if flen > blen - fpos:
                        bad = True
                        break
                    payload += le_u32(b + fpos + F_PAYLOAD_LEN)
                    last_delta = le_u32(b + fpos + F_OFFSET_DELTA)
                    fpos += flen
                if bad:
                    break
                if bcount:
                    next_offset = le_u64(b + B_BASE_OFFSET) + last_delta + 1
                pos += blen
            if pos != n:
                bad = True
    finally:
        PyBuffer_Release(&view)
    if bad:
        raise ValueError("poll reply batches do not frame")
    return partition_id, current, count, payload, first_origin, next_offset
