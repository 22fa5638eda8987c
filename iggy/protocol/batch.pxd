# cython: language_level=3
# Batch layout constants and the nogil batch checks shared by `batch.pyx` and `log.pyx`.
# The byte layout is written out in the docstring of `batch.pyx` (TCP.md 8.2-8.4). The checks
# return 0 or an Iggy error code (the E_* of iggy.protocol.ccodes).
from libc.stdint cimport uint32_t, uint64_t

cdef enum:
    # sizes and limits (TCP.md 8.2, 8.3; SEMANTICS 4.2)
    BATCH_HEADER_LEN = 256
    FRAME_HEADER_LEN = 48
    MAX_PAYLOAD_LEN = 64000000
    MAX_USER_HEADERS_LEN = 100000

    # batch header fields
    B_PARTITION_ID = 0
    B_BASE_OFFSET = 8
    B_BASE_TIMESTAMP = 16
    B_ORIGIN_TIMESTAMP = 24
    B_LENGTH = 32
    B_CHECKSUM = 40
    B_COUNT = 48
    B_RESERVED = 52

    # message frame fields
    F_CHECKSUM = 0
    F_ID = 8
    F_OFFSET_DELTA = 24
    F_TIMESTAMP_DELTA = 28
    F_HEADERS_LEN = 32
    F_PAYLOAD_LEN = 36
    F_RESERVED = 40

    # check_batch flags
    CHECK_MESSAGE_CHECKSUMS = 1
    CHECK_BATCH_CHECKSUM = 2
    CHECK_ALL = 3


cdef int batch_checksum(const unsigned char *head, const unsigned char *frames, uint64_t frames_len,
                        uint64_t *out) noexcept nogil
cdef int check_batch(const unsigned char *p, uint64_t n, uint32_t expected_count, int flags,
                     uint64_t *payload_bytes) noexcept nogil
cdef int stamp_header(unsigned char *head, const unsigned char *frames, uint64_t frames_len,
                      uint64_t partition_id, uint64_t base_offset, uint64_t base_timestamp) noexcept nogil
