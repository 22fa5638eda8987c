# cython: language_level=3
"""XXH3-64 and XXH32 for Python callers: the server's one xxHash provider.

Both come from the header-only libxxhash the data path already inlines (iggy_xxhash.h), so the
control plane, the metadata journal and the consumer-offset keys hash with exactly the code
the C data path uses, and the server needs no second xxHash (the PyPI `xxhash` package stays a
test dependency only, as an independent oracle).

    xxh3_64(data)         seed 0: message, batch, request and journal checksums
    xxh32(data, seed=0)   partitioning by message key, named consumer keys
"""
from libc.stdint cimport uint32_t, uint64_t

from iggy._core.includes.xxh cimport XXH3_64bits, XXH32


def xxh3_64(const unsigned char[:] data not None):
    """XXH3-64 with seed 0 of a bytes-like object."""
    cdef Py_ssize_t n = data.shape[0]
    cdef uint64_t h
    if n == 0:
        return XXH3_64bits(NULL, 0)
    with nogil:     # journal snapshots can be megabytes
        h = XXH3_64bits(&data[0], n)
    return h


def xxh32(const unsigned char[:] data not None, uint32_t seed=0):
    """XXH32 of a bytes-like object."""
    cdef Py_ssize_t n = data.shape[0]
    if n == 0:
        return XXH32(NULL, 0, seed)
    return XXH32(&data[0], n, seed)
