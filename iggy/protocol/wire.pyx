# cython: language_level=3
"""The Iggy 0.9.0 binary protocol codec: frames, headers, body fields, checksums.

Every frame, in both directions, is a fixed 256-byte header followed by a body. All integers
are little-endian. The header's layout, its offsets and the frame check live in
`iggy.protocol.header` (header.pxd, cimported here); this module builds and parses whole
frames with them.

Body fields: Identifier = u8 kind (1 numeric, 2 string) + u8 length + value; WireName = u8
length 1..255 + UTF-8; options and user headers = TLV entries `[u8 kind][u32 len][bytes]`.
"""
from cpython.bytearray cimport (PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE,
                                PyByteArray_Resize)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from cpython.buffer cimport PyBUF_WRITE
from cpython.memoryview cimport PyMemoryView_FromMemory
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove, memset

from iggy._core.includes.le cimport le_u16, le_u32, le_u64, put_u16, put_u32, put_u64
from iggy._core.includes.xxh cimport XXH3_64bits
from iggy.protocol.ccodes cimport IDENTIFIER_NUMERIC, IDENTIFIER_STRING, OP_READ
from iggy.protocol.cursor cimport cur_init, cur_take
from iggy.protocol.header cimport (COMMAND_EVICTION as _EVICTION, COMMAND_REPLY as _REPLY,
                                   COMMAND_REQUEST as _REQUEST, EV_CLIENT, EV_REASON, EV_VERSION,
                                   EV_VERSION_MIN, FRAME_BAD_SIZE, FRAME_NOT_REQUEST, FRAME_OK, H_COMMAND,
                                   H_SIZE, HEADER_SIZE as _HEADER, RP_OPERATION, RP_STATUS, RQ_CHECKSUM,
                                   RQ_CLIENT, RQ_CODE, RQ_OPERATION, RQ_REQUEST, RQ_SESSION, U128_LEN,
                                   check_frame, frame_size, put_reply_header, put_request_header)

from iggy.protocol.errors import ErrorCode, IggyError

cdef enum:
    _CLASSIC_HEADER = 8         # what detect() needs to tell the two protocols apart
    _P_UNKNOWN = 0
    _P_CURRENT = 1
    _P_CLASSIC = 2
    _BASE_BUFFER = 65536        # a FrameReader's buffer, and what it shrinks back to
    _BIG_BUFFER = 1 << 20       # above this it shrinks once the big frame is taken out


cdef extern from "<malloc.h>" nogil:
    int malloc_trim(size_t pad)

HEADER_SIZE = _HEADER
COMMAND_REQUEST = _REQUEST
COMMAND_REPLY = _REPLY
COMMAND_EVICTION = _EVICTION
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
PROTOCOL_VERSION = 0x00002C00  # 0.11.0 packed as major << 20 | minor << 10 | patch

_E_COMMAND = ErrorCode.INVALID_COMMAND
_E_FORMAT = ErrorCode.INVALID_FORMAT
_E_IDENTIFIER = ErrorCode.INVALID_IDENTIFIER


class FrameError(ValueError):
    """The byte stream cannot be framed (size field out of range, not a request)."""


# what the first bytes of a connection say it speaks (FrameReader.detect)
PROTOCOL_UNKNOWN = _P_UNKNOWN    # fewer than 8 bytes so far
PROTOCOL_CURRENT = _P_CURRENT    # 0.9: a 256-byte header whose first 48 bytes are zero from clients
PROTOCOL_CLASSIC = _P_CLASSIC    # before 0.9: [u32 length][u32 code][payload] (iggy.protocol.classic)


# --------------------------------------------------------------------------- headers

cdef class RequestHeader:
    """The fields of a request header that the server acts on; `raw` is the 256 bytes."""

    def __cinit__(self, bytes raw):
        cdef const unsigned char *p
        if PyBytes_GET_SIZE(raw) != _HEADER:
            raise FrameError("a header is exactly 256 bytes")
        self.raw = raw
        p = <const unsigned char *>PyBytes_AS_STRING(raw)
        self.size = frame_size(p)
        self.command = p[H_COMMAND]
        self.request = le_u64(p + RQ_REQUEST)
        self.operation = p[RQ_OPERATION]
        self.session = le_u64(p + RQ_SESSION)
        self.code = le_u32(p + RQ_CODE)

    @property
    def client(self):
        """The u128 client id as a Python int."""
        return int.from_bytes(self.client_bytes, "little")

    @property
    def client_bytes(self):
        return self.raw[RQ_CLIENT:RQ_CLIENT + U128_LEN]

    @property
    def request_checksum(self):
        return int.from_bytes(self.raw[RQ_CHECKSUM:RQ_CHECKSUM + U128_LEN], "little")

    def __repr__(self):
        return (f"RequestHeader(size={self.size}, command={self.command}, operation={self.operation}, "
                f"code={self.code}, session={self.session}, request={self.request})")


