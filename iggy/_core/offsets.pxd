# cython: language_level=3
# Stored consumer and consumer-group offsets of one partition (layout and contract in the
# docstring of offsets.pyx). Declared here so another extension (the io_uring shard) can
# cimport OffsetStore and read and store offsets without the GIL.
cimport cython
from libc.stdint cimport uint64_t

cdef enum:
    OFFSET_CONSUMER = 1         # offsets/consumers/<key>
    OFFSET_GROUP = 2            # offsets/groups/<key>


cdef struct OffsetEntry:
    uint64_t key
    uint64_t offset
    int kind                    # OFFSET_CONSUMER or OFFSET_GROUP; 0 = free slot
    int fd                      # the file, open for writing after the first store; else -1


@cython.final
cdef class OffsetStore:
    cdef OffsetEntry *table     # open addressing, linear probing; cap a power of two, half full at most
    cdef size_t cap
    cdef size_t count
    cdef char *path             # "<root>" then room for "/consumers/<20 digits>\0"
    cdef size_t root_len
    cdef readonly str root      # <partition dir>/offsets
    cdef readonly bint fsync    # fdatasync every store

    # 1 found (*out set), 0 none
    cdef int c_get(self, int kind, uint64_t key, uint64_t *out) noexcept nogil
    # 0 ok, else -errno (nothing changed in memory on failure)
    cdef int c_store(self, int kind, uint64_t key, uint64_t offset) noexcept nogil

    cdef size_t _slot(self, int kind, uint64_t key) noexcept nogil
    cdef int _grow(self) noexcept nogil
    cdef int _put(self, int kind, uint64_t key, uint64_t offset) noexcept nogil
    cdef void _remove_at(self, size_t i) noexcept nogil
    cdef void _close_fds(self) noexcept nogil
