# cython: language_level=3
# The partition log (layout and invariants in the docstring of log.pyx). Declared here so
# another extension (the io_uring shard) can cimport PartitionLog and reach its state.
cimport cython
from libc.stdint cimport uint32_t, uint64_t

cdef enum:
    INDEX_ENTRY_LEN = 24        # u64 offset, u64 timestamp, u64 position
    # ReadResult.status
    READ_OK = 0
    READ_CORRUPT = 1            # a batch or message failed its checks: the result ends before it
    READ_SHORT = 2              # the segment file is shorter than its index says
    READ_IO_ERROR = 3
    READ_MISSING = 4            # the read starts at offsets no segment holds (a gap left by damage)


# where c_read puts its result: memory for n bytes, or NULL (out of memory)
ctypedef unsigned char *(*reserve_fn)(void *ctx, uint64_t n) noexcept nogil


cdef struct ReadResult:
    uint64_t start              # the first offset read (the request clamped to the oldest retained)
    uint64_t written            # bytes of batches at the reserved memory
    uint64_t served             # messages in them
    uint64_t bad                # status != READ_OK: the first offset that could not be served
    int status
    int io_err                  # errno when READ_IO_ERROR


# One segment's open files, in the process-wide LRU of open segment files (log.pyx docstring,
# "open files"). Stable memory (a Segment in the segs array moves; its Handle does not).
cdef struct Handle:
    Handle *prev                # LRU links (newest at the front); linked while it holds an fd
    Handle *next
    char *path                  # "<directory>/<20-digit base>." (the extension is added at open)
    int log_fd                  # -1 while not open
    int idx_fd                  # -1 while not open or not wanted
    int pins                    # users right now (the owner, under the partition lock)
    int want_idx                # open the .index too (the active segment, and during recovery)
    int linked


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


@cython.final
cdef class PartitionLog:
    cdef Segment *segs          # oldest first; segs[n_segs - 1] is the active segment
    cdef Py_ssize_t n_segs
    cdef Py_ssize_t cap_segs
    cdef readonly str directory
    cdef readonly uint32_t partition_id
    cdef readonly uint64_t segment_size
    cdef readonly bint preallocate
    cdef readonly bint validate_checksum
    cdef readonly uint64_t recovered_truncated_bytes
    cdef uint64_t last_ts       # newest base_timestamp handed out (timestamps strictly increase)
    cdef bint _closed
    cdef bint _dirty            # appended to since the last fsync (shutdown syncs only these)
    cdef readonly uint64_t uid  # unique in the process: tells logs apart after one is freed
    cdef readonly str label     # "stream/topic/partition" ids for log lines (the directory otherwise)
    cdef object _reported       # {(read status, offset)} already logged: each damaged place once

    cdef Segment *_active(self) except NULL
    cdef Py_ssize_t _open_segment(self, uint64_t base, bint create) except -1
    cdef int _recover(self, Py_ssize_t k) except -1
    cdef int _check_segments(self) except -1
    cdef int _recover_pinned(self, Py_ssize_t k, int log_fd, int idx_fd) except -1
    cdef int _roll(self) except -1
    cdef int _drop_segment(self, Py_ssize_t k, bint unlink) except -1
    cdef void _release(self) noexcept
    cdef uint64_t _first_offset(self) noexcept nogil
    cdef int _roll_or_log(self) except -1

    # for the shard, without the GIL; the caller holds the partition lock
    cdef int c_state(self, uint64_t *first, uint64_t *next_offset) noexcept nogil
    cdef int c_append(self, const unsigned char *p, uint64_t n, uint64_t now_us, uint64_t *base_offset,
                      uint32_t *count) noexcept nogil
    cdef int c_read(self, uint64_t start_offset, uint32_t count, uint64_t max_bytes, reserve_fn reserve,
                    void *ctx, ReadResult *res) noexcept nogil
    cdef int c_offset_for_timestamp(self, uint64_t ts, uint64_t *out) noexcept nogil
    cdef int c_sync_dup(self) noexcept nogil
    cdef uint64_t c_active_base(self) noexcept nogil
    cdef int report_read_failure(self, const ReadResult *res) except -1