def parse_header(data):
    """Parse the first 256 bytes of `data` as a request header."""
    return RequestHeader(bytes(data[:_HEADER]))


cdef inline void _fill_reply_header(unsigned char *p, RequestHeader req, uint32_t status,
                                    Py_ssize_t body_len, uint64_t session, uint64_t commit):
    put_reply_header(p, <const unsigned char *>PyBytes_AS_STRING(req.raw), status, body_len, session, commit)


def build_reply_header(RequestHeader req not None, uint32_t status, Py_ssize_t body_len,
                       uint64_t session=0, uint64_t commit=0):
    """The 256-byte reply header for `req`; the body is written after it separately."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEADER)
    _fill_reply_header(<unsigned char *>PyBytes_AS_STRING(out), req, status, body_len, session, commit)
    return out


def build_reply(RequestHeader req not None, uint32_t status, body=b"", uint64_t session=0,
                uint64_t commit=0):
    """A whole reply frame: header + body (the body must be empty when status != 0)."""
    cdef const unsigned char[:] view = body
    cdef Py_ssize_t n = view.shape[0]
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEADER + n)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    _fill_reply_header(p, req, status, n, session, commit)
    if n:
        memcpy(p + _HEADER, &view[0], n)
    return out


def build_eviction(bytes client not None, uint8_t reason, uint32_t version=0, uint32_t version_min=0):
    """A body-less Eviction frame (login refused or session killed)."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEADER)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    memset(p, 0, _HEADER)
    put_u32(p + H_SIZE, _HEADER)
    p[H_COMMAND] = _EVICTION
    if PyBytes_GET_SIZE(client) == U128_LEN:
        memcpy(p + EV_CLIENT, PyBytes_AS_STRING(client), U128_LEN)
    put_u32(p + EV_VERSION, version)
    put_u32(p + EV_VERSION_MIN, version_min)
    p[EV_REASON] = reason
    return out


def build_request(uint8_t operation, uint32_t code=0, body=b"", uint64_t session=0,
                  uint64_t request=0, client=1, bint with_checksum=False):
    """A request frame as the SDK builds it (used by tests, the bench tool and the CLI)."""
    cdef const unsigned char[:] view = body
    cdef Py_ssize_t n = view.shape[0]
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _HEADER + n)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    cdef bytes client_raw = int(client).to_bytes(U128_LEN, "little")
    put_request_header(p, <uint32_t>(_HEADER + n), operation, code if operation == OP_READ else 0, session,
                       request, <const unsigned char *>PyBytes_AS_STRING(client_raw))
    if with_checksum:
        put_u64(p + RQ_CHECKSUM, XXH3_64bits(&view[0] if n else NULL, n))
    if n:
        memcpy(p + _HEADER, &view[0], n)
    return out


def parse_reply_header(data):
    """(size, command, operation, status, session_op) of a reply or eviction header."""
    cdef const unsigned char[:] v = data
    if v.shape[0] < _HEADER:
        raise FrameError("a header is exactly 256 bytes")
    return frame_size(&v[0]), v[H_COMMAND], v[RP_OPERATION], le_u32(&v[RP_STATUS]), v[EV_REASON]


# --------------------------------------------------------------------------- framing

