# cython: language_level=3
# Batch layout constants and the nogil batch checks shared by `batch.pyx` and `log.pyx`.
# The byte layout is written out in the docstring of `batch.pyx` (TCP.md 8.2-8.4).
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

    # status codes returned by the nogil checks: the Iggy error code (iggy.protocol.errors.ErrorCode)
    E_INVALID_FORMAT = 4
    E_INVALID_MESSAGES_COUNT = 4009
    E_TOO_BIG_USER_HEADERS = 4017
    E_INVALID_HEADER_KEY = 4018
    E_INVALID_HEADER_VALUE = 4019
    E_TOO_BIG_MESSAGE_PAYLOAD = 4022
    E_EMPTY_MESSAGE_PAYLOAD = 4024
    E_INVALID_MESSAGE_CHECKSUM = 4027
    E_INVALID_MESSAGES_SIZE = 4036
    E_INVALID_BATCH_CHECKSUM = 4039
    E_INVALID_HEADER_KIND = 4040
    E_INVALID_RESERVED_FIELD = 4101


cdef int batch_checksum(const unsigned char *head, const unsigned char *frames, uint64_t frames_len,
                        uint64_t *out) noexcept nogil
cdef int check_batch(const unsigned char *p, uint64_t n, uint32_t expected_count, int flags,
                     uint64_t *payload_bytes) noexcept nogil
cdef int stamp_header(unsigned char *head, const unsigned char *frames, uint64_t frames_len,
                      uint64_t partition_id, uint64_t base_offset, uint64_t base_timestamp) noexcept nogil
