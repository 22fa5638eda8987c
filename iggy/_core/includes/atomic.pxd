# GCC's __atomic builtins for the values more than one thread touches (the shards' counters and
# reply budget, the router's round-robin counters, Table.poll_until, PartitionLog.visible_end).
# The builtins are generic; Cython needs one declaration per type, so each gets its own name
# here, and every one of them compiles to the builtin itself.
from libc.stdint cimport uint32_t, uint64_t

cdef extern from * nogil:
    int ATOMIC_RELAXED "__ATOMIC_RELAXED"
    int ATOMIC_ACQUIRE "__ATOMIC_ACQUIRE"
    int ATOMIC_RELEASE "__ATOMIC_RELEASE"
    int ATOMIC_SEQ_CST "__ATOMIC_SEQ_CST"

    uint32_t atomic_fetch_add_u32 "__atomic_fetch_add"(uint32_t *p, uint32_t v, int order)
    uint32_t atomic_fetch_sub_u32 "__atomic_fetch_sub"(uint32_t *p, uint32_t v, int order)

    uint64_t atomic_fetch_add_u64 "__atomic_fetch_add"(uint64_t *p, uint64_t v, int order)
    void atomic_store_u64 "__atomic_store_n"(uint64_t *p, uint64_t v, int order)
    uint64_t atomic_load_u64 "__atomic_load_n"(const uint64_t *p, int order)

    size_t atomic_add_fetch_size "__atomic_add_fetch"(size_t *p, size_t v, int order)
    size_t atomic_sub_fetch_size "__atomic_sub_fetch"(size_t *p, size_t v, int order)
    size_t atomic_load_size "__atomic_load_n"(size_t *p, int order)
    bint atomic_cas_size "__atomic_compare_exchange_n"(size_t *p, size_t *expected, size_t desired, bint weak,
                                                       int success, int failure)
