# cython: language_level=3
# The data-plane commands served by the shards without the GIL (see dataplane.pyx).
from libc.stdint cimport int64_t, uint32_t, uint64_t

from iggy.protocol.header cimport HEADER_SIZE


# where replies go: room for n bytes at the end of the connection's output (NULL: no memory),
# then commit(n) makes the n bytes written there part of the output
ctypedef unsigned char *(*sink_reserve)(void *ctx, uint64_t n) noexcept nogil
ctypedef void (*sink_commit)(void *ctx, uint64_t n) noexcept nogil


cdef enum:
    HELD_MAX = HEADER_SIZE + 24     # the reply a DP_SYNC holds: header + send reply body


cdef struct Sink:
    void *ctx
    sink_reserve reserve
    sink_commit commit
    # DP_SYNC: the reply is held here, not committed, until fdatasync(sync_fd) completes
    unsigned char held[HELD_MAX]
    uint32_t held_len
    int sync_fd                 # a dup of the segment's descriptor: the caller closes it
    uint64_t sync_log           # (sync_log, sync_segment) name the file: one fsync serves
    uint64_t sync_segment       # every batch appended to it before the fsync was submitted


cdef enum:
    DP_FALLBACK = 0             # not served here, nothing written: hand the frame to Python
    DP_DONE = 1                 # the whole reply was committed to the sink
    # DP_SYNC: appended to a persisted topic, the reply waits in Sink.held for the caller's
    # fdatasync of Sink.sync_fd
    DP_SYNC = 2


cdef int dp_serve(void *router, int64_t user_id, uint64_t client_id, const unsigned char *frame, uint32_t size,
                  uint64_t max_poll_bytes, Sink *out) noexcept nogil
