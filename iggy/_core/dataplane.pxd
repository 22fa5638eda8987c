# cython: language_level=3
# The data-plane commands served by the shards without the GIL (see dataplane.pyx).
from libc.stdint cimport int64_t, uint32_t, uint64_t


# where replies go: room for n bytes at the end of the connection's output (NULL: no memory),
# then commit(n) makes the n bytes written there part of the output
ctypedef unsigned char *(*sink_reserve)(void *ctx, uint64_t n) noexcept nogil
ctypedef void (*sink_commit)(void *ctx, uint64_t n) noexcept nogil


cdef struct Sink:
    void *ctx
    sink_reserve reserve
    sink_commit commit


cdef enum:
    DP_FALLBACK = 0             # not served here, nothing written: hand the frame to Python
    DP_DONE = 1                 # the whole reply was committed to the sink


cdef int dp_serve(void *router, int64_t user_id, const unsigned char *frame, uint32_t size,
                  uint64_t max_poll_bytes, Sink *out) noexcept nogil
