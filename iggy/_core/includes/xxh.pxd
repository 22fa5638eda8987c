from libc.stdint cimport uint32_t, uint64_t

cdef extern from "iggy_xxhash.h" nogil:
    ctypedef struct XXH3_state_t:
        pass
    uint64_t XXH3_64bits(const void *data, size_t length)
    uint32_t XXH32(const void *data, size_t length, uint32_t seed)
    int XXH3_64bits_reset(XXH3_state_t *state)
    int XXH3_64bits_update(XXH3_state_t *state, const void *data, size_t length)
    uint64_t XXH3_64bits_digest(const XXH3_state_t *state)
