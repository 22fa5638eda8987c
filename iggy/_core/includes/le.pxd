from libc.stdint cimport uint16_t, uint32_t, uint64_t

cdef extern from "iggy_le.h" nogil:
    uint16_t le_u16(const unsigned char *p)
    uint32_t le_u32(const unsigned char *p)
    uint64_t le_u64(const unsigned char *p)
    void put_u16(unsigned char *p, uint16_t v)
    void put_u32(unsigned char *p, uint32_t v)
    void put_u64(unsigned char *p, uint64_t v)
