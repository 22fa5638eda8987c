# cython: language_level=3
# The segment files of every partition log: the process-wide LRU of open descriptors and the
# byte-level I/O helpers (layout and contract in the docstring of log_files.pyx).
from libc.stdint cimport uint64_t
from posix.uio cimport iovec

from iggy._core.includes.le cimport le_u64


# One segment's open files, in the process-wide LRU of open segment files (log_files.pyx
# docstring). Stable memory (a Segment in a log's segs array moves; its Handle does not).
cdef struct Handle:
    Handle *prev                # LRU links (newest at the front); linked while it holds an fd
    Handle *next
    char *path                  # "<directory>/<20-digit base>." (the extension is added at open)
    int log_fd                  # -1 while not open
    int idx_fd                  # -1 while not open or not wanted
    int pins                    # users right now (the owner, under the partition lock)
    int want_idx                # open the .index too (the active segment, and during recovery)
    int linked


cdef ssize_t pread_full(int fd, unsigned char *buf, uint64_t n, uint64_t off) noexcept nogil
cdef int pwritev_all(int fd, iovec *iov, int cnt, uint64_t off) noexcept nogil

cdef Handle *h_new(bytes prefix, bint want_idx) except NULL
cdef void h_free(Handle *h) noexcept nogil
cdef int h_pin(Handle *h, int flags) noexcept nogil
cdef void h_unpin(Handle *h) noexcept nogil
cdef void h_seal(Handle *h) noexcept nogil
cdef ssize_t h_pread(Handle *h, unsigned char *buf, uint64_t n, uint64_t off) noexcept nogil

cdef str segment_path(str directory, uint64_t base, str ext)


cdef inline bint all_zero(const unsigned char *p, uint64_t n) noexcept nogil:
    """Whether n bytes are all zero (unwritten or preallocated space reads as zeros)."""
    cdef uint64_t acc = 0, i = 0
    while i + 8 <= n:        # word loads, vectorised by the compiler
        acc |= le_u64(p + i)
        i += 8
    while i < n:
        acc |= p[i]
        i += 1
    return acc == 0
