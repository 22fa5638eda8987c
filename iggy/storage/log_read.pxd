# cython: language_level=3
# The read path of the partition log (contract in the docstring of log_read.pyx).
from libc.stdint cimport uint32_t, uint64_t

from iggy.storage.log_index cimport Segment

cdef enum:
    # ReadResult.status
    READ_OK = 0
    READ_CORRUPT = 1            # a batch or message failed its checks: the result ends before it
    READ_SHORT = 2              # the segment file is shorter than its index says
    READ_IO_ERROR = 3
    READ_MISSING = 4            # the read starts at offsets no segment holds (a gap left by damage)
    READ_BUFFER_KEEP = 4 << 20  # a thread's read buffer is freed after a read bigger than this


# where a read puts its result: memory for n bytes, or NULL (out of memory)
ctypedef unsigned char *(*reserve_fn)(void *ctx, uint64_t n) noexcept nogil


cdef struct ReadResult:
    uint64_t start              # the first offset read (the request clamped to the oldest retained)
    uint64_t written            # bytes of batches at the reserved memory
    uint64_t served             # messages in them
    uint64_t bad                # status != READ_OK: the first offset that could not be served
    int status
    int io_err                  # errno when READ_IO_ERROR


cdef int read_segments(const Segment *segs, Py_ssize_t n_segs, uint64_t start_offset, uint32_t count,
                       uint64_t max_bytes, bint validate, reserve_fn reserve, void *ctx,
                       ReadResult *res) noexcept nogil

# the calling thread's reused read buffer: a reserve_fn, and the buffer itself after a read
cdef unsigned char *thread_buffer(void *ctx, uint64_t n) noexcept nogil
cdef unsigned char *read_buffer() noexcept nogil
cdef void read_buffer_trim(size_t keep) noexcept nogil