cdef class FrameReader:
    """Splits a byte stream into frames.

    Bytes arrive either by `feed(data)` (a copy), or straight from the socket through
    `get_buffer()` / `buffer_updated(n)` (asyncio's BufferedProtocol: no copy). The buffer is a
    private C allocation that grows (doubling) and is compacted in place, so a 1 MB frame
    costs one copy into it whatever the chunk size. `next_frame()` returns `(header, body)`
    for each complete frame, or None when more bytes are needed. A size field below 256 or
    above `max_frame_size`, or a header that is not a request, raises FrameError: the stream
    can't be resynchronised, so the connection must end.

    Before login (`authenticated` false, the connection's to set) a frame may be at most
    `max_unauthenticated_frame` bytes (0: no such limit): a bigger size field raises
    FrameError as soon as the header is in, so a client that has not logged in never makes
    the reader hold more than that limit plus one read. `frame_limit` is the limit in force.

    The classic protocol (clients before 0.9) shares the reader: `detect()` looks at the
    first 8 bytes of the connection, and once it has said PROTOCOL_CLASSIC the frames are
    taken with `next_classic_frame()` instead, under the same limits (a classic frame's
    size is its 4-byte length field plus the length).

    A buffer that grew past 1 MiB for a big frame goes back to 64 KiB once that frame has
    been taken out (what stays buffered fits), so memory follows the current frame, not the
    largest one ever seen.
    """
    cdef unsigned char *_buf
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end
    cdef readonly uint32_t max_frame_size
    cdef readonly uint32_t max_unauthenticated_frame
    cdef public bint authenticated
    cdef readonly int protocol

    def __cinit__(self, uint32_t max_frame_size=DEFAULT_MAX_FRAME_SIZE, uint32_t max_unauthenticated_frame=0):
        self._buf = NULL
        self._cap = self._start = self._end = 0
        self.max_frame_size = max_frame_size
        self.max_unauthenticated_frame = max_unauthenticated_frame
        self.authenticated = False
        self.protocol = _P_UNKNOWN

    def __dealloc__(self):
        free(self._buf)

    @property
    def frame_limit(self):
        """The largest frame accepted now."""
        return self._limit()

    cdef inline uint32_t _limit(self):
        if self.authenticated or self.max_unauthenticated_frame == 0 \
                or self.max_unauthenticated_frame > self.max_frame_size:
            return self.max_frame_size
        return self.max_unauthenticated_frame

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        """Make room for `extra` more bytes after the buffered ones."""
        cdef Py_ssize_t cap
        cdef unsigned char *grown
        if self._start == self._end:
            self._start = self._end = 0
        if self._cap - self._end >= extra:
            return 0
        if self._start:
            memmove(self._buf, self._buf + self._start, self._end - self._start)
            self._end -= self._start
            self._start = 0
            if self._cap - self._end >= extra:
                return 0
        cap = self._cap * 2 if self._cap else _BASE_BUFFER
        while cap - self._end < extra:
            cap *= 2
        grown = <unsigned char *>realloc(self._buf, cap)
        if grown == NULL:
            raise MemoryError()
        self._buf = grown
        self._cap = cap
        return 0

    cdef void _shrink(self) noexcept:
        """Back to the base size after a big frame, keeping what is buffered (<= 64 KiB)."""
        cdef Py_ssize_t avail = self._end - self._start
        cdef unsigned char *small
        if self._cap <= _BIG_BUFFER or avail > _BASE_BUFFER:
            return
        if avail == 0:
            free(self._buf)
            self._buf = NULL
            self._cap = self._start = self._end = 0
            return
        small = <unsigned char *>malloc(_BASE_BUFFER)
        if small == NULL:
            return
        memcpy(small, self._buf + self._start, avail)
        free(self._buf)
        self._buf = small
        self._cap = _BASE_BUFFER
        self._start = 0
        self._end = avail

    def feed(self, const unsigned char[:] data not None):
        cdef Py_ssize_t n = data.shape[0]
        if n:
            self._reserve(n)
            memcpy(self._buf + self._end, &data[0], n)
            self._end += n

    def get_buffer(self, Py_ssize_t sizehint=-1):
        """A writable view of free space (at least the rest of the frame being received)."""
        cdef Py_ssize_t want = _BASE_BUFFER, avail = self._end - self._start
        cdef uint64_t size
        if self.protocol == _P_CLASSIC:
            if avail >= _CLASSIC_HEADER:
                size = <uint64_t>le_u32(self._buf + self._start) + 4
                if size <= self._limit() and <Py_ssize_t>size - avail > want:
                    want = size - avail
        elif avail >= _HEADER:
            size = frame_size(self._buf + self._start)
            if _HEADER <= size <= self._limit() and <Py_ssize_t>size - avail > want:
                want = size - avail
        self._reserve(want)
        return PyMemoryView_FromMemory(<char *>self._buf + self._end, self._cap - self._end, PyBUF_WRITE)

    def buffer_updated(self, Py_ssize_t nbytes):
        if nbytes < 0 or nbytes > self._cap - self._end:
            raise ValueError("buffer_updated beyond the buffer")
        self._end += nbytes

    @property
    def buffered(self):
        return self._end - self._start

    @property
    def capacity(self):
        """Bytes allocated for the buffer now (tests: it shrinks back after a big frame)."""
        return self._cap

    def next_frame(self):
        cdef Py_ssize_t avail = self._end - self._start
        cdef const unsigned char *p
        cdef uint32_t size, limit
        cdef int check
        cdef RequestHeader hdr
        if avail < _HEADER:
            return None
        p = self._buf + self._start
        size = frame_size(p)
        limit = self._limit()
        check = check_frame(p, self.max_frame_size, limit)
        if check == FRAME_BAD_SIZE:
            raise FrameError(f"frame size {size} outside {_HEADER}..{self.max_frame_size}")
        if check == FRAME_NOT_REQUEST:
            raise FrameError(f"header command {p[H_COMMAND]} is not a request")
        if check != FRAME_OK:
            raise FrameError(f"frame size {size} over limits.max_unauthenticated_frame ({limit}) before login")
        if avail < size:
            return None
        hdr = RequestHeader(PyBytes_FromStringAndSize(<const char *>p, _HEADER))
        body = PyBytes_FromStringAndSize(<const char *>p + _HEADER, size - _HEADER)
        self._start += size
        if self._start == self._end:
            self._start = self._end = 0
        if self._cap > _BIG_BUFFER:
            self._shrink()
        return hdr, body

    def detect(self):
        """Which protocol the connection speaks, from its first 8 bytes (PROTOCOL_*).

        A 0.9 client frame starts with 48 zero bytes (checksum, checksum_body and cluster are
        0 in client traffic); a classic frame with a non-zero u32 length and a non-zero u32
        command code. PROTOCOL_UNKNOWN until 8 bytes are in; anything else is FrameError.
        The answer is kept in `protocol`.
        """
        cdef const unsigned char *p
        cdef uint32_t length, code
        if self.protocol != _P_UNKNOWN:
            return self.protocol
        if self._end - self._start < _CLASSIC_HEADER:
            return _P_UNKNOWN
        p = self._buf + self._start
        length = le_u32(p)
        code = le_u32(p + 4)
        if length == 0 and code == 0:
            self.protocol = _P_CURRENT
        elif length != 0 and code != 0:
            self.protocol = _P_CLASSIC
        else:
            raise FrameError(f"first bytes are neither a 0.9 header nor a classic frame (length {length}, code {code})")
        return self.protocol

    def next_classic_frame(self):
        """(code, body) of the next complete classic frame, or None when more bytes are needed.

        Classic frame: `[u32 length][u32 code][length - 4 bytes of body]`. A length below 4,
        or a frame (4 + length bytes) above the limit in force, raises FrameError: the
        stream cannot be resynchronised.
        """
        cdef Py_ssize_t avail = self._end - self._start
        cdef const unsigned char *p
        cdef uint64_t size
        cdef uint32_t length, limit
        if avail < _CLASSIC_HEADER:
            return None
        p = self._buf + self._start
        length = le_u32(p)
        size = <uint64_t>length + 4
        if length < 4:
            raise FrameError(f"classic frame length {length} below 4")
        if size > self.max_frame_size:
            raise FrameError(f"classic frame size {size} above {self.max_frame_size}")
        limit = self._limit()
        if size > limit:
            raise FrameError(f"classic frame size {size} over limits.max_unauthenticated_frame ({limit}) before login")
        if <uint64_t>avail < size:
            return None
        code = le_u32(p + 4)
        body = PyBytes_FromStringAndSize(<const char *>p + _CLASSIC_HEADER, <Py_ssize_t>size - _CLASSIC_HEADER)
        self._start += <Py_ssize_t>size
        if self._start == self._end:
            self._start = self._end = 0
        if self._cap > _BIG_BUFFER:
            self._shrink()
        return code, body


