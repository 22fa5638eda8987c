# cython: language_level=3
# One bounds-checked cursor over a byte range, for every codec that reads protocol bodies in C
# (the data plane's request bodies, wire.Reader, the bench tool's reply scanner), instead of
# hand-written `p + k` arithmetic with its own bounds checks.
#
# Reads are sequential from `pos`, little-endian, and never go past `n`. A read that would
# sets `bad` and returns 0 (or NULL); `bad` stays set, so a decoder reads every field and
# checks `bad` once at the end. No GIL, no allocation, nothing raised.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from iggy._core.includes.le cimport le_u16, le_u32, le_u64


cdef struct Cursor:
    const unsigned char *p
    uint64_t n                  # bytes readable from p
    uint64_t pos                # the next byte to read
    bint bad                    # a read ran past n (or a field was out of range)


cdef inline void cur_init(Cursor *c, const unsigned char *p, uint64_t n) noexcept nogil:
    c.p = p
    c.n = n
    c.pos = 0
    c.bad = False


cdef inline uint64_t cur_left(const Cursor *c) noexcept nogil:
    return c.n - c.pos


cdef inline const unsigned char *cur_take(Cursor *c, uint64_t k) noexcept nogil:
    """The next k bytes (NULL, and bad set, when fewer are left)."""
    cdef const unsigned char *at
    if c.bad or c.n - c.pos < k:
        c.bad = True
        return NULL
    at = c.p + c.pos
    c.pos += k
    return at


cdef inline uint8_t cur_u8(Cursor *c) noexcept nogil:
    cdef const unsigned char *at = cur_take(c, 1)
    return at[0] if at != NULL else 0


cdef inline uint8_t cur_bool(Cursor *c) noexcept nogil:
    """A bool byte: 0 or 1; anything else sets bad (a decoder in Python refuses it)."""
    cdef uint8_t v = cur_u8(c)
    if v > 1:
        c.bad = True
    return v


cdef inline uint16_t cur_u16(Cursor *c) noexcept nogil:
    cdef const unsigned char *at = cur_take(c, 2)
    return le_u16(at) if at != NULL else 0


cdef inline uint32_t cur_u32(Cursor *c) noexcept nogil:
    cdef const unsigned char *at = cur_take(c, 4)
    return le_u32(at) if at != NULL else 0


cdef inline uint64_t cur_u64(Cursor *c) noexcept nogil:
    cdef const unsigned char *at = cur_take(c, 8)
    return le_u64(at) if at != NULL else 0
