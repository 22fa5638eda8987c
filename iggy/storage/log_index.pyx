# cython: language_level=3, embedsignature=True
"""The batch index of a segment: its file layout, the Segment in memory, the seeks.

`<base offset, 20 digits>.index`, next to the segment's .log, 24 bytes per batch (all
integers little-endian; IE_* in log_index.pxd)::

     0  u64 offset      the batch's base_offset
     8  u64 timestamp   its base_timestamp (µs)
    16  u64 position    byte offset of the batch in .log

The index is dense per batch, where upstream writes one entry per flush (SEMANTICS 8.4): the
batch is the unit of every write here, so one entry per batch costs one 24-byte pwrite and
turns a poll into one binary search plus one pread, with no header walk. The active
segment's entries are kept in a malloc'd copy of its .index; a sealed segment's .index is
mmapped read-only (the page cache holds it, not the heap).

Segment (log_index.pxd), one per segment file pair, in PartitionLog.segs oldest first::

    base        offset of its first message (the file names)
    next        offset after its last message (== base when empty)
    size        logical bytes of the .log (the file may be longer: preallocation)
    max_ts      base_timestamp of its newest batch (0 when empty)
    h           its files (iggy.storage.log_files.Handle), opened on demand
    idx         n_entries x 24 bytes, the .index file image (malloc'd: cap_entries; mmapped: map_len)

Seeks: `entry_at_or_before` (by offset), `first_entry_at_or_after_ts` (by timestamp) and
`last_entry_ending_by` (by byte budget) are binary searches in one segment's entries;
`valid_entries` is the entry check of recovery (iggy.storage.log_recovery).
"""
from libc.errno cimport ENOMEM
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, realloc
from posix.mman cimport munmap

from iggy._core.includes.le cimport put_u64
from iggy.storage.log_files cimport h_free


cdef void put_entry(unsigned char *e, uint64_t offset, uint64_t ts, uint64_t pos) noexcept nogil:
    """Write one 24-byte index entry at e."""
    put_u64(e + IE_OFFSET, offset)
    put_u64(e + IE_TIMESTAMP, ts)
    put_u64(e + IE_POSITION, pos)


cdef int entries_push(unsigned char **p, uint64_t *n, uint64_t *cap, uint64_t offset, uint64_t ts,
                      uint64_t pos) noexcept nogil:
    """Append an entry to a malloc'd entry array. 0 or -ENOMEM."""
    cdef unsigned char *grown
    cdef uint64_t new_cap
    if n[0] == cap[0]:
        new_cap = cap[0] * 2 if cap[0] else 256
        grown = <unsigned char *>realloc(p[0], new_cap * INDEX_ENTRY_LEN)
        if grown == NULL:
            return -ENOMEM
        p[0] = grown
        cap[0] = new_cap
    put_entry(p[0] + n[0] * INDEX_ENTRY_LEN, offset, ts, pos)
    n[0] += 1
    return 0


cdef uint64_t entry_at_or_before(const Segment *s, uint64_t offset) noexcept nogil:
    """Index of the last entry whose offset <= offset (0 when none; s.n_entries > 0)."""
    cdef uint64_t lo = 0, hi = s.n_entries, mid
    while hi - lo > 1:       # the answer is in [lo, hi)
        mid = lo + (hi - lo) // 2
        if e_off(s, mid) <= offset:
            lo = mid
        else:
            hi = mid
    return lo


cdef uint64_t first_entry_at_or_after_ts(const Segment *s, uint64_t ts) noexcept nogil:
    """Index of the first entry whose timestamp >= ts (s.n_entries when none)."""
    cdef uint64_t lo = 0, hi = s.n_entries, mid
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if e_ts(s, mid) >= ts:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef uint64_t last_entry_ending_by(const Segment *s, uint64_t i0, uint64_t i1, uint64_t limit) noexcept nogil:
    """The largest i in [i0, i1] whose batch ends at or before byte `limit` (i0 when none)."""
    cdef uint64_t lo = i0, hi = i1, mid
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        if e_end(s, mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


cdef uint64_t valid_entries(const Segment *s, uint64_t file_end, bint full) noexcept nogil:
    """How many leading index entries look right for a log of file_end bytes.

    full: every entry (offsets and positions strictly increasing, timestamps not decreasing,
    positions inside the file); else only the first entry and the trailing ones (sealed
    segments: the walk re-reads the last trusted batch and a read checks each batch it
    serves against its entry, so a bad middle entry can never serve wrong data).
    """
    cdef uint64_t n = s.n_entries, i
    if n == 0 or file_end == 0 or e_off(s, 0) != s.base or e_pos(s, 0) != 0:
        return 0
    if full:
        for i in range(1, n):
            if (e_off(s, i) <= e_off(s, i - 1) or e_pos(s, i) <= e_pos(s, i - 1)
                    or e_ts(s, i) < e_ts(s, i - 1) or e_pos(s, i) >= file_end):
                return i
        return n
    while n > 1 and (e_pos(s, n - 1) >= file_end or e_pos(s, n - 1) <= e_pos(s, n - 2)
                     or e_off(s, n - 1) <= e_off(s, n - 2)):
        n -= 1
    return n


cdef void close_segment(Segment *s) noexcept nogil:
    """Close a segment's files and free or unmap its index entries."""
    h_free(s.h)
    s.h = NULL
    if s.map_len:
        munmap(s.idx, s.map_len)
    else:
        free(s.idx)
