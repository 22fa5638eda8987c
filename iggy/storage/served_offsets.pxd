# cython: language_level=3
# What each consumer group was last served from one partition (layout and contract in the
# docstring of served_offsets.pyx). Declared here so the io_uring data plane can record a
# group poll without the GIL.
cimport cython
from libc.stdint cimport uint64_t


cdef struct ServedEntry:
    uint64_t group              # the group's id
    uint64_t last               # offset of the last message served to it
    uint64_t client             # client id of the session that polled it


@cython.final
cdef class ServedOffsets:
    cdef ServedEntry *entries   # n of them, unordered, cap allocated
    cdef size_t n
    cdef size_t cap

    # 0 ok, -1 out of memory (nothing recorded)
    cdef int c_mark(self, uint64_t group, uint64_t last, uint64_t client) noexcept nogil
    # 1 found (*last and *client set), 0 none
    cdef int c_get(self, uint64_t group, uint64_t *last, uint64_t *client) noexcept nogil
