# cython: language_level=3
# A segment in memory and its batch index (layout in the docstring of log_index.pyx). The
# entry accessors are inline here: every reader of an index (read path, recovery) compiles them in.
from libc.stdint cimport uint32_t, uint64_t

from iggy._core.includes.le cimport le_u64
from iggy.storage.log_files cimport Handle

cdef enum:
    INDEX_ENTRY_LEN = 24        # u64 offset, u64 timestamp, u64 position
    IE_OFFSET = 0               # the batch's base_offset
    IE_TIMESTAMP = 8            # its base_timestamp (µs)
    IE_POSITION = 16            # byte offset of the batch in the .log


cdef struct Segment:
    uint64_t base               # offset of its first message; the file names
    uint64_t next               # offset after its last message (== base when empty)
    uint64_t size               # logical bytes of the .log (the file may be longer: preallocation)
    uint64_t max_ts             # base_timestamp of its newest batch (0 when empty)
    Handle *h                   # its files, opened on demand (never cache an fd from it)
    unsigned char *idx          # n_entries x 24 bytes, the .index file image
    uint64_t n_entries
    uint64_t cap_entries        # capacity when idx is malloc'd (the active segment)
    size_t map_len              # > 0 when idx is an mmap of the .index (sealed segments)


cdef inline uint64_t e_off(const Segment *s, uint64_t i) noexcept nogil:
    return le_u64(s.idx + i * INDEX_ENTRY_LEN + IE_OFFSET)


cdef inline uint64_t e_ts(const Segment *s, uint64_t i) noexcept nogil:
    return le_u64(s.idx + i * INDEX_ENTRY_LEN + IE_TIMESTAMP)


cdef inline uint64_t e_pos(const Segment *s, uint64_t i) noexcept nogil:
    return le_u64(s.idx + i * INDEX_ENTRY_LEN + IE_POSITION)


cdef inline uint64_t e_end(const Segment *s, uint64_t i) noexcept nogil:
    """Byte position where batch i ends (the next batch's position, or the logical end)."""
    return e_pos(s, i + 1) if i + 1 < s.n_entries else s.size


cdef void put_entry(unsigned char *e, uint64_t offset, uint64_t ts, uint64_t pos) noexcept nogil
cdef int entries_push(unsigned char **p, uint64_t *n, uint64_t *cap, uint64_t offset, uint64_t ts,
                      uint64_t pos) noexcept nogil
cdef uint64_t entry_at_or_before(const Segment *s, uint64_t offset) noexcept nogil
cdef uint64_t first_entry_at_or_after_ts(const Segment *s, uint64_t ts) noexcept nogil
cdef uint64_t last_entry_ending_by(const Segment *s, uint64_t i0, uint64_t i1, uint64_t limit) noexcept nogil
cdef uint64_t valid_entries(const Segment *s, uint64_t file_end, bint full) noexcept nogil
cdef void close_segment(Segment *s) noexcept nogil


cdef inline uint64_t first_offset(const Segment *segs, Py_ssize_t n_segs) noexcept nogil:
    """The oldest retained offset of segs[0 .. n_segs) (the newest's next when none holds any)."""
    cdef Py_ssize_t k
    for k in range(n_segs):
        if segs[k].next > segs[k].base:
            return segs[k].base
    return segs[n_segs - 1].next if n_segs else 0
