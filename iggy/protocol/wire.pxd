from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from iggy.protocol.cursor cimport Cursor


cdef class RequestHeader:
    cdef readonly bytes raw
    cdef readonly uint32_t size
    cdef readonly uint8_t command
    cdef readonly uint64_t request
    cdef readonly uint8_t operation
    cdef readonly uint64_t session
    cdef readonly uint32_t code


cdef class Reader:
    cdef bytes _data
    cdef Cursor _c              # over _data
    cdef const unsigned char *_need(self, Py_ssize_t n) except NULL
    cpdef Py_ssize_t remaining(self)
    cpdef uint8_t u8(self) except? 255
    cpdef bint bool(self) except -1
    cpdef uint16_t u16(self) except? 65535
    cpdef uint32_t u32(self) except? 0xFFFFFFFF
    cpdef uint64_t u64(self) except? 0xFFFFFFFFFFFFFFFF
