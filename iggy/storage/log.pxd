# cython: language_level=3
# The partition log (layout and invariants in the docstring of log.pyx). Declared here so
# another extension (the io_uring shard) can cimport PartitionLog and reach its state.
cimport cython
from libc.stdint cimport uint32_t, uint64_t

# The parts (each module's docstring holds its layouts): the segment files and their LRU
# (log_files), the batch index and the Segment in memory (log_index), the read path
# (log_read), startup recovery (log_recovery). Cimported here, so `from iggy.storage.log
# cimport ...` keeps reaching what the shard uses (ReadResult, READ_*, reserve_fn).
from iggy.storage.log_files cimport Handle
from iggy.storage.log_index cimport INDEX_ENTRY_LEN, Segment
from iggy.storage.log_read cimport (READ_CORRUPT, READ_IO_ERROR, READ_MISSING, READ_OK, READ_SHORT, ReadResult,
                                    reserve_fn)


@cython.final
cdef class PartitionLog:
    cdef Segment *segs          # oldest first; segs[n_segs - 1] is the active segment
    cdef Py_ssize_t n_segs
    cdef Py_ssize_t cap_segs
    cdef readonly str directory
    cdef readonly uint32_t partition_id
    cdef readonly uint64_t segment_size
    cdef readonly bint preallocate
    cdef readonly bint validate_checksum
    cdef readonly uint64_t recovered_truncated_bytes
    cdef uint64_t last_ts       # newest base_timestamp handed out (timestamps strictly increase)
    cdef bint _closed
    cdef bint _dirty            # appended to since the last fsync (shutdown syncs only these)
    cdef readonly uint64_t uid  # unique in the process: tells logs apart after one is freed
    cdef readonly str label     # "stream/topic/partition" ids for log lines (the directory otherwise)
    cdef object _reported       # {(read status, offset)} already logged: each damaged place once
    # cluster mode: offsets at or above this are not served by the shards (the leader's
    # high-watermark); UINT64_MAX (the default, not published) = the shards hand the poll to Python.
    # Written by the main loop, read by the shards under the partition lock: atomic both ways
    cdef uint64_t visible_end

    cdef Segment *_active(self) except NULL
    cdef Py_ssize_t _open_segment(self, uint64_t base, bint create) except -1
    cdef int _recover(self, Py_ssize_t k) except -1
    cdef int _roll(self) except -1
    cdef int _drop_segment(self, Py_ssize_t k, bint unlink) except -1
    cdef void _release(self) noexcept
    cdef uint64_t _first_offset(self) noexcept nogil
    cdef uint64_t _total(self, bint size) noexcept
    cdef int _roll_or_log(self) except -1
    cdef int _appended(self, Segment *s, int rc, uint64_t ts) except -1

    # for the shard, without the GIL; the caller holds the partition lock
    cdef uint64_t c_visible_end(self) noexcept nogil
    cdef int c_state(self, uint64_t *first, uint64_t *next_offset) noexcept nogil
    cdef int c_append(self, const unsigned char *p, uint64_t n, uint64_t now_us, uint64_t *base_offset,
                      uint32_t *count) noexcept nogil
    cdef int c_read(self, uint64_t start_offset, uint32_t count, uint64_t max_bytes, reserve_fn reserve,
                    void *ctx, ReadResult *res) noexcept nogil
    cdef int c_offset_for_timestamp(self, uint64_t ts, uint64_t *out) noexcept nogil
    cdef int c_sync_dup(self) noexcept nogil
    cdef uint64_t c_active_base(self) noexcept nogil
    cdef int report_read_failure(self, const ReadResult *res) except -1
