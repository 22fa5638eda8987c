# cython: language_level=3
# Stored consumer and consumer-group offsets of one partition (layout and contract in the
# docstring of offsets.pyx). Declared here so another extension (the io_uring shard) can
# cimport OffsetStore and read and store offsets without the GIL.
cimport cython
from libc.stdint cimport uint64_t

cdef enum:
    OFFSET_CONSUMER = 1         # offsets/consumers/<key>
    OFFSET_GROUP = 2            # offsets/groups/<key>

# OffsetStore.failed_at after a failed c_store: the step that failed (the Iggy error code
# the Python store() answers follows from it)
cdef enum:
    STORE_FAILED_OPEN = 1       # the file could not be opened/created
    STORE_FAILED_WRITE = 2      # pwrite of the record
    STORE_FAILED_SYNC = 3       # fdatasync
    STORE_FAILED_LIMIT = 4      # a new key beyond max_offsets of its kind
    STORE_FAILED_MEMORY = 5     # the table could not grow


cdef struct OffsetEntry:
    uint64_t key
    uint64_t offset
    uint64_t fd_gen             # generation of fd_slot when this entry's file was cached there
    int kind                    # OFFSET_CONSUMER or OFFSET_GROUP; 0 = free slot
    int fd_slot                 # slot of the process-wide descriptor cache, -1 none


@cython.final
cdef class OffsetStore:
    cdef OffsetEntry *table     # open addressing, linear probing; cap a power of two, half full at most
    cdef size_t cap
    cdef size_t count
    cdef size_t kind_count[2]   # entries per kind (consumers, groups)
    cdef char *path             # "<root>" then room for "/consumers/<20 digits>\0"
    cdef size_t root_len
    cdef int failed_at          # STORE_FAILED_* of the last failed c_store
    cdef bint limit_warned
    cdef readonly str root      # <partition dir>/offsets
    cdef readonly bint fsync    # fdatasync every store
    cdef public size_t max_offsets   # stored keys per kind; a new key beyond it is refused

    # 1 found (*out set), 0 none
    cdef int c_get(self, int kind, uint64_t key, uint64_t *out) noexcept nogil
    # 0 ok, else -errno (nothing changed in memory on failure; failed_at says which step)
    cdef int c_store(self, int kind, uint64_t key, uint64_t offset) noexcept nogil

    cdef size_t _slot(self, int kind, uint64_t key) noexcept nogil
    cdef int _grow(self) noexcept nogil
    cdef int _put(self, int kind, uint64_t key, uint64_t offset) noexcept nogil
    cdef void _remove_at(self, size_t i) noexcept nogil
    cdef void _close_fds(self) noexcept nogil
