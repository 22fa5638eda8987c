# cython: language_level=3
# The 256-byte frame header of the 0.9.0 protocol: every offset and size, the frame check and
# the header builders. The one home of these numbers: no other file writes them as literals
# (tests/test_protocol_homes.py). Layout tables in the docstring of header.pyx. The enums are
# anonymous `cpdef enum`s: ints in C (usable as indexes), module attributes of
# iggy.protocol.header in Python (`from iggy.protocol.header import H_SIZE, RP_STATUS`).
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from iggy._core.includes.le cimport le_u32, le_u64, put_u32, put_u64


# sizes and the fields both directions share
cpdef enum:
    HEADER_SIZE = 256           # every frame, both directions: this header, then the body
    H_SIZE = 48                 # u32 header + body
    H_COMMAND = 60              # u8 HeaderCommand
    U128_LEN = 16               # client ids and request checksums are u128


# the command byte (H_COMMAND)
cpdef enum:
    COMMAND_REQUEST = 5
    COMMAND_REPLY = 8
    COMMAND_EVICTION = 13


# request header fields
cpdef enum:
    RQ_CLIENT = 128             # u128, random per session, non-zero
    RQ_CHECKSUM = 144           # u128 XXH3-64 of the body (zero-extended) for checksummed ops, else 0
    RQ_REQUEST = 168            # u64 request number
    RQ_OPERATION = 176          # u8 operation (iggy.protocol.codes OP_*)
    RQ_SESSION = 184            # u64 session (0 before login)
    RQ_CODE = 196               # u32 command code, only for OP_READ


# reply header fields
cpdef enum:
    RP_CHECKSUM = 128           # u128 echo of the request's checksum
    RP_CLIENT = 160             # u128 echo of the request's client
    RP_SESSION = 176            # u64 the session number (upstream names it `op`)
    RP_COMMIT = 184             # u64 commit number
    RP_REQUEST = 200            # u64 echo of the request number
    RP_OPERATION = 208          # u8 echo of the request's operation
    RP_STATUS = 216             # u32 0 = ok, else an Iggy error code and an empty body


# eviction header fields (no body)
cpdef enum:
    EV_CLIENT = 128             # u128 the evicted client
    EV_VERSION = 144            # u32 the server's protocol version (reason 14 only)
    EV_VERSION_MIN = 148        # u32 the oldest version it accepts (reason 14 only)
    EV_REASON = 255             # u8 eviction reason


cdef enum FrameCheck:
    FRAME_OK = 0
    FRAME_BAD_SIZE = 1          # size field below HEADER_SIZE or above the maximum frame
    FRAME_NOT_REQUEST = 2       # command byte is not COMMAND_REQUEST
    FRAME_OVER_LIMIT = 3        # bigger than the limit in force (before login)


cdef inline uint32_t frame_size(const unsigned char *h) noexcept nogil:
    """The size field of the header at h (header + body)."""
    return le_u32(h + H_SIZE)


cdef inline int check_frame(const unsigned char *h, uint32_t max_frame, uint32_t limit) noexcept nogil:
    """The check every engine makes on a request header before waiting for its body.

    max_frame: the largest frame at all; limit: the largest one accepted now (the
    unauthenticated limit before login, else max_frame). A FrameCheck; anything but FRAME_OK
    means the stream cannot be resynchronised and the connection ends."""
    cdef uint32_t size = le_u32(h + H_SIZE)
    if size < HEADER_SIZE or size > max_frame:
        return FRAME_BAD_SIZE
    if h[H_COMMAND] != COMMAND_REQUEST:
        return FRAME_NOT_REQUEST
    if size > limit:
        return FRAME_OVER_LIMIT
    return FRAME_OK


cdef inline void put_request_header(unsigned char *h, uint32_t size, uint8_t operation, uint32_t code,
                                    uint64_t session, uint64_t request,
                                    const unsigned char *client) noexcept nogil:
    """A request header as the 0.9.0 SDK writes it; client: 16 bytes (u128). code: the
    command code of an OP_READ, 0 for every other operation. The request checksum is left 0
    (the caller fills it in for the operations that carry one)."""
    memset(h, 0, HEADER_SIZE)
    put_u32(h + H_SIZE, size)
    h[H_COMMAND] = COMMAND_REQUEST
    memcpy(h + RQ_CLIENT, client, U128_LEN)
    put_u64(h + RQ_REQUEST, request)
    h[RQ_OPERATION] = operation
    put_u64(h + RQ_SESSION, session)
    put_u32(h + RQ_CODE, code)


cdef inline void put_reply_header(unsigned char *o, const unsigned char *req, uint32_t status,
                                  uint64_t body_len, uint64_t session, uint64_t commit) noexcept nogil:
    """The reply header to the request header at req, for a body of body_len bytes."""
    memset(o, 0, HEADER_SIZE)
    put_u32(o + H_SIZE, <uint32_t>(HEADER_SIZE + body_len))
    o[H_COMMAND] = COMMAND_REPLY
    memcpy(o + RP_CHECKSUM, req + RQ_CHECKSUM, U128_LEN)
    memcpy(o + RP_CLIENT, req + RQ_CLIENT, U128_LEN)
    put_u64(o + RP_SESSION, session)
    put_u64(o + RP_COMMIT, commit)
    put_u64(o + RP_REQUEST, le_u64(req + RQ_REQUEST))
    o[RP_OPERATION] = req[RQ_OPERATION]
    put_u32(o + RP_STATUS, status)


cdef inline void reply_to_error(unsigned char *o, uint32_t status) noexcept nogil:
    """Turn a reply header built for a body into a body-less refusal with `status` (a reply
    held back for an fsync that then failed). The frame is HEADER_SIZE bytes afterwards."""
    put_u32(o + H_SIZE, HEADER_SIZE)
    put_u32(o + RP_STATUS, status)


cdef inline uint8_t request_operation(const unsigned char *h) noexcept nogil:
    return h[RQ_OPERATION]


cdef inline uint32_t request_code(const unsigned char *h) noexcept nogil:
    return le_u32(h + RQ_CODE)