def release_free_memory():
    """Hand the C heap's free pages back to the kernel (glibc malloc_trim(0)).

    Big buffers are given back by free() only when glibc served them with their own mmap.
    glibc raises its mmap threshold to the size of each mmapped block freed (up to 32 MiB),
    so after one big reply later blocks of 1-32 MiB (Python bytes of polls and frame bodies)
    come from the heap, and freeing them leaves those pages in the process: RSS stays at the
    high-water mark. malloc_trim(0) returns every free page of every arena. The engines call
    it after a burst of big buffers was released, not per request (it walks the heap).
    """
    malloc_trim(0)


def receive_buffer(Py_ssize_t size):
    """A bytearray of `size` bytes as malloc left them: bytearray(size) zeroes them first, a
    pass over the whole buffer wasted when it is filled whole before anything reads it (a
    replica-link frame's body, received into it: iggy.cluster.replica_frames)."""
    if size < 0:
        raise ValueError("negative size")
    return PyByteArray_FromStringAndSize(NULL, size)


# --------------------------------------------------------------------------- body reader

cdef class Reader:
    """A bounds-checked cursor over a request body.

    Running past the end or finding a malformed field raises IggyError(InvalidCommand), the
    code the reference server gives an undecodable body.

    Bytes after the last field a command reads are ignored: Apache Iggy decodes every request
    body with `WireDecode::decode_from`, which reads the fields it knows and drops the rest
    (core/binary_protocol/src/codec.rs), and clients rely on it (the Node.js SDK sends
    DeleteTopic with a trailing u32). So no handler checks for the end of its body; the
    exceptions are decided here too: an options block runs to the end of the body (`tlv`),
    and a length-prefixed block must be consumed exactly (`end_of_block`).
    """

    def __cinit__(self, data, Py_ssize_t start=0):
        self._data = bytes(data)
        cur_init(&self._c, <const unsigned char *>PyBytes_AS_STRING(self._data), PyBytes_GET_SIZE(self._data))
        if start < 0 or <uint64_t>start > self._c.n:
            raise IggyError(_E_COMMAND)
        self._c.pos = start

    cdef const unsigned char *_need(self, Py_ssize_t n) except NULL:
        cdef const unsigned char *p = cur_take(&self._c, n) if n >= 0 else NULL
        if p == NULL:
            self._c.bad = False         # the caller may catch the error and read on
            raise IggyError(_E_COMMAND, "request body is too short")
        return p

    @property
    def position(self):
        return self._c.pos

    @property
    def data(self):
        return self._data

    cpdef Py_ssize_t remaining(self):
        return self._c.n - self._c.pos

    cpdef uint8_t u8(self) except? 255:
        return self._need(1)[0]

    cpdef bint bool(self) except -1:
        return self._need(1)[0] != 0

    cpdef uint16_t u16(self) except? 65535:
        return le_u16(self._need(2))

    cpdef uint32_t u32(self) except? 0xFFFFFFFF:
        return le_u32(self._need(4))

    cpdef uint64_t u64(self) except? 0xFFFFFFFFFFFFFFFF:
        return le_u64(self._need(8))

    def u128(self):
        cdef const unsigned char *p = self._need(16)
        return le_u64(p) | (<object>le_u64(p + 8) << 64)

    def take(self, Py_ssize_t n):
        cdef const unsigned char *p = self._need(n)
        return PyBytes_FromStringAndSize(<const char *>p, n)

    def rest(self):
        return self.take(self._c.n - self._c.pos)

    def bytes8(self):
        """u8 length (0..255) + raw bytes."""
        return self.take(self.u8())

    def bytes32(self):
        """u32 length + raw bytes."""
        return self.take(self.u32())

    def name(self):
        """WireName: u8 length 1..255 + UTF-8."""
        cdef uint8_t n = self.u8()
        if n == 0:
            raise IggyError(_E_COMMAND, "empty name")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IggyError(_E_COMMAND, "name is not UTF-8") from None

    def string8(self):
        """u8 length (0..255) + UTF-8 (passwords, tokens)."""
        raw = self.bytes8()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IggyError(_E_COMMAND, "string is not UTF-8") from None

    def identifier(self):
        """Identifier: numeric -> int, string -> str (a string of digits is numeric)."""
        cdef uint8_t kind = self.u8()
        cdef uint8_t n = self.u8()
        if kind == IDENTIFIER_NUMERIC:
            if n != 4:
                raise IggyError(_E_IDENTIFIER, "numeric identifier must be 4 bytes")
            return self.u32()
        if kind == IDENTIFIER_STRING:
            if n == 0:
                raise IggyError(_E_IDENTIFIER, "empty identifier")
            raw = self.take(n)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise IggyError(_E_IDENTIFIER, "identifier is not UTF-8") from None
            if text.isdigit() and text.isascii() and int(text) <= 0xFFFFFFFF:
                return int(text)
            return text
        raise IggyError(_E_IDENTIFIER, f"unknown identifier kind {kind}")

    def end_of_block(self):
        """Refuse bytes left over in a length-prefixed block read by its own Reader.

        Only for blocks whose length the body states (the permissions of CreateUser and
        UpdatePermissions): upstream refuses a block whose decoded size differs from its
        length field (core/binary_protocol/src/requests/users/create_user.rs). Never call it on
        a whole request body: trailing bytes there are ignored (see the class docstring).
        """
        if self._c.pos != self._c.n:
            raise IggyError(_E_COMMAND, "length-prefixed block has bytes after its fields")

    def tlv(self, Py_ssize_t max_entries=2048, Py_ssize_t max_bytes=100000):
        """TLV entries `[u8 kind][u32 len][bytes]` up to the end of the body, as a list of
        (kind, bytes). Used for the options block of requests (it has no length prefix)."""
        cdef Py_ssize_t start = self._c.pos
        cdef uint8_t kind
        cdef uint32_t n
        out = []
        if <Py_ssize_t>self._c.n - start > max_bytes:
            raise IggyError(ErrorCode.OPTIONS_BLOCK_TOO_LARGE)
        while self._c.pos < self._c.n:
            if len(out) >= max_entries:
                raise IggyError(ErrorCode.OPTIONS_BLOCK_TOO_LARGE)
            kind = self.u8()
            n = self.u32()
            out.append((kind, self.take(n)))
        return out


