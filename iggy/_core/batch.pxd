from libc.stdint cimport uint32_t, uint64_t

cdef uint64_t batch_checksum(const unsigned char *p) noexcept nogil
cdef int check_batch(const unsigned char *p, uint64_t n, uint32_t expected, bint verify_batch_checksum,
                     uint64_t *payload_bytes) noexcept nogil
cdef void stamp_header(unsigned char *p, uint64_t partition_id, uint64_t base_offset,
                       uint64_t base_timestamp) noexcept nogil
