# cython: language_level=3, embedsignature=True
"""RESP2 (Redis) reply scanners for the Redis Streams side of `perf/compare_peers.py`.

The comparison must measure the peers, not its own client: the Redis client hands each
socket read to `resp_skip` (pipelined XADD acks) or `resp_xread` (one XREAD reply) and does no
per-message Python work. Benchmark tooling only: built in place by `setup.py build_ext
--inplace` (scripts/setup.sh), never part of the server wheel.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t
from libc.string cimport memchr


# --------------------------------------------------------------------------- RESP2 (Redis)

cdef enum:
    RESP_INCOMPLETE = -1
    RESP_PROTOCOL = -2
    RESP_ERROR_REPLY = -3


cdef int64_t _resp_line(const unsigned char *p, int64_t pos, int64_t end, int64_t *value) noexcept nogil:
    """Parse the integer of the line starting at p[pos] (after the type byte); returns the
    position after its CRLF, or RESP_INCOMPLETE / RESP_PROTOCOL."""
    cdef const unsigned char *cr
    cdef int64_t v = 0, i
    cdef bint neg = False
    if pos >= end:
        return RESP_INCOMPLETE
    cr = <const unsigned char *>memchr(p + pos, 13, <size_t>(end - pos))
    if cr == NULL or cr - p + 1 >= end:
        return RESP_INCOMPLETE
    i = pos
    if p[i] == 45:   # '-'
        neg = True
        i += 1
    while p + i < cr:
        if p[i] < 48 or p[i] > 57:
            return RESP_PROTOCOL
        v = v * 10 + (p[i] - 48)
        i += 1
    value[0] = -v if neg else v
    return (cr - p) + 2


cdef int64_t _resp_header(const unsigned char *p, int64_t pos, int64_t end, unsigned char kind,
                          int64_t *value) noexcept nogil:
    """The `<kind><integer>CRLF` that opens an array (`*`) or bulk string (`$`) at p[pos]: the
    position after it with *value set, or a negative RESP_* status."""
    if pos >= end:
        return RESP_INCOMPLETE
    if p[pos] != kind:
        return RESP_PROTOCOL
    return _resp_line(p, pos + 1, end, value)


cdef int64_t _resp_skip(const unsigned char *p, int64_t pos, int64_t end, int depth) noexcept nogil:
    """Position after one complete RESP2 value at p[pos], or a negative RESP_* status."""
    cdef int64_t n = 0, nxt, _i
    cdef const unsigned char *cr
    cdef unsigned char t
    if depth > 32:
        return RESP_PROTOCOL
    if pos >= end:
        return RESP_INCOMPLETE
    t = p[pos]
    if t == 43 or t == 45:          # '+' simple string, '-' error
        cr = <const unsigned char *>memchr(p + pos, 13, <size_t>(end - pos))
        if cr == NULL or cr - p + 1 >= end:
            return RESP_INCOMPLETE
        return RESP_ERROR_REPLY if t == 45 else (cr - p) + 2
    nxt = _resp_line(p, pos + 1, end, &n)
    if nxt < 0:
        return nxt
    if t == 58:                      # ':' integer
        return nxt
    if t == 36:                      # '$' bulk string
        if n < 0:
            return nxt
        if nxt + n + 2 > end:
            return RESP_INCOMPLETE
        return nxt + n + 2
    if t == 42:                      # '*' array
        for _i in range(n):
            nxt = _resp_skip(p, nxt, end, depth + 1)
            if nxt < 0:
                return nxt
        return nxt
    return RESP_PROTOCOL


cdef int64_t _resp_pair(const unsigned char *p, int64_t pos, int64_t end, int64_t *count,
                        int64_t *bulk_pos, int64_t *bulk_len) noexcept nogil:
    """`*2 [<first>, *<count> ...]` at p[pos]: a stream of an XREAD reply (name, entries) or
    one of its entries (id, fields). Returns the position of the inner array's first element
    with *count set, or a negative RESP_* status. With `bulk_pos`, the first value must be a
    bulk string, its bytes p[*bulk_pos:*bulk_pos + *bulk_len]."""
    cdef int64_t two = 0
    pos = _resp_header(p, pos, end, 42, &two)
    if pos < 0:
        return pos
    if bulk_pos != NULL:
        bulk_pos[0] = _resp_header(p, pos, end, 36, bulk_len)
        if bulk_pos[0] < 0:
            return bulk_pos[0]
    pos = _resp_skip(p, pos, end, 0)
    if pos < 0:
        return pos
    return _resp_header(p, pos, end, 42, count)


class RespError(Exception):
    """An error reply (`-ERR ...`) or bytes that are not RESP2."""


cdef const unsigned char *_view_of(object buf, Py_buffer *view, Py_ssize_t *end) except? NULL:
    """The bytes of `buf` (a read-only buffer the caller releases), with *end shortened to them."""
    PyObject_GetBuffer(buf, view, PyBUF_SIMPLE)
    if end[0] > view.len:
        end[0] = view.len
    return <const unsigned char *>view.buf


cdef _resp_raise(const unsigned char *p, int64_t end, int64_t status):
    if status == RESP_ERROR_REPLY:
        raise RespError(bytes(p[:min(end, 200)]).split(b"\r\n", 1)[0].decode(errors="replace"))
    raise RespError("malformed RESP reply")


def resp_skip(buf, Py_ssize_t end, Py_ssize_t values):
    """Position after `values` complete RESP2 values at the start of buf[:end], or -1 when
    more bytes are needed. Raises RespError on an error reply (pipelined XADD acks)."""
    cdef Py_buffer view
    cdef int64_t pos = 0, _i
    cdef const unsigned char *p
    p = _view_of(buf, &view, &end)
    try:
        with nogil:
            for _i in range(values):
                pos = _resp_skip(p, pos, end, 0)
                if pos < 0:
                    break
        if pos == RESP_INCOMPLETE:
            return -1
        if pos < 0:
            _resp_raise(p, end, pos)
        return pos
    finally:
        PyBuffer_Release(&view)


def resp_xread(buf, Py_ssize_t end):
    """Scan one XREAD reply (RESP2) at the start of buf[:end].

    Returns None when more bytes are needed, else (consumed, entries, last_id, value_bytes):
    the number of stream entries, the id of the last one (bytes, None when the reply is nil)
    and the summed length of every field value (the message payloads).
    """
    cdef Py_buffer view
    cdef const unsigned char *p
    cdef int64_t pos = 0, n_streams = 0, n_entries = 0, n_fields = 0, blen = 0
    cdef int64_t _s, _e, f, entries = 0, values = 0, id_pos = -1, id_len = 0
    cdef int64_t status = 0
    p = _view_of(buf, &view, &end)
    try:
        with nogil:
            while True:
                if pos >= end:
                    status = RESP_INCOMPLETE
                    break
                if p[0] != 42:               # not an array: an error or something unexpected
                    status = _resp_skip(p, 0, end, 0)
                    if status >= 0:
                        status = RESP_PROTOCOL
                    break
                pos = _resp_line(p, 1, end, &n_streams)
                if pos < 0:
                    status = pos
                    break
                for _s in range(n_streams if n_streams > 0 else 0):
                    pos = _resp_pair(p, pos, end, &n_entries, NULL, NULL)  # *2 [$name, *N entries]
                    if pos < 0:
                        status = pos
                        break
                    for _e in range(n_entries if n_entries > 0 else 0):
                        pos = _resp_pair(p, pos, end, &n_fields, &id_pos, &id_len)  # *2 [$id, *2k fields]
                        if pos < 0:
                            status = pos
                            break
                        for f in range(n_fields if n_fields > 0 else 0):
                            if pos >= end:
                                status = RESP_INCOMPLETE
                                break
                            if f % 2 == 1 and p[pos] == 36:
                                if _resp_line(p, pos + 1, end, &blen) >= 0 and blen > 0:
                                    values += blen
                            pos = _resp_skip(p, pos, end, 0)
                            if pos < 0:
                                status = pos
                                break
                        if status < 0:
                            break
                        entries += 1
                    if status < 0:
                        break
                break
        if status == RESP_INCOMPLETE:
            return None
        if status < 0:
            _resp_raise(p, end, status)
        last_id = bytes(p[id_pos:id_pos + id_len]) if id_pos >= 0 else None
        return pos, entries, last_id, values
    finally:
        PyBuffer_Release(&view)