# --------------------------------------------------------------------------- body writer

cdef class Writer:
    """Appends little-endian fields to a growing buffer (response bodies)."""
    cdef bytearray _buf

    def __cinit__(self):
        self._buf = bytearray()

    cdef inline unsigned char *_grow(self, Py_ssize_t n) except NULL:
        cdef Py_ssize_t old = PyByteArray_GET_SIZE(self._buf)
        PyByteArray_Resize(self._buf, old + n)
        return <unsigned char *>PyByteArray_AS_STRING(self._buf) + old

    def u8(self, uint8_t v):
        self._grow(1)[0] = v
        return self

    def bool(self, v):
        self._grow(1)[0] = 1 if v else 0
        return self

    def u16(self, uint16_t v):
        put_u16(self._grow(2), v)
        return self

    def u32(self, uint32_t v):
        put_u32(self._grow(4), v)
        return self

    def u64(self, uint64_t v):
        put_u64(self._grow(8), v)
        return self

    def u128(self, v):
        self._buf += int(v).to_bytes(16, "little")
        return self

    def f32(self, double v):
        cdef float f = <float>v
        memcpy(self._grow(4), &f, 4)
        return self

    def raw(self, data):
        self._buf += data
        return self

    def name(self, str text):
        """WireName: u8 length + UTF-8 (1..255 bytes)."""
        raw = text.encode("utf-8")
        if not 0 < len(raw) <= 255:
            raise ValueError("a wire name is 1..255 bytes")
        self.u8(len(raw))
        self._buf += raw
        return self

    def bytes8(self, data):
        if len(data) > 255:
            raise ValueError("at most 255 bytes")
        self.u8(len(data))
        self._buf += data
        return self

    def str32(self, str text):
        """u32 length + UTF-8."""
        raw = text.encode("utf-8")
        self.u32(len(raw))
        self._buf += raw
        return self

    def options(self, entries):
        """A response options block: u32 byte length, then TLV entries [(kind, bytes)]."""
        block = bytearray()
        for kind, value in entries:
            block.append(kind)
            block += len(value).to_bytes(4, "little")
            block += value
        self.u32(len(block))
        self._buf += block
        return self

    def __len__(self):
        return PyByteArray_GET_SIZE(self._buf)

    def getvalue(self):
        return bytes(self._buf)
